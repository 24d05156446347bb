"""How ingest dials the processors: plaintext, TLS (IMGPIPE_PROCESSOR_TLS_CA), or mutual
TLS (IMGPIPE_PROCESSOR_TLS_CERT and _KEY as well), as the processors serve it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from imgpipe.common.errors import SettingsError


@dataclass(frozen=True)
class ProcessorTls:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    # The name verified in processors' certificates instead of the target's host.
    server_name: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProcessorTls:
        tls = cls(
            ca=env.get("IMGPIPE_PROCESSOR_TLS_CA") or None,
            cert=env.get("IMGPIPE_PROCESSOR_TLS_CERT") or None,
            key=env.get("IMGPIPE_PROCESSOR_TLS_KEY") or None,
            server_name=env.get("IMGPIPE_PROCESSOR_TLS_SERVER_NAME") or None,
        )
        if bool(tls.cert) != bool(tls.key):
            raise SettingsError(
                "IMGPIPE_PROCESSOR_TLS_CERT and IMGPIPE_PROCESSOR_TLS_KEY go together"
            )
        if (tls.cert or tls.server_name) and not tls.ca:
            raise SettingsError(
                "IMGPIPE_PROCESSOR_TLS_CERT, _KEY and _SERVER_NAME need IMGPIPE_PROCESSOR_TLS_CA"
                " (the CA the processors' certificates chain to), which turns TLS on"
            )
        return tls

    def credentials(self) -> grpc.ChannelCredentials | None:
        """None for plaintext. The files are read once, here (at start): a renewed
        certificate takes a restart (docs/deploy.md)."""
        if not self.ca:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read("CA", self.ca),
            private_key=_read("KEY", self.key) if self.key else None,
            certificate_chain=_read("CERT", self.cert) if self.cert else None,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if self.ca and self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        message = f"IMGPIPE_PROCESSOR_TLS_{name}: cannot read {path}: {exc.strerror}"
        raise SettingsError(message) from None
