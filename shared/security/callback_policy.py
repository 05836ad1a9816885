"""Where callbacks may go (OWASP API7, SSRF).

A callback URL must be http(s), without credentials, on port 80/443 (or one
of CALLBACK_ALLOWED_PORTS), and every address its host resolves to must be a
public unicast address: loopback, private, link-local (the cloud metadata
address 169.254.169.254 among them), shared, reserved, unspecified and
multicast addresses are refused, IPv4 embedded in IPv6 included. Hosts in
CALLBACK_ALLOWED_HOSTS (names, IP literals or CIDR ranges) are exempt from the
address and port rules: the operator vouches for them.

The api checks at submit time (a 422 when it can already tell); the dispatcher
checks again at send time inside its resolver, so the address it connects to
is the address it checked (no DNS rebinding), and never follows redirects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from shared.settings import CallbackSettings, Environment

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = {"http": 80, "https": 443}
SUBMIT_RESOLVE_TIMEOUT_SECONDS = 2.0


class CallbackRefused(OSError):
    """The URL or an address it resolves to is not allowed. An OSError so that
    aiohttp passes it through its connector unchanged (as `os_error`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lowercased, brackets removed for IPv6
    port: int
    vouched: bool  # in CALLBACK_ALLOWED_HOSTS by name or literal


@dataclass(frozen=True)
class CallbackPolicy:
    allowed_names: frozenset[str]
    allowed_networks: tuple[IPNetwork, ...]
    allowed_ports: frozenset[int]

    @classmethod
    def from_settings(cls, settings: CallbackSettings, environment: Environment) -> CallbackPolicy:
        return cls.build(settings.effective_allowed_hosts(environment), settings.allowed_ports)

    @classmethod
    def build(cls, hosts: Iterable[str], ports: Iterable[int] = ()) -> CallbackPolicy:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in hosts:
            entry = entry.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks), frozenset({80, 443, *ports}))

    def check_url(self, url: str) -> Target:
        """Everything that can be told without DNS; raises CallbackRefused."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise CallbackRefused(f"not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise CallbackRefused("only http and https callback URLs are allowed")
        if parts.username is not None or parts.password is not None:
            raise CallbackRefused("credentials in the callback URL are not allowed; use the signature to authenticate")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise CallbackRefused("the callback URL has no host")
        target = Target(scheme, host, port or DEFAULT_PORTS[scheme], vouched=self._names_host(host))
        if not target.vouched and target.port not in self.allowed_ports:
            allowed = ", ".join(str(p) for p in sorted(self.allowed_ports))
            raise CallbackRefused(f"port {target.port} is not allowed for callbacks (allowed: {allowed}; "
                                  "see CALLBACK_ALLOWED_PORTS)")
        literal = _ip(host)
        if literal is not None and not target.vouched:
            self.check_address(host, literal)
        return target

    def check_address(self, host: str, address: IPAddress | str) -> None:
        ip = _ip(str(address)) if isinstance(address, str) else address
        if ip is None:
            raise CallbackRefused(f"{host} resolved to something that is not an IP address")
        if self._names_host(host) or any(ip in net for net in self.allowed_networks if ip.version == net.version):
            return
        problem = address_problem(ip)
        if problem:
            shown = host if host == str(ip) else f"{host} ({ip})"
            raise CallbackRefused(f"{shown} is a {problem} address; callbacks go to public addresses only "
                                  "unless the host is in CALLBACK_ALLOWED_HOSTS")

    async def check_resolved(self, url: str, *, timeout: float = SUBMIT_RESOLVE_TIMEOUT_SECONDS) -> None:
        """Submit-time check: the URL, then (best effort) the addresses its host has
        now. A name that does not resolve yet is accepted: the dispatcher checks again."""
        target = self.check_url(url)
        if target.vouched or _ip(target.host) is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM), timeout
            )
        except (OSError, TimeoutError, UnicodeError):
            return
        for info in infos:
            self.check_address(target.host, str(info[4][0]))

    def _names_host(self, host: str) -> bool:
        host = host.lower()
        if host in self.allowed_names:
            return True
        ip = _ip(host)
        return ip is not None and any(ip in net for net in self.allowed_networks if ip.version == net.version)


def address_problem(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_problem(embedded)
            if inner:
                return f"{inner} (embedded in IPv6)"
    for label, test in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if test:
            return label
    if not ip.is_global:
        return "non-public"
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """scheme://host:port/path, without credentials, query or fragment (safe to log)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


_URL_TAIL = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/@\s'\"<>]*@)?(?P<rest>[^\s?#'\"<>]*)[^\s'\"<>]*")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
EXCERPT_CHARS = 200


def sanitised_excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """Text a callback target or its client library produced, safe to store and
    show the tenant: every URL without user-info, query or fragment (a token can
    hide there), control and non-ASCII bytes as `?`, at most `limit` characters."""
    text = _URL_TAIL.sub(lambda m: m.group("head") + m.group("rest"), text)
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses a host unless every address it resolves
    to passes the policy. aiohttp connects to exactly the addresses returned
    here, so the checked address is the connected address."""

    def __init__(self, policy: CallbackPolicy, inner: AbstractResolver | None = None) -> None:
        from aiohttp.resolver import ThreadedResolver

        self._policy = policy
        self._inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self._policy.check_address(host, result["host"])
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_connector(policy: CallbackPolicy, **kwargs: Any) -> Any:
    """A TCPConnector whose every connection goes through `GuardedResolver`."""
    import aiohttp

    return aiohttp.TCPConnector(resolver=GuardedResolver(policy), **kwargs)
