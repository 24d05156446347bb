"""Ingest's settings: refused at start when they cannot work."""

from __future__ import annotations

import pytest

from imgpipe.common.errors import SettingsError
from imgpipe.ingest.settings import Settings

BASE = {"DATABASE_URL": "postgresql://db/imgpipe", "IMGPIPE_STORAGE_URL": "file:///tmp/o"}


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", "whsec_abc"])
def test_a_whsec_secret_without_a_base64_key_is_a_settings_error(secret: str) -> None:
    with pytest.raises(SettingsError, match="IMGPIPE_WEBHOOK_SECRET"):
        Settings.from_env({**BASE, "IMGPIPE_WEBHOOK_SECRET": secret})


@pytest.mark.parametrize("secret", ["whsec_c2VjcmV0LWtleQ==", "plain-secret", ""])
def test_good_webhook_secrets_are_taken(secret: str) -> None:
    assert Settings.from_env({**BASE, "IMGPIPE_WEBHOOK_SECRET": secret}).webhooks.secret == secret


def test_the_image_cap_defaults_to_100000_and_is_a_setting() -> None:
    assert Settings.from_env(BASE).csv_limits.max_images == 100_000
    env = {**BASE, "IMGPIPE_MAX_IMAGES_PER_REQUEST": "10"}
    assert Settings.from_env(env).csv_limits.max_images == 10


def test_the_largest_grpc_message_follows_the_largest_csv() -> None:
    settings = Settings.from_env({**BASE, "IMGPIPE_MAX_CSV_BYTES": "1048576"})
    assert settings.common.grpc.max_message_bytes == 1048576 + 64 * 1024
    assert settings.submit_bytes_in_flight == 4 * settings.common.grpc.max_message_bytes
