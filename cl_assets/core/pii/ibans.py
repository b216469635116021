"""IBAN: the country's length and the mod-97 checksum."""

from __future__ import annotations

import re

from cl_assets.core.pii.model import Span

# ISO 13616 registry: country code -> IBAN length.
_IBAN_LENGTH = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
# Anchored on the check digits (digits are rarer than letters): two letters that start a
# word, then the two digits.
_IBAN = re.compile(r"[0-9](?<=(?<![\w])[A-Za-z]{2}[0-9])[0-9](?:[ -]?[A-Za-z0-9]){10,34}")
_IBAN_TO_DIGITS = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})


def _iban(m: re.Match[str]) -> Span | None:
    """Exactly the country's number of characters (spaces or dashes between them allowed),
    ending at a word boundary, in one letter case, with the mod-97 checksum equal to 1.
    Where the country or the length is not the registry's, an unspaced capital code of
    14-34 characters with a valid checksum still counts: an invented or mistyped IBAN
    (as generators and people produce) is account data all the same."""
    text, start = m.string, m.start() - 2
    s = text[start : m.end()]
    length = _IBAN_LENGTH.get(s[:2].upper())
    span = None if length is None else _registered(text, start, s, length)
    return span if span is not None else _unregistered(text, start)


def _registered(text: str, start: int, s: str, length: int) -> Span | None:
    chars: list[str] = []
    end = 0
    for i, ch in enumerate(s):
        if ch != " " and ch != "-":
            chars.append(ch)
            if len(chars) == length:
                end = i + 1
                break
    if end == 0:
        return None
    stop = start + end
    if stop < len(text) and (text[stop].isalnum() or text[stop] == "_"):
        return None
    iban = "".join(chars)
    if not (iban.isupper() or iban.islower()) and not iban[4:].isdigit():
        return None  # "LV80 bANK ...": an IBAN is written in one case
    return (start, stop) if _checksum_ok(iban.upper()) else None


_UNSPACED = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}(?![\w])")


def _unregistered(text: str, start: int) -> Span | None:
    m = _UNSPACED.match(text, start)
    return m.span() if m is not None and _checksum_ok(m.group()) else None


def _checksum_ok(iban: str) -> bool:
    return int((iban[4:] + iban[:4]).translate(_IBAN_TO_DIGITS)) % 97 == 1
