"""PHONE: NANP, international, national trunk-0 shapes, and bare numbers a keyword names."""

from __future__ import annotations

import re

from cl_assets.core.pii.context import (
    _continues_code,
    _digit_count,
    _labelled_not_pii,
    _lowercase,
    _NOT_PII_LABELS,
    _said_before,
    _starts_like_date,
    _word_before,
)
from cl_assets.core.pii.model import Span


_PHONE_TAIL = r"(?:[ ]?(?:x|ext\.?|extension)[ ]?[0-9]{1,6})?(?![0-9]|[-.][0-9])"
# NANP core; the first character is "(" or a digit, told apart by the lookbehinds:
# (555) 123-4567, (415)555-0132, 555-123-4567, 555.123.4567, 555 123 4567.
_PHONE_NANP = re.compile(
    r"[(0-9](?<![\w+][(0-9])(?:(?<=\()[0-9]{3}\)[-. ]?|(?<=[0-9])[0-9]{2}[-. ])[0-9]{3}[-. ][0-9]{4}" + _PHONE_TAIL
)
_NANP_PREFIX = re.compile(r"(?:\+1[-. ]?|(?<![\w+])(?:1|001)[-. ])\Z")
# International: +44 20 7946 0958, +49 30 123456, +41 (0)69 979 80 58, +447700677662.
_PHONE_INTL = re.compile(
    r"\+(?<![\w+]\+)[1-9][0-9]{0,14}(?:[-. ]?\([0-9]{1,4}\)[-. ]?[0-9]{1,14})?(?:[-. ][0-9]{1,14}){0,7}" + _PHONE_TAIL
)
# National with a trunk 0: 020 7946 0958, 09-7625400, (08) 8747 6301, 01.84.17.61.18.
_PHONE_NATL = re.compile(
    r"(?:\((?<![\w+]\()0[1-9][0-9]{0,3}\)[-. ]?|0(?<![\w+]0)[1-9][0-9]{0,3}[-. ])[0-9]{1,8}(?:[-. ][0-9]{1,8}){0,4}"
    + _PHONE_TAIL
)
# Any digits-and-separators run, for numbers that are phones only because the text says
# so: "Phone: 467 3395", "call me on 13812345678".
_PHONE_BARE = re.compile(r"[+(0-9](?<![\w+][+(0-9])[-0-9(). ]{5,28}[0-9](?![0-9]|[-.][0-9])")
_PHONE_WORD = re.compile(r"(?:phone|tel|telephone|mobile|cell|cellphone|fax|whatsapp|sms|call)\b[^0-9\]]{0,20}\Z")
_SSN_SHAPE = re.compile(r"[0-9]{3}([-. ])[0-9]{2}\1[0-9]{4}\Z")
_DIGIT_RUN = re.compile(r"[0-9]+")


def _phone_nanp(m: re.Match[str]) -> Span | None:
    """The 3-3-4 shape is distinctive; a "+1 ", "1-" or "001-" before it is included."""
    text, start = m.string, m.start()
    if _labelled_not_pii(text, start):
        return None
    prefix = _NANP_PREFIX.search(text, max(0, start - 4), start)
    return (prefix.start() if prefix else start, m.end())


def _phone_intl(m: re.Match[str]) -> Span | None:
    """E.164 allows at most 15 digits: keep the longest group prefix with 8-15 digits."""
    start, s, digits, end = m.start(), m.group(), 0, None
    for g in _DIGIT_RUN.finditer(s):
        digits += len(g.group())
        if digits > 15:
            break
        if digits >= 8:
            end = g.end()
    if end is None or _labelled_not_pii(m.string, start):
        return None
    return (start, m.end() if digits <= 15 else start + end)


def _phone_natl(m: re.Match[str]) -> Span | None:
    """9-12 digits, and not a date, an SSN shape or the tail of a longer grouped code."""
    text, start, s = m.string, m.start(), m.group()
    if not 9 <= _digit_count(s) <= 12 or _starts_like_date(s) or _SSN_SHAPE.match(s):
        return None
    if _continues_code(text, start, digit_group=True) or _labelled_not_pii(text, start):
        return None
    return m.span()


def _phone_in_context(m: re.Match[str]) -> Span | None:
    """7-15 digits, not a date, right after "phone", "tel", "call", ... (20 characters)
    or "my number" / "my <word> number" for a word that is not a thing's number."""
    text, start, s = m.string, m.start(), m.group()
    if not 7 <= _digit_count(s) <= 15 or _starts_like_date(s):
        return None
    if not (_said_before(_PHONE_WORD, text, start, 40) or _my_number_before(text, start)):
        return None
    return m.span()


_MY_NUMBER = re.compile(r"my\s+(?:([a-z]{1,12})\s+)?number\b[^0-9\]]{0,12}\Z")
_NOT_PHONE_NUMBERS = _NOT_PII_LABELS | frozenset({
    "account", "card", "credit", "debit", "customer", "member", "membership", "policy", "case", "ticket", "routing",
    "confirmation", "booking", "reservation", "serial", "license", "passport", "tax", "social", "security", "ssn",
    "id", "bank", "iban", "tracking",
})  # fmt: skip


def _my_number_before(text: str, start: int) -> bool:
    """ "my number is ...", "my CN number: ..." (but not "my order number ...")."""
    offset = max(0, start - 40)
    m = _MY_NUMBER.search(_lowercase(text[offset:start]))
    return m is not None and not _word_before(text, offset + m.start()) and m.group(1) not in _NOT_PHONE_NUMBERS
