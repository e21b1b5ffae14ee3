"""The outbound-address guard: non-public addresses are refused unless allow-listed, both in
`resolve_and_check` itself and when an admin registers an HTTP tool over the API."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from app.api.context import AppContext
from app.main import create_app
from app.tools.outbound import (
    OutboundAddressRefused,
    OutboundHostUnresolved,
    address_class,
    resolve_and_check,
)
from tests.conftest import TokenFactory, bearer, client_for, make_settings


def tool_body(url: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "create_ticket",
        "description": "Open a support ticket.",
        "input_schema": {
            "type": "object",
            "properties": {"title": {"type": "string"}},
            "required": ["title"],
        },
        "url": url,
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 around 10.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
        ("8.8.8.8", None),
        ("::ffff:8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classes(address: str, expected: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http://user:pw@example.com/", "credentials"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "port"),
        ("not a url", "scheme"),
    ],
)
async def test_malformed_urls_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(OutboundAddressRefused) as refused:
        await resolve_and_check(url, [])
    assert fragment in refused.value.detail
    assert refused.value.status_code == 422


@pytest.mark.parametrize(
    ("url", "host", "address_class_name"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1", "loopback"),
        ("http://localhost/hook", "localhost", "loopback"),
        ("http://127.1/hook", "127.1", "loopback"),  # inet_aton short form
        ("http://2130706433/hook", "2130706433", "loopback"),  # decimal form
        ("http://10.0.0.5/hook", "10.0.0.5", "private"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
        ("http://[::1]/hook", "::1", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:7f00:1", "loopback"),
        ("http://0.0.0.0/hook", "0.0.0.0", "unspecified"),
    ],
)
async def test_non_public_addresses_are_refused_naming_host_and_class(
    url: str, host: str, address_class_name: str
) -> None:
    with pytest.raises(OutboundAddressRefused) as refused:
        await resolve_and_check(url, [])
    assert host in refused.value.detail
    assert f"{address_class_name} address" in refused.value.detail


async def test_public_literals_pass_and_return_the_checked_addresses() -> None:
    target = await resolve_and_check("https://8.8.8.8/v1/hook?x=1", [])
    assert target.addresses == (ipaddress.ip_address("8.8.8.8"),)
    assert (target.scheme, target.host, target.port) == ("https", "8.8.8.8", 443)
    six = await resolve_and_check("http://[2606:4700:4700::1111]:8080/a?b=2", [])
    assert six.url_for(six.addresses[0]) == "http://[2606:4700:4700::1111]:8080/a?b=2"
    assert six.host_header == "[2606:4700:4700::1111]:8080"


@pytest.mark.parametrize(
    ("url", "allowlist"),
    [
        ("http://127.0.0.1:8080/hook", ["127.0.0.1"]),
        ("http://127.0.0.1:8080/hook", ["127.0.0.0/8"]),
        ("http://localhost:8080/hook", ["LOCALHOST."]),  # host names: case and dot ignored
        ("http://localhost:8080/hook", ["127.0.0.1", "::1"]),
        ("http://10.9.8.7/hook", ["10.0.0.0/8"]),
        ("http://[::1]/hook", ["::1"]),
        ("http://[::ffff:10.0.0.1]/hook", ["10.0.0.0/8"]),
    ],
)
async def test_allow_listed_hosts_addresses_and_networks_pass(
    url: str, allowlist: list[str]
) -> None:
    target = await resolve_and_check(url, allowlist)
    assert target.addresses


async def test_allowlist_does_not_spill_over() -> None:
    with pytest.raises(OutboundAddressRefused, match="private"):
        await resolve_and_check("http://10.0.0.5/hook", ["10.0.1.0/24", "example.com"])


async def test_url_for_keeps_path_query_and_port_but_swaps_the_host() -> None:
    target = await resolve_and_check("http://localhost:8123/p/q?x=1&y=2", ["localhost"])
    address = target.addresses[0]
    assert target.url_for(address).endswith(":8123/p/q?x=1&y=2")
    assert "localhost" not in target.url_for(address)
    assert target.host_header == "localhost:8123"
    with pytest.raises(ValueError):
        target.url_for(ipaddress.ip_address("8.8.8.8"))


async def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(OutboundHostUnresolved, match=r"no-such-host\.invalid"):
        await resolve_and_check("https://no-such-host.invalid/hook", [], resolve_timeout_seconds=3)


# Registration over the API.


@pytest.fixture
async def open_client(
    context_factory: Callable[..., AppContext],
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose allowlist opens loopback, 10/8 and `localhost`."""
    settings = make_settings(outbound_allowlist=["127.0.0.1", "10.0.0.0/8", "localhost"])
    async with client_for(create_app(settings, context=context_factory(settings))) as http:
        yield http


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://0.0.0.0/hook",
    ],
)
async def test_registering_a_private_url_is_a_422_problem(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory, url: str
) -> None:
    admin = bearer(make_token(tenant, roles=("admin",)))
    response = await client.post("/v1/tools", json=tool_body(url), headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["errors"][0]["field"] == "url"
    assert "refused" in problem["detail"]
    listed = await client.get("/v1/tools", headers=admin)
    assert "create_ticket" not in {tool["name"] for tool in listed.json()["items"]}


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.0.0.5/hook"],
)
async def test_allow_listed_url_registers(
    open_client: httpx.AsyncClient, tenant: str, make_token: TokenFactory, url: str
) -> None:
    admin = bearer(make_token(tenant, roles=("admin",)))
    response = await open_client.post("/v1/tools", json=tool_body(url), headers=admin)
    assert response.status_code == 201, response.text
    assert response.json()["url"] == url


async def test_allowlist_is_not_an_open_door(
    open_client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    admin = bearer(make_token(tenant, roles=("admin",)))
    for url in ("http://169.254.169.254/latest/meta-data/", "http://192.168.0.1/"):
        response = await open_client.post("/v1/tools", json=tool_body(url), headers=admin)
        assert response.status_code == 422, response.text


async def test_bad_scheme_and_credentials_are_422(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    admin = bearer(make_token(tenant, roles=("admin",)))
    for url in ("gopher://8.8.8.8/", "https://user:pass@8.8.8.8/hook"):
        response = await client.post("/v1/tools", json=tool_body(url), headers=admin)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "url"
