"""IP_ADDRESS: IPv4 and IPv6, checked by value."""

from __future__ import annotations

import ipaddress
import re

from cl_assets.core.pii.context import _has_digit, _labelled_not_pii
from cl_assets.core.pii.model import Span

_IPV4 = re.compile(
    r"[0-9](?<![\w.][0-9])[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w]|\.[0-9])"
    r"(?:/(?P<prefix>[0-9]{1,3})(?![0-9]))?"
)


def _ipv4(m: re.Match[str]) -> Span | None:
    """Four octets of 0-255, with a /0-32 prefix when there is one; not after "version"."""
    addr = m.group().partition("/")[0]
    if any(int(o) > 255 for o in addr.split(".")) or _labelled_not_pii(m.string, m.start()):
        return None
    prefix = m.group("prefix")
    if prefix is not None and int(prefix) > 32:
        return (m.start(), m.start() + len(addr))
    return m.span()


_IPV6 = re.compile(
    r"(?<![\w:])"
    r"(?P<addr>(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,8}(?:(?<=:)[0-9]{1,3}(?:\.[0-9]{1,3}){3})?)"
    r"(?![\w:]|\.[0-9])"
    r"(?P<zone>%[0-9A-Za-z_.-]{1,32})?"
    r"(?:/(?P<prefix>[0-9]{1,3})(?![0-9]))?"
)


def _ipv6(m: re.Match[str]) -> Span | None:
    """Whatever `ipaddress` accepts, except shapes that are mostly code: no digit at all
    ("::", "::add"), or a compressed form whose groups are all 1-2 characters ("1::2",
    `a[::2]`); the loopback "::1" is kept."""
    addr, zone = m.group("addr"), m.group("zone") or ""
    try:
        ipaddress.IPv6Address(addr + zone)
    except ValueError:
        return None
    if addr != "::1":
        if not _has_digit(addr):
            return None
        if "::" in addr and "." not in addr and all(len(g) <= 2 for g in addr.split(":")):
            return None
    prefix = m.group("prefix")
    if prefix is not None and int(prefix) > 128:
        return (m.start(), m.start() + len(addr) + len(zone))
    return m.span()


def _ipv6_possible(text: str) -> bool:
    """Every IPv6 address has "::", or seven colons (six before an embedded IPv4)."""
    return "::" in text or text.count(":") >= 6
