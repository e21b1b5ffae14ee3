"""The outbound-address guard (SSRF): may the platform send a request to this URL?

`resolve_and_check` parses the URL with httpx's parser (the one that later sends the
request, so the checked host and the contacted host cannot disagree), resolves the host
without blocking the event loop, and refuses the URL when any of its addresses is not a
public one — private, loopback, link-local, multicast, reserved, unspecified or otherwise
non-global, including those same addresses hidden inside IPv4-mapped, IPv4-compatible,
6to4, Teredo or NAT64 IPv6 forms — unless the allowlist names the host, the address or a
network containing it. Every address of the host is checked: one bad record refuses all.

The caller connects to one of the returned addresses, never to the host name again, so a
second DNS answer (DNS rebinding) cannot steer the request somewhere unchecked. Redirects
must not be followed by the caller, for the same reason. Knows nothing of tools or webhooks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from app.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_RESOLVE_TIMEOUT_SECONDS = 5.0
ALLOWED_SCHEMES = frozenset({"http", "https"})

_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class OutboundAddressRefused(ValidationFailed):
    """The URL is malformed or leads to an address outbound calls may not reach."""

    code = "outbound-address-refused"
    title = "Outbound address refused"


class OutboundHostUnresolved(OutboundAddressRefused):
    """The host did not resolve (in time), so it could not be checked: nothing is sent.

    A subclass of the refusal, so a caller that only cares "may I send?" catches one type;
    a caller at call time may treat it as transient, since DNS failures often are."""

    code = "outbound-host-unresolved"
    title = "Outbound host did not resolve"


@dataclass(frozen=True)
class ResolvedTarget:
    """A checked URL: its parts, and the addresses it may be reached at (all checked)."""

    url: str
    scheme: str
    host: str  # lower-case ASCII (IDNA) host name, or the IP literal without brackets
    port: int  # explicit, or the scheme's default
    addresses: tuple[IPAddress, ...]  # in resolver order, de-duplicated, never empty
    host_header: str  # `host[:port]` as the original URL names it, for the Host header

    def url_for(self, address: IPAddress) -> str:
        """The original URL with its host replaced by `address` (one of `addresses`)."""
        if address not in self.addresses:
            raise ValueError(f"{address} is not a checked address of {self.host}")
        return str(httpx.URL(self.url).copy_with(host=str(address)))


@dataclass(frozen=True)
class _Allowlist:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> _Allowlist:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(_normalise_host(entry))
        return cls(frozenset(hosts), tuple(networks))

    def allows_address(self, address: IPAddress) -> bool:
        return any(
            candidate in network
            for candidate in (address, *_judged_forms(address))
            for network in self.networks
            if candidate.version == network.version
        )


def _normalise_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition form carries, if any."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's (de-obfuscated) address
    if address in _NAT64_WELL_KNOWN or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _judged_forms(address: IPAddress) -> tuple[IPAddress, ...]:
    """The addresses `address` is judged by: an IPv4-mapped address *is* its IPv4 address
    on the wire; the other transition forms are judged as themselves and by what they carry."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return (address.ipv4_mapped,)
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return (embedded, address)
    return (address,)


def address_class(address: IPAddress) -> str | None:
    """Why `address` may not be reached ("loopback", "private", ...), or None if it is a
    public address. An IPv4-mapped address is judged as its IPv4 address; the other IPv6
    forms that carry one (6to4, Teredo, NAT64, IPv4-compatible) by both addresses."""
    for candidate in _judged_forms(address):
        if candidate.is_unspecified:
            return "unspecified"
        if candidate.is_loopback:
            return "loopback"
        if candidate.is_link_local:
            return "link-local"
        if candidate.is_multicast:
            return "multicast"
        if candidate.is_private:
            return "private"
        if candidate.is_reserved:
            return "reserved"
        if not candidate.is_global:
            return "non-public"
    return None


def _parse(url: str) -> tuple[httpx.URL, str, int]:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise OutboundAddressRefused(f"URL is not valid: {exc}") from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise OutboundAddressRefused(
            f"URL scheme must be http or https, not {parsed.scheme or '(none)'!r}"
        )
    if parsed.userinfo:
        raise OutboundAddressRefused("URL must not contain credentials (user:password@)")
    host = _normalise_host(parsed.raw_host.decode("ascii"))
    if not host:
        raise OutboundAddressRefused("URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise OutboundAddressRefused(f"URL port {port} is out of range")
    return parsed, host, port


async def _resolve(host: str, port: int, timeout_seconds: float) -> tuple[IPAddress, ...]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_seconds):
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
    except TimeoutError as exc:
        raise OutboundHostUnresolved(
            f"host {host} did not resolve within {timeout_seconds:g}s"
        ) from exc
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundHostUnresolved(f"host {host} does not resolve: {exc}") from exc
    addresses: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundHostUnresolved(f"host {host} has no IPv4 or IPv6 address")
    return tuple(addresses)


async def resolve_and_check(
    url: str,
    allowlist: Iterable[str],
    *,
    resolve_timeout_seconds: float = DEFAULT_RESOLVE_TIMEOUT_SECONDS,
) -> ResolvedTarget:
    """Parse and resolve `url`, and return its addresses if every one may be reached.

    Raises `OutboundAddressRefused` (422) naming the host and the address class when the
    URL is malformed or any address is non-public and not allow-listed, and its subclass
    `OutboundHostUnresolved` when the host does not resolve. `allowlist` entries are host
    names (exact, case-insensitive), IP addresses or CIDR networks.
    """
    parsed, host, port = _parse(url)
    addresses = await _resolve(host, port, resolve_timeout_seconds)
    allowed = _Allowlist.parse(allowlist)
    if host not in allowed.hosts:
        for address in addresses:
            refused_as = address_class(address)
            if refused_as is not None and not allowed.allows_address(address):
                shown = host if host == str(address) else f"{host} ({address})"
                raise OutboundAddressRefused(
                    f"outbound calls to {shown} are refused: {refused_as} address; "
                    "add the host, address or network to OUTBOUND_ALLOWLIST to allow it"
                )
    return ResolvedTarget(
        url=str(parsed),
        scheme=parsed.scheme,
        host=host,
        port=port,
        addresses=addresses,
        host_header=parsed.netloc.decode("ascii"),
    )
