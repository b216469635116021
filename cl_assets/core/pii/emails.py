"""EMAIL: scanned from the "@", the local part found backwards."""

from __future__ import annotations

import re

from cl_assets.core.pii.model import Span

# Scanned from the "@" (rare in text, so `re` skips to it); the local part is then found
# backwards with `_EMAIL_LOCAL` on the at most 64 characters before it.
_EMAIL = re.compile(r"@(?:[^\W_][\w-]{0,62}\.){1,126}(?:[Xx][Nn]--[A-Za-z0-9-]{1,59}|[^\W\d_]{2,63})(?![\w-])")
_LOCAL_CHARS = r"\w.!#$%&'*+/=?^`{|}~-"
_EMAIL_LOCAL = re.compile(rf"[{_LOCAL_CHARS}]{{1,64}}\Z")
_LOCAL_CHAR = re.compile(rf"[{_LOCAL_CHARS}]")


def _email(m: re.Match[str]) -> Span | None:
    """A local part of 1-64 RFC 5322 atom characters, then labels and an alphabetic (or
    IDN "xn--") top-level domain."""
    text, at = m.string, m.start()
    lo = max(0, at - 64)
    local = _EMAIL_LOCAL.search(text, lo, at)
    if local is None:
        return None
    start = local.start()
    if start == lo and start > 0 and _LOCAL_CHAR.match(text, start - 1):
        return None  # local part longer than 64 characters
    return (start, m.end())
