"""imgpipe.common.address_policy, without the network: which addresses are public, how IP literals
are read, what check_url refuses, and the resolver's and socket factory's judgements.
(tests/integration/test_ssrf.py runs the whole guard against live sockets.)"""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from imgpipe.common.address_policy import (
    AddressPolicy,
    PublicAddressResolver,
    is_blocked_name,
    is_public,
    parse_ip,
    public_socket,
)
from imgpipe.common.errors import AddressNotAllowed, UrlNotAllowed

PUBLIC = [
    "1.2.3.4",
    "8.8.8.8",
    "93.184.215.14",
    "2606:4700::1111",
    "2a00:1450:4001::1",
    "::ffff:8.8.8.8",  # mapped, public inside
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]
NON_PUBLIC = [
    "0.0.0.0",
    "0.1.2.3",
    "10.1.2.3",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.0.1",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::a00:1",  # IPv4-compatible
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0:a00:1",  # IPv4-translated
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b:1::808:808",  # local-use NAT64
    "100::1",  # discard-only
    "2001::1",  # Teredo
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, public server and client
    "2001:2::1",  # benchmarking
    "2001:db8::1",  # documentation
    "3fff::1",  # documentation
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("::1", "::1"),
        ("::FFFF:127.0.0.1", "::ffff:7f00:1"),
    ],
)
def test_ip_literals_in_every_spelling(host: str, address: str) -> None:
    assert parse_ip(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "host", ["example.com", "1.2.3.4.5", "0x", "08", "abc", "face.b00c", "fe80::1%lo", ""]
)
def test_host_names_are_not_literals(host: str) -> None:
    assert parse_ip(host) is None


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST.", "a.b.localhost", "metadata", "metadata.google.internal."]
)
def test_blocked_names(host: str) -> None:
    assert is_blocked_name(host)


@pytest.mark.parametrize("host", ["example.com", "localhost.example.com", "metadata.example"])
def test_ordinary_names(host: str) -> None:
    assert not is_blocked_name(host)


STRICT = AddressPolicy()
LOCAL = AddressPolicy(allow_private_networks=True, allowed_ports=None)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.jpg",
        "https://example.com/a.jpg",
        "http://example.com:80/a.jpg",
        "https://1.2.3.4:443/a.jpg",
        "http://[2606:4700::1111]/a.jpg",
        "http://xn--bcher-kva.example/a.jpg",
        "http://example.com./a.jpg",
    ],
)
def test_allowed_urls(url: str) -> None:
    STRICT.check_url(URL(url))


@pytest.mark.parametrize(
    ("url", "error", "says"),
    [
        ("ftp://example.com/a.jpg", UrlNotAllowed, "not an absolute http(s) URL"),
        ("/a.jpg", UrlNotAllowed, "not an absolute http(s) URL"),
        ("http://user:pw@example.com/a.jpg", UrlNotAllowed, "user info"),
        ("http://example.com:8080/a.jpg", UrlNotAllowed, "port 8080; allowed ports: 80, 443"),
        ("http://exa%6dple.com/a.jpg", UrlNotAllowed, "malformed host"),
        ("http://[fe80::1%25eth0]/a.jpg", UrlNotAllowed, "malformed host"),
        ("http://127.0.0.1/a.jpg", AddressNotAllowed, "non-public address 127.0.0.1"),
        ("http://2130706433/a.jpg", AddressNotAllowed, "non-public address 127.0.0.1"),
        ("http://[::ffff:10.0.0.1]/a.jpg", AddressNotAllowed, "non-public address"),
        ("http://localhost/a.jpg", AddressNotAllowed, "non-public host (localhost)"),
        ("http://10.0.0.1:8080/a.jpg", AddressNotAllowed, "non-public address 10.0.0.1"),
    ],
)
def test_refused_urls(url: str, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=re.escape(says)) as caught:
        STRICT.check_url(URL(url))
    assert "pw" not in str(caught.value)


def test_private_networks_allowed_lifts_only_the_address_checks() -> None:
    for url in ["http://127.0.0.1:8080/a.jpg", "http://localhost/a.jpg", "http://[::1]:1/"]:
        LOCAL.check_url(URL(url))
    for url in ["ftp://127.0.0.1/a.jpg", "http://u@127.0.0.1/a.jpg", "http://[fe80::1%25lo]/"]:
        with pytest.raises(UrlNotAllowed):
            LOCAL.check_url(URL(url))
    ports_too = AddressPolicy(allow_private_networks=True, allowed_ports=frozenset({8080}))
    ports_too.check_url(URL("http://127.0.0.1:8080/"))
    with pytest.raises(UrlNotAllowed, match="port 80;"):
        ports_too.check_url(URL("http://127.0.0.1/"))


class FixedResolver(AbstractResolver):
    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=h, port=port, family=family, proto=0, flags=0)
            for h in self.hosts
        ]

    async def close(self) -> None:
        pass


async def test_the_resolver_keeps_public_addresses_only() -> None:
    resolver = PublicAddressResolver(FixedResolver("10.0.0.1", "1.2.3.4", "::1", "fe80::1%lo"))
    assert [r["host"] for r in await resolver.resolve("mixed.example", 80)] == ["1.2.3.4"]


async def test_the_resolver_refuses_a_name_with_no_public_address() -> None:
    resolver = PublicAddressResolver(FixedResolver("127.0.0.1", "::ffff:169.254.169.254"))
    with pytest.raises(AddressNotAllowed, match=r"rebind\.example resolves to non-public") as err:
        await resolver.resolve("rebind.example", 80)
    # The refusal names the rule, not the addresses: no DNS oracle into the network.
    assert "127.0.0.1" not in str(err.value)
    assert "169.254" not in str(err.value)


@pytest.mark.parametrize(
    "address",
    [("127.0.0.1", 80), ("::1", 80, 0, 0), ("::ffff:10.0.0.1", 80, 0, 0), ("2130706433", 80)],
)
def test_the_socket_factory_refuses_non_public_addresses(address: tuple[object, ...]) -> None:
    family = socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
    with pytest.raises(AddressNotAllowed, match="refusing to connect") as err:
        public_socket((family, socket.SOCK_STREAM, 6, "", address))
    assert str(address[0]) not in str(err.value)


def test_the_socket_factory_makes_a_socket_for_a_public_address() -> None:
    # The socket is made, never connected.
    with public_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("1.2.3.4", 80))) as sock:
        assert sock.family == socket.AF_INET
