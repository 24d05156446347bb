"""What reaches a caller carries no credentials, reprs or internal addresses."""

from __future__ import annotations

import pytest

from imgpipe.common.public_text import public_text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "Cannot connect to host a.test:443 ssl:<ssl.SSLContext object at 0x7f3a2b1c9d40>",
            "Cannot connect to host a.test:443 ssl:<object>",
        ),
        ("handler <function f at 0x7fdeadbeef00> failed", "handler <object> failed"),
        ("id 0x7f3a2b1c9d40 gone", "id 0x… gone"),
        ("https://user:hunter2@cdn.test/a.jpg failed", "https://cdn.test/a.jpg failed"),
        ("http://token@cdn.test/a.jpg", "http://cdn.test/a.jpg"),
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.7:50052: "
            "Connection refused",
            "failed to connect to all addresses; last error: UNKNOWN: (an internal address): "
            "Connection refused",
        ),
        ("ipv6:[fd00::7]:50052 refused", "(an internal address) refused"),
        ("https://cdn.test/a@b.jpg answered 404", "https://cdn.test/a@b.jpg answered 404"),
        ("HTTP 500", "HTTP 500"),
    ],
)
def test_public_text_hides_what_callers_must_not_see(text: str, shown: str) -> None:
    assert public_text(text) == shown
