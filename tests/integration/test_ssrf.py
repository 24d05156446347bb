"""The SSRF matrix: the real Fetcher, private networks not allowed, against hostile URLs.

It runs in a network namespace the test makes (tests/support/netns_probe.py, under
`unshare --net --mount`) whose only interface is `lo`, carrying the private, metadata and
embedded-IPv4 addresses under attack. A broken guard reaches a loopback canary that
records the connection, never the network. Where no namespace can be made, the matrix is
skipped rather than run against real addresses.

The allowed origin the redirects start from is ORIGIN, a globally routable address (so
the production policy accepts it with no test-only switch), on `lo` inside the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from support import netns_probe

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = f"http://{netns_probe.ORIGIN}"
BLOCKED = "BlockedAddress"
UNSUPPORTED = "UnsupportedUrl"
CODES = {BLOCKED: "FAILED_PRECONDITION", UNSUPPORTED: "INVALID_ARGUMENT"}
# The matrix's tests share one probe run (the module fixture `report`): under pytest-xdist
# they stay on one worker, so that it runs once.
pytestmark = pytest.mark.xdist_group("ssrf")


def via(target: str) -> str:
    """A URL of the allowed origin that redirects to target."""
    return f"{ORIGIN}/redirect?to={quote(target, safe='')}"


# (id, URL, the processor error, a piece of its message)
MATRIX = [
    # IPv4 literals
    ("loopback", "http://127.0.0.1/", BLOCKED, "non-public address 127.0.0.1"),
    ("rfc1918-10", "http://10.0.0.1/", BLOCKED, "non-public address 10.0.0.1"),
    ("rfc1918-172", "http://172.16.0.1/", BLOCKED, "non-public address 172.16.0.1"),
    ("rfc1918-192", "http://192.168.1.1/", BLOCKED, "non-public address 192.168.1.1"),
    ("cgnat", "http://100.64.0.1/", BLOCKED, "non-public address 100.64.0.1"),
    ("metadata-ip", "http://169.254.169.254/latest/meta-data/", BLOCKED, "169.254.169.254"),
    ("unspecified", "http://0.0.0.0/", BLOCKED, "non-public address 0.0.0.0"),
    ("benchmark", "http://198.18.0.1/", BLOCKED, "non-public address 198.18.0.1"),
    ("test-net", "http://192.0.2.1/", BLOCKED, "non-public address 192.0.2.1"),
    ("reserved", "http://240.0.0.1/", BLOCKED, "non-public address 240.0.0.1"),
    ("multicast", "http://224.0.0.1/", BLOCKED, "non-public address 224.0.0.1"),
    ("https-private", "https://10.0.0.1/", BLOCKED, "non-public address 10.0.0.1"),
    # other spellings of IPv4, judged as the address they mean
    ("decimal", "http://2130706433/", BLOCKED, "non-public address 127.0.0.1"),
    ("hex", "http://0x7f.1/", BLOCKED, "non-public address 127.0.0.1"),
    ("octal", "http://017700000001/", BLOCKED, "non-public address 127.0.0.1"),
    ("short", "http://127.1/", BLOCKED, "non-public address 127.0.0.1"),
    ("octal-dotted", "http://0177.0.0.1/", BLOCKED, "non-public address 127.0.0.1"),
    ("hex-metadata", "http://0xa9fea9fe/", BLOCKED, "non-public address 169.254.169.254"),
    ("trailing-dot", "http://127.0.0.1./", BLOCKED, "non-public address 127.0.0.1"),
    # IPv6, and the IPv6 forms that carry an IPv4 address
    ("ipv6-loopback", "http://[::1]/", BLOCKED, "non-public address ::1"),
    ("ipv6-unspecified", "http://[::]/", BLOCKED, "non-public address ::"),
    ("mapped", "http://[::ffff:127.0.0.1]/", BLOCKED, "non-public address ::ffff:7f00:1"),
    ("mapped-metadata", "http://[::ffff:a9fe:a9fe]/", BLOCKED, "non-public"),
    ("compatible", "http://[::10.0.0.1]/", BLOCKED, "non-public address ::a00:1"),
    ("nat64", "http://[64:ff9b::a00:1]/", BLOCKED, "non-public address 64:ff9b::a00:1"),
    ("nat64-metadata", "http://[64:ff9b::a9fe:a9fe]/", BLOCKED, "non-public"),
    ("nat64-local-use", "http://[64:ff9b:1::a00:1]/", BLOCKED, "non-public"),
    ("6to4", "http://[2002:a00:1::1]/", BLOCKED, "non-public address 2002:a00:1::1"),
    ("teredo", "http://[2001:0:a00:1::1]/", BLOCKED, "non-public address 2001:0:a00:1::1"),
    ("unique-local", "http://[fd00::1]/", BLOCKED, "non-public address fd00::1"),
    ("link-local-v6", "http://[fe80::1]/", BLOCKED, "non-public address fe80::1"),
    ("site-local", "http://[fec0::1]/", BLOCKED, "non-public address fec0::1"),
    ("zone-id", "http://[fe80::1%25lo]/", UNSUPPORTED, "malformed host"),
    # names refused before any lookup
    ("localhost", "http://localhost/", BLOCKED, "non-public host (localhost)"),
    ("dot-localhost", "http://api.localhost/", BLOCKED, "non-public host (api.localhost)"),
    ("localhost-spelled", "http://LOCALHOST./", BLOCKED, "non-public host (localhost)"),
    ("gce-metadata", "http://metadata.google.internal/computeMetadata/v1/", BLOCKED, "host"),
    ("metadata", "http://metadata/", BLOCKED, "non-public host (metadata)"),
    # names that resolve to non-public addresses (the namespace's /etc/hosts)
    ("name-to-loopback", "http://loopback.test/", BLOCKED, "resolves to non-public"),
    ("name-to-private", "http://internal.test/", BLOCKED, "resolves to non-public"),
    ("name-to-metadata", "http://instance-data.test/", BLOCKED, "resolves to non-public"),
    ("name-to-mapped", "http://mapped.test/", BLOCKED, "resolves to non-public"),
    # the URL itself
    ("port", f"{ORIGIN}:8080/image", UNSUPPORTED, "port 8080"),
    ("userinfo", f"http://user:secret@{netns_probe.ORIGIN}/image", UNSUPPORTED, "user info"),
    ("scheme", f"ftp://{netns_probe.ORIGIN}/image", UNSUPPORTED, "not an absolute http(s)"),
    ("file", "file:///etc/passwd", UNSUPPORTED, "not an absolute http(s)"),
    # redirects from the allowed origin, each hop checked again
    ("redirect-loopback", via("http://127.0.0.1/"), BLOCKED, "non-public address 127.0.0.1"),
    ("redirect-metadata", via("http://169.254.169.254/"), BLOCKED, "169.254.169.254"),
    ("redirect-mapped", via("http://[::ffff:10.0.0.1]/"), BLOCKED, "non-public"),
    ("redirect-decimal", via("http://2130706433/"), BLOCKED, "non-public address 127.0.0.1"),
    ("redirect-nat64", via("http://[64:ff9b::a9fe:a9fe]/"), BLOCKED, "non-public"),
    ("redirect-localhost", via("http://localhost/"), BLOCKED, "non-public host"),
    ("redirect-gce", via("http://metadata.google.internal/"), BLOCKED, "non-public host"),
    ("redirect-name", via("http://loopback.test/"), BLOCKED, "resolves to non-public"),
    ("redirect-scheme-relative", via("//10.0.0.1/"), BLOCKED, "non-public address 10.0.0.1"),
    ("redirect-two-hops", via(via("http://10.0.0.1/")), BLOCKED, "non-public address 10.0.0.1"),
    ("redirect-port", via(f"{ORIGIN}:8080/image"), UNSUPPORTED, "port 8080"),
    ("redirect-file", via("file:///etc/passwd"), UNSUPPORTED, "file:///etc/passwd"),
]

# Allowed: the origin itself, by address, by name, by a name that also resolves to
# private addresses (only the public one is used), and through a redirect.
CONTROLS = [
    f"{ORIGIN}/image",
    "http://public.test/image",
    "http://mixed.test/image",
    via(f"{ORIGIN}/image"),
]


def namespace_command() -> list[str]:
    """The unshare command that makes a network and mount namespace, or a skip."""
    missing = [tool for tool in ("unshare", "ip", "mount") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no network namespace for the SSRF matrix: {', '.join(missing)} missing")
    command = ["unshare", "--net", "--mount"]
    if os.geteuid() != 0:
        command += ["--user", "--map-root-user"]
    trial = subprocess.run([*command, "true"], capture_output=True, text=True, check=False)
    if trial.returncode != 0:
        pytest.skip(f"no network namespace for the SSRF matrix: {trial.stderr.strip()}")
    return command


def run_probe(url_check: bool) -> dict[str, Any]:
    """The probe's report on every URL of the matrix and the controls, fetched at once."""
    request = {
        "parent_netns": os.stat("/proc/self/ns/net").st_ino,
        "urls": [url for _, url, _, _ in MATRIX] + CONTROLS,
        "url_check": url_check,
    }
    probe = subprocess.run(
        [*namespace_command(), sys.executable, "-m", "support.netns_probe"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT / "tests",
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    result: dict[str, Any] = json.loads(probe.stdout)
    return result


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run_probe(url_check=True)


def test_the_matrix_is_large_enough() -> None:
    assert len(MATRIX) >= 25
    assert len({url for _, url, _, _ in MATRIX}) == len(MATRIX)


@pytest.mark.parametrize(
    ("url", "error", "says"),
    [pytest.param(url, error, says, id=name) for name, url, error, says in MATRIX],
)
def test_hostile_url_fails_with_a_clear_permanent_error(
    report: dict[str, Any], url: str, error: str, says: str
) -> None:
    result = report["results"][url]
    assert result.get("error") == error, result
    assert result["code"] == CODES[error]
    assert says in result["message"]
    assert "secret" not in result["message"]


def test_allowed_sources_reach_the_origin(report: dict[str, Any]) -> None:
    for url in CONTROLS:
        assert report["results"][url] == {"body": netns_probe.ORIGIN_IMAGE.decode()}, url


def test_the_canary_saw_no_connection(report: dict[str, Any]) -> None:
    assert report["canary"] == []
    # The origin saw one request per control and per redirect case, plus the second hop of
    # the two that redirect to the origin itself (redirect-two-hops and a control).
    redirects = sum(url.startswith(f"{ORIGIN}/redirect") for _, url, _, _ in MATRIX)
    assert len(report["origin"]) == redirects + len(CONTROLS) + 2


def test_the_connector_alone_refuses_every_non_public_address() -> None:
    """With the URL check switched off, what is left (the filtering resolver for names, the
    socket factory for the address each socket connects to) still keeps every connection
    off non-public addresses: the canary sees only the public origin on a port that only
    the URL check refuses."""
    report = run_probe(url_check=False)
    assert set(report["canary"]) <= {f"{netns_probe.ORIGIN}:8080"}
    for name, url, error, _ in MATRIX:
        if error == BLOCKED:
            assert "body" not in report["results"][url], name
