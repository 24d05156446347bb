"""Tenants: named principals, each with its own tokens, limits and share of the fleet.

Two sources, one result (a principal per token, and the limits of each principal):
- `IMGPIPE_AUTH_TOKENS_FILE`, a TOML file (mounted from a Secret) of tenants, each with the
  SHA-256 of its tokens (never the tokens themselves) and its own settings:

      [tenants.acme]
      token_sha256 = ["<64 hex digits>", "<another, while a token is being rotated>"]
      weight = 2                    # its share of the processors against other tenants
      max_in_flight = 64            # images processing at once
      max_queued = 200000           # images submitted and not finished yet
      submit_rate_per_minute = 120
      submit_burst = 30

- `IMGPIPE_AUTH_TOKENS`, comma-separated tokens: each one a tenant of its own, named
  `tok_` and a hash of the token, with the default limits.
Limits a tenant does not set come from the IMGPIPE_TENANT_* settings.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgpipe.common.auth import principal_of
from imgpipe.common.errors import SettingsError

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TenantLimits:
    weight: int = 1
    # 0: no cap.
    max_in_flight: int = 0
    max_queued: int = 1_000_000
    submit_rate_per_minute: float = 120.0
    submit_burst: int = 30


@dataclass(frozen=True)
class Tenant:
    name: str
    token_sha256: tuple[bytes, ...]
    limits: TenantLimits


@dataclass(frozen=True)
class Shares:
    """What a claim needs to share the fleet: each configured tenant's weight and cap on
    images in flight, those of any other owner, and the cap per source host (0: none)."""

    owners: tuple[str, ...] = ()
    weights: tuple[int, ...] = ()
    caps: tuple[int, ...] = ()
    default_weight: int = 1
    default_cap: int = 0
    host_cap: int = 0

    @property
    def capped(self) -> bool:
        return self.host_cap > 0 or self.default_cap > 0 or any(self.caps)


# Every owner alike, no caps.
EQUAL_SHARES = Shares()


@dataclass(frozen=True)
class Tenants:
    """Every tenant by name, and the limits of callers that are none (tokens off)."""

    by_name: Mapping[str, Tenant] = field(default_factory=dict)
    defaults: TenantLimits = TenantLimits()

    def limits(self, principal: str) -> TenantLimits:
        tenant = self.by_name.get(principal)
        return tenant.limits if tenant else self.defaults

    def credentials(self) -> list[tuple[bytes, str]]:
        """(SHA-256 of a token, its principal) for every token."""
        return [(h, t.name) for t in self.by_name.values() for h in t.token_sha256]

    def shares(self, host_cap: int) -> Shares:
        tenants = list(self.by_name.values())
        return Shares(
            owners=tuple(t.name for t in tenants),
            weights=tuple(t.limits.weight for t in tenants),
            caps=tuple(t.limits.max_in_flight for t in tenants),
            default_weight=self.defaults.weight,
            default_cap=self.defaults.max_in_flight,
            host_cap=host_cap,
        )


def token_sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_LIMIT_TYPES: dict[str, tuple[type[int] | type[float], ...]] = {
    "weight": (int,),
    "max_in_flight": (int,),
    "max_queued": (int,),
    "submit_rate_per_minute": (int, float),
    "submit_burst": (int,),
}


def _limits(name: str, entry: Mapping[str, Any], defaults: TenantLimits) -> TenantLimits:
    values: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "token_sha256":
            continue
        types = _LIMIT_TYPES.get(key)
        if types is None:
            known = ", ".join(["token_sha256", *_LIMIT_TYPES])
            raise SettingsError(f"tenant {name!r}: unknown key {key!r} (known: {known})")
        if isinstance(value, bool) or not isinstance(value, types) or float(value) < 0:
            raise SettingsError(f"tenant {name!r}: {key} must be a number >= 0, not {value!r}")
        values[key] = value
    limits = replace(defaults, **values)
    if limits.weight < 1 or limits.submit_burst < 1:
        raise SettingsError(f"tenant {name!r}: weight and submit_burst must be at least 1")
    return limits


def parse_tenants_file(text: str, defaults: TenantLimits) -> list[Tenant]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"IMGPIPE_AUTH_TOKENS_FILE is not valid TOML: {exc}") from None
    unknown = set(document) - {"tenants"}
    if unknown:
        raise SettingsError(f"IMGPIPE_AUTH_TOKENS_FILE: unknown table {sorted(unknown)[0]!r}")
    tenants = []
    for name, entry in document.get("tenants", {}).items():
        if not NAME.fullmatch(name) or name.startswith("tok_"):
            raise SettingsError(
                f"tenant name {name!r}: lower-case letters, digits, '_' and '-', "
                "at most 63, not starting with tok_"
            )
        if not isinstance(entry, dict):
            raise SettingsError(f"tenant {name!r} must be a table")
        hashes = entry.get("token_sha256", [])
        if isinstance(hashes, str):
            hashes = [hashes]
        if not hashes or not all(isinstance(h, str) and HEX_SHA256.fullmatch(h) for h in hashes):
            raise SettingsError(
                f"tenant {name!r}: token_sha256 must list the SHA-256 of each token "
                "as 64 lower-case hex digits (`printf %s TOKEN | sha256sum`)"
            )
        tenants.append(
            Tenant(name, tuple(bytes.fromhex(h) for h in hashes), _limits(name, entry, defaults))
        )
    return tenants


def load_tenants(tokens: Iterable[str], tokens_file: str | None, defaults: TenantLimits) -> Tenants:
    """The tenants of IMGPIPE_AUTH_TOKENS and IMGPIPE_AUTH_TOKENS_FILE together."""
    tenants = [Tenant(principal_of(t), (token_sha256(t),), defaults) for t in tokens]
    if tokens_file:
        try:
            text = Path(tokens_file).read_text("utf-8")
        except OSError as exc:
            raise SettingsError(f"IMGPIPE_AUTH_TOKENS_FILE: {exc}") from None
        tenants += parse_tenants_file(text, defaults)
    seen: dict[bytes, str] = {}
    for tenant in tenants:
        for digest in tenant.token_sha256:
            if digest in seen and seen[digest] != tenant.name:
                raise SettingsError(
                    f"one token belongs to two tenants: {seen[digest]!r} and {tenant.name!r}"
                )
            seen[digest] = tenant.name
    return Tenants({t.name: t for t in tenants}, defaults)
