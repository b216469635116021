"""SSN: US social security numbers, bare 9-digit ones only after a keyword."""

from __future__ import annotations

import re

from cl_assets.core.pii.context import _labelled_not_pii, _said_before
from cl_assets.core.pii.model import Span

_SSN = re.compile(r"[0-9](?<![\w.-][0-9])[0-9]{2}(?P<sep>[-. ])[0-9]{2}(?P=sep)[0-9]{4}(?![\w]|[-.][0-9])")
_SSN_BARE = re.compile(r"[0-9](?<![\w.-][0-9])[0-9]{8}(?![\w]|[-.][0-9])")
_SSN_WORD = re.compile(r"(?:ssn|ss ?#|social\s+security(?:\s+(?:number|no\.?|#))?)[^0-9\]]{0,24}\Z")


def _ssn_ok(digits: str) -> bool:
    """SSA rules: area 000, 666 and 900-999, group 00 and serial 0000 are never issued."""
    area = digits[:3]
    return area != "000" and area != "666" and area[0] != "9" and digits[3:5] != "00" and digits[5:] != "0000"


def _ssn(m: re.Match[str]) -> Span | None:
    """123-45-6789 / 123 45 6789 / 123.45.6789 (one separator throughout), issuable."""
    s = m.group()
    if not _ssn_ok(s[:3] + s[4:6] + s[7:]) or _labelled_not_pii(m.string, m.start()):
        return None
    return m.span()


def _ssn_in_context(m: re.Match[str]) -> Span | None:
    """A bare 9-digit number is an SSN only when the text has just said so."""
    text, start = m.string, m.start()
    if not _ssn_ok(m.group()) or not _said_before(_SSN_WORD, text, start, 48):
        return None
    return m.span()
