"""CREDIT_CARD: Luhn-valid numbers of a card's length and layout."""

from __future__ import annotations

import re

from cl_assets.core.pii.context import _continues_code, _labelled_not_pii
from cl_assets.core.pii.model import Span

_CARD = re.compile(
    r"[0-9](?<![\w][0-9])(?:"
    r"[0-9]{3}(?P<sep>[ -])[0-9]{3,6}(?:(?P=sep)[0-9]{1,6}){1,3}"  # 4-4-4-4, 4-6-5, 4-4-4-4-3
    r"|[0-9]{11,18}"
    r")(?![\w])"
)
_DOUBLED = str.maketrans("0123456789", "0246813579")  # digit -> digit sum of its double


def _luhn_ok(digits: str) -> bool:
    """The Luhn check every payment card number carries."""
    return (sum(map(int, digits[-1::-2])) + sum(map(int, digits[-2::-2].translate(_DOUBLED)))) % 10 == 0


# Issuer ranges beyond the first digits 1-6 (airlines, Amex, Visa, Mastercard, Discover,
# JCB, Diners, UnionPay 62): Maestro is 12-19 digits, UnionPay also starts with 81 and
# Ukraine's Prostir with 9 (16 digits).
_MAESTRO = ("50", "56", "57", "58", "59", "60", "61", "62", "63", "64", "65", "66", "67", "68", "69", "0604")


def _card_number_ok(digits: str) -> bool:
    """12-19 digits in an issuer's range, not a 13-digit millisecond timestamp
    (1xxxxxxxxxxxx), Luhn-valid."""
    n = len(digits)
    if n == 12 or digits[0] == "0":
        issued = 12 <= n <= 19 and digits.startswith(_MAESTRO)
    elif n == 13:
        issued = "2" <= digits[0] <= "6"
    else:
        issued = 13 < n <= 19 and ("1" <= digits[0] <= "6" or digits.startswith("81") or (digits[0] == "9" and n == 16))
    return issued and _luhn_ok(digits)


_AFTER_COUNTRY_CODE = re.compile(r"\+[1-9][0-9]{0,2}[ -]\Z")


def _card(m: re.Match[str]) -> Span | None:
    """A valid number; in a run of groups, the longest valid prefix of the run whose
    layout is a card's (4 digits first, then groups of 3-6, the last may be short)."""
    text, start, s, sep = m.string, m.start(), m.group(), m.group("sep")
    if sep is None:
        if not _card_number_ok(s):
            return None
        end = m.end()
    else:
        groups = s.split(sep)
        for size in range(len(groups), 1, -1):
            window = groups[:size]
            number = "".join(window)
            if len(number) == 12 and size < len(groups):
                continue  # a 12-digit card is a whole run, not the head of a 16-digit one
            if all(3 <= len(g) <= 6 for g in window[1:-1]) and _card_number_ok(number):
                end = start + len(sep.join(window))
                break
        else:
            return None
        if _continues_code(text, start, digit_group=len(number) == 12):  # a 12-digit card is no run's tail
            return None
    if _labelled_not_pii(text, start) or _AFTER_COUNTRY_CODE.search(text, max(0, start - 6), start):
        return None  # "+43 5672 43047 238": the national part of a phone number
    return (start, end)


def _card_resume(m: re.Match[str]) -> int:
    """After a rejected run of groups, retry from its second group: a card may start there."""
    sep = m.group("sep")
    return m.end() if sep is None else m.start() + m.group().index(sep) + 1
