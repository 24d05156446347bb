"""The tenants file: hashed tokens, per-tenant limits over the defaults, clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from imgpipe.common.auth import TokenAuth, principal_of
from imgpipe.common.errors import SettingsError, Unauthenticated
from imgpipe.ingest.tenants import TenantLimits, load_tenants

DEFAULTS = TenantLimits(max_queued=1000)
ALPHA = hashlib.sha256(b"alpha").hexdigest()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return str(path)


def test_tenants_of_the_file_and_of_the_tokens_setting(tmp_path: Path) -> None:
    file = write(tmp_path, f'[tenants.acme]\ntoken_sha256 = ["{ALPHA}"]\nweight = 3\n')
    tenants = load_tenants(["legacy"], file, DEFAULTS)
    assert tenants.limits("acme") == TenantLimits(weight=3, max_queued=1000)
    assert tenants.limits(principal_of("legacy")) == DEFAULTS
    assert tenants.limits("nobody") == DEFAULTS
    auth = TokenAuth(tenants.credentials())
    assert auth.authenticate("Bearer alpha") == "acme"
    assert auth.authenticate("Bearer legacy") == principal_of("legacy")
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {ALPHA}")  # the hash is not a token


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[tenants.acme]\ntoken_sha256 = ['secret-token']\n", "64 lower-case hex"),
        (f"[tenants.acme]\ntoken_sha256 = ['{ALPHA}']\nmax_queued = -1\n", "max_queued"),
        (f"[tenants.acme]\ntoken_sha256 = ['{ALPHA}']\ncolour = 1\n", "unknown key"),
        (f"[tenants.tok_x]\ntoken_sha256 = ['{ALPHA}']\n", "not starting with tok_"),
        (
            f"[tenants.a]\ntoken_sha256 = ['{ALPHA}']\n[tenants.b]\ntoken_sha256 = ['{ALPHA}']\n",
            "two tenants",
        ),
        ("[tenants.acme\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_with_a_clear_error(
    tmp_path: Path, text: str, complaint: str
) -> None:
    with pytest.raises(SettingsError, match=complaint):
        load_tenants([], write(tmp_path, text), DEFAULTS)
