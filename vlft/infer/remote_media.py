"""Fetching an http(s) media URL for the server without letting a request reach the server's own network: the host
is resolved once, every address it resolves to must be public (no loopback, link-local, private, shared or
reserved range), and the connection goes to that checked address (no second lookup a DNS rebinding could
answer differently). Redirects are followed a few times, each target checked the same way."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urljoin, urlsplit

from vlft.errors import DataError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECTS = (301, 302, 303, 307, 308)


def is_public_address(address: IPAddress) -> bool:
    """True for a globally routable unicast address (an IPv4-mapped IPv6 address is judged by its IPv4 one)."""
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class RemoteFetch:
    """How the server downloads media; `address_allowed` decides which resolved addresses it may connect to."""

    max_bytes: int = 32 * 1024 * 1024
    timeout_s: float = 60.0
    max_redirects: int = 3
    address_allowed: Callable[[IPAddress], bool] = field(default=is_public_address)


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to `host` (its Host header) made to an address resolved and checked beforehand."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """As _PinnedHTTP, with TLS verified against the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def checked_address(host: str, port: int, fetch: RemoteFetch, url: str, field: str) -> str:
    """One address of `host`, after every address it resolves to was allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise DataError(f"cannot resolve the host of {url[:200]}: {e}", field=field) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    refused = [str(a) for a in addresses if not fetch.address_allowed(a)]
    if refused or not addresses:
        raise DataError(f"{url[:200]}: the host resolves to {', '.join(refused) or 'nothing'}, a loopback, "
                        "link-local or private address; the server fetches media from public addresses only",
                        field=field)
    return str(addresses[0])


def _connection(url: str, fetch: RemoteFetch, field: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DataError(f"not an http(s) URL: {url[:200]}", field=field)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:  # a port out of range or not a number
        raise DataError(f"bad URL {url[:200]}: {e}", field=field) from None
    address = checked_address(parts.hostname, port, fetch, url, field)
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    return kind(parts.hostname, port, address, fetch.timeout_s)


def _body(response: http.client.HTTPResponse, fetch: RemoteFetch, url: str, deadline: float, field: str) -> bytes:
    """At most max_bytes of the body, read before the deadline (a server that drips bytes is cut off)."""
    data = bytearray()
    while chunk := response.read1(65536):
        data += chunk
        if len(data) > fetch.max_bytes:
            raise DataError(f"{url[:200]} is larger than the limit of {fetch.max_bytes} bytes", field=field)
        if time.monotonic() > deadline:
            raise DataError(f"{url[:200]}: the download took over {fetch.timeout_s:g} s", field=field)
    return bytes(data)


def download(url: str, fetch: RemoteFetch, field: str) -> bytes:
    """The bytes at an http(s) URL, fetched only from allowed addresses."""
    deadline = time.monotonic() + fetch.timeout_s
    for _ in range(fetch.max_redirects + 1):
        connection = _connection(url, fetch, field)
        parts = urlsplit(url)
        try:
            connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                               headers={"User-Agent": "vlft-deploy"})
            response = connection.getresponse()
            if response.status in REDIRECTS and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                continue
            if response.status != 200:
                raise DataError(f"cannot download {url[:200]}: HTTP {response.status}", field=field)
            return _body(response, fetch, url, deadline, field)
        except (OSError, http.client.HTTPException) as e:  # network, TLS, protocol
            raise DataError(f"cannot download {url[:200]}: {type(e).__name__}: {e}", field=field) from None
        finally:
            connection.close()
    raise DataError(f"{url[:200]}: more than {fetch.max_redirects} redirects", field=field)
