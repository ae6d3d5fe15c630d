"""The SSRF guard for every request the farm makes to a URL a client chose (webhooks, assets).

A URL's host is resolved once; the first permitted address is the one connected to (so DNS
cannot change between check and use), and the connected socket's peer address is checked again
before a byte is sent. Forbidden: loopback, private, link-local (which holds the cloud metadata
address 169.254.169.254), multicast, reserved, unspecified and anything not globally routable,
IPv4-mapped IPv6 included; the operator's CIDR allowlist admits addresses that would otherwise
be refused (on-premises receivers, the tests' local servers). Redirects are never followed
here: a caller that follows them calls ``target``/``pinned_pool`` again for each hop.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# Cloud metadata endpoints (AWS/GCP/Azure/OpenStack; AWS's IPv6 one), named in refusals.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254")
)


class Refused(Exception):
    """The URL or the address it resolves to may not be requested."""


def parse_allowlist(cidrs: Sequence[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def forbidden(ip: IPAddress, allowlist: Sequence[IPNetwork]) -> str | None:
    """Why ``ip`` may not be requested, or None. The operator's allowlist wins."""
    if any(ip in net for net in allowlist):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return forbidden(ip.ipv4_mapped, allowlist)
    if ip in _METADATA:
        return "link-local: cloud metadata service"
    # Most specific first: Python counts link-local, unspecified, ... as "private" too.
    for name in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if not ip.is_global:
        return "not globally routable"
    return None


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen


def pick_address(host: str, port: int, allowlist: Sequence[IPNetwork]) -> IPAddress:
    """Resolve ``host`` once and return the first permitted address; raise ``Refused`` if none.

    The connection then goes to exactly this address, so DNS cannot change between check and use.
    """
    reasons = []
    for ip in _addresses(host, port):
        reason = forbidden(ip, allowlist)
        if reason is None:
            return ip
        reasons.append(f"{ip} ({reason})")
    raise Refused(f"refused: {host} resolves only to forbidden addresses: {', '.join(reasons)}")


def ssl_context(ca_bundle: str = "") -> ssl.SSLContext:
    """The system's trust store, plus the operator's extra CA bundle when one is set."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


@dataclass(frozen=True)
class Target:
    """A URL split into what the pinned connection needs."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    host_header: str


def target(url: str, schemes: Sequence[str] = ("https",)) -> Target:
    """Parse ``url``; raise ``Refused`` for a scheme not in ``schemes`` or a URL without a host.

    A malformed URL or port raises ``ValueError``.
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise Refused(f"refused: only {' and '.join(schemes)} URLs are allowed")
    host = parts.hostname
    if not host:
        raise Refused("refused: the URL has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host_header = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    if parts.port is not None:
        host_header += f":{parts.port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, host, port, path, host_header)


class _Checked:
    """Mixin for urllib3 connections: refuse a socket whose peer is a forbidden address."""

    allowlist: Sequence[IPNetwork] = ()

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
        reason = forbidden(peer, self.allowlist)
        if reason is not None:
            sock.close()
            raise Refused(f"refused: connected to a forbidden address: {peer} ({reason})")
        return sock


def pinned_pool(
    where: Target,
    ip: IPAddress,
    *,
    allowlist: Sequence[IPNetwork],
    timeout: float,
    ca_bundle: str = "",
) -> urllib3.HTTPConnectionPool:
    """A one-connection pool to exactly ``ip``, verifying TLS for the URL's host name.

    Requests through it must pass ``headers={"host": where.host_header}``, ``redirect=False``
    and ``assert_same_host=False``.
    """
    checked: dict[str, Any] = {"allowlist": tuple(allowlist)}
    common: dict[str, Any] = dict(
        host=str(ip),
        port=where.port,
        maxsize=1,
        retries=False,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
    )
    if where.scheme == "http":
        pool = urllib3.HTTPConnectionPool(**common)
        pool.ConnectionCls = type("CheckedHTTPConnection", (_Checked, HTTPConnection), checked)
        return pool
    https = urllib3.HTTPSConnectionPool(
        **common,
        ssl_context=ssl_context(ca_bundle),
        cert_reqs="CERT_REQUIRED",
        server_hostname=where.host,
        assert_hostname=where.host,
    )
    https.ConnectionCls = type("CheckedHTTPSConnection", (_Checked, HTTPSConnection), checked)
    return https
