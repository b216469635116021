"""PII sanitizer: typed placeholders for personal data and secrets, before anything is stored.

Pure and I/O-free. Every detector is one compiled pattern plus a cheap validator
(checksum, range, context), listed once in `_DETECTORS`. Patterns use only bounded,
possessive or unambiguous repetition, so a scan is linear in the length of the text; a
detector whose match can over-reach (a card followed by more digit groups, an IBAN
followed by words) shrinks it in its validator and the scan resumes from there. For
speed every pattern starts with a literal or a single character class (boundaries are
checked by a lookbehind placed after that first character), which lets `re` skip ahead
in C; the numeric detectors only run inside runs of digits and separators, and a
detector runs at all only if the text holds what every match of it needs (a literal, or
enough digits), which most texts do not.

Choices worth knowing (each is tested):
- Checksummed types are flagged wherever they appear: cards (Luhn), IBANs (mod-97 and
  the country's length), IPv4/IPv6 (value ranges, `ipaddress`).
- Shapes common in ordinary text need more: a bare 9-digit number is an SSN only right
  after "SSN"/"social security", and a bare or local-format number is a phone only right
  after "phone"/"tel"/"mobile"/"call"/...; ZIP+4 shapes (12345-6789) are never SSNs; bare
  "::" and short compressed IPv6 such as "1::2" (slices, C++, Haskell) are not addresses.
- A number directly labelled as something else ("ISBN", "order", "lot", "invoice", "SKU",
  "IMEI", "version"/"v", ...) is not PII; dates and times are never phones.
- On overlap the more specific type wins (SECRET > EMAIL > IBAN > CREDIT_CARD > SSN >
  IP_ADDRESS > PHONE), then the longer span.
- `sanitize` is idempotent: a value glued to a placeholder stays blocked as it was by
  the value the placeholder replaced, and where a finding may have hidden more (see
  `_find`) the text is scanned again with the findings replaced.
- Digits are ASCII only: other scripts' digits or a zero-width character inside a number
  split it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PII_TYPES", "Finding", "Sanitized", "find_pii", "hash_user_id", "sanitize"]

PII_TYPES: tuple[str, ...] = ("EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IP_ADDRESS", "IBAN", "SECRET")

# Overlap resolution: lower rank wins. Checksummed or structurally unmistakable types
# outrank PHONE, whose shapes are the loosest.
_RANK = {"SECRET": 0, "EMAIL": 1, "IBAN": 2, "CREDIT_CARD": 3, "SSN": 4, "IP_ADDRESS": 5, "PHONE": 6}


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected span, `text[start:end]`, of a type from `PII_TYPES`."""

    type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Sanitized:
    """The text with every finding replaced by `[TYPE]`, and what was found."""

    text: str
    pii_types: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)


Span = tuple[int, int]

# --------------------------------------------------------------------------- shared checks

# A number right after one of these labels names a thing, not a person.
_NOT_PII_LABELS = frozenset({
    "isbn", "issn", "ean", "upc", "gtin", "asin", "imei", "iccid", "meid", "order", "ord", "lot", "batch", "invoice",
    "inv", "sku", "item", "part", "tracking", "ref", "reference", "po", "version", "ver", "v", "build", "release",
    "rev", "revision", "firmware", "fw", "model", "patch",
})  # fmt: skip
_LABEL_NUMBER_WORDS = frozenset(("no", "nr", "num", "number", "id"))
_LABEL_SEPARATORS = " \t\r\n#:."


def _labelled_not_pii(text: str, start: int) -> bool:
    """True if the candidate at `start` directly follows a non-PII label such as "ISBN",
    "Order No." or "version": those numbers identify things, not people."""
    head = text[max(0, start - 32) : start].rstrip(_LABEL_SEPARATORS)
    if not head or not head[-1].isalnum():
        return False
    words = head.lower().rsplit(None, 2)
    word = words[-1]
    if word in _LABEL_NUMBER_WORDS and len(words) > 1:  # "order no. 123", "item number 5"
        word = words[-2].rstrip(_LABEL_SEPARATORS)
    word = word.lstrip("([{\"'")
    if word.startswith(("isbn", "issn")):  # "ISBN-13", "isbn10"
        word = word[:4]
    return word in _NOT_PII_LABELS


def _said_before(words: re.Pattern[str], text: str, start: int, reach: int) -> bool:
    """True if `words` (a pattern of lowercase keywords and the gap allowed after them, up
    to the end) matches a whole word within `reach` characters before `start`. The
    patterns start with a literal, so `re` skips to candidate letters; the word boundary
    in front is checked here."""
    offset = max(0, start - reach)
    window = _lowercase(text[offset:start])
    pos = 0
    while (m := words.search(window, pos)) is not None:
        if not _word_before(text, offset + m.start()):
            return True
        pos = m.start() + 1
    return False


_DATE_SHAPE = re.compile(
    r"(?:[0-3]?[0-9](?P<s1>[-./])[0-3]?[0-9](?P=s1)(?:19|20)[0-9]{2}"  # 15.03.2024, 03/15/2024
    r"|(?:19|20)[0-9]{2}(?P<s2>[-./])[01]?[0-9](?P=s2)[0-3]?[0-9])(?![0-9])"  # 2024-03-15
)


def _starts_like_date(s: str) -> bool:
    """Dates (15.03.2024, 2024-03-15) followed by a time or a count are not phone numbers."""
    return _DATE_SHAPE.match(s) is not None


_PLACEHOLDER = re.compile(r"\[(?:" + "|".join(PII_TYPES) + r")\]")
_PLACEHOLDER_BEFORE = re.compile(r"\[(?:" + "|".join(PII_TYPES) + r")\]\Z")


def _after_placeholder(text: str, pos: int) -> bool:
    """True if `text[:pos]` ends with a placeholder such as "[EMAIL]"."""
    return pos > 0 and text[pos - 1] == "]" and _PLACEHOLDER_BEFORE.search(text, max(0, pos - 13), pos) is not None


def _glued_to_placeholder(text: str, start: int, end: int) -> bool:
    """True if the span touches or holds a placeholder. Sanitizing again must change
    nothing, and a placeholder stands for a value whose first or last character blocked
    this candidate the first time (it was part of a word or a longer number)."""
    return (
        _after_placeholder(text, start)
        or (end < len(text) and text[end] == "[" and _PLACEHOLDER.match(text, end) is not None)
        or (end + 1 < len(text) and text[end] in "-." and _PLACEHOLDER.match(text, end + 1) is not None)
        or ("[" in text[start:end] and _PLACEHOLDER.search(text, start, end) is not None)
    )


def _continues_code(text: str, start: int, *, digit_group: bool) -> bool:
    """True if `start` follows a 4-character group of letters and digits (or, with
    `digit_group`, of digits only) and a space or dash ("DE89 3704 ...", "6460 0001 ..."):
    the candidate is the tail of a longer grouped code such as an IBAN that failed its
    checksum, not a number of its own. Cards pass `digit_group=False`, since a list of
    cards is a run of 4-digit groups too."""
    if start < 2 or text[start - 1] not in " -":
        return False
    if _after_placeholder(text, start - 1):
        return True  # the code it continued has been sanitized
    head = text[start - 5 : start - 1]
    if len(head) < 4:
        return False
    if not (head.isascii() and head.isalnum()) or head.isalpha() or (head.isdigit() and not digit_group):
        return False
    return start == 5 or not (text[start - 6].isalnum() or text[start - 6] == "_")


def _word_before(text: str, pos: int) -> bool:
    """True if `text[pos]` continues a word: after a letter, digit, "_" or a placeholder
    (which stands for a value that did the same before it was replaced)."""
    if pos == 0:
        return False
    ch = text[pos - 1]
    return ch.isalnum() or ch == "_" or _after_placeholder(text, pos)


_ANY_DIGIT = re.compile(r"[0-9]")


def _has_digit(s: str) -> bool:
    return _ANY_DIGIT.search(s) is not None


def _digit_count(s: str) -> int:
    """Digits in a candidate made of ASCII digits and the separators " -.()+"."""
    return len(s.encode().translate(None, b" -.()+"))


# --------------------------------------------------------------------------- EMAIL

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


# --------------------------------------------------------------------------- PHONE

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


# --------------------------------------------------------------------------- SSN

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


# --------------------------------------------------------------------------- CREDIT_CARD

_CARD = re.compile(
    r"[0-9](?<![\w][0-9])(?:"
    r"[0-9]{3}(?P<sep>[ -])[0-9]{3,6}(?:(?P=sep)[0-9]{1,6}){1,3}"  # 4-4-4-4, 4-6-5, 4-4-4-4-3
    r"|[0-9]{12,18}"
    r")(?![\w])"
)
_DOUBLED = str.maketrans("0123456789", "0246813579")  # digit -> digit sum of its double


def _luhn_ok(digits: str) -> bool:
    """The Luhn check every payment card number carries."""
    return (sum(map(int, digits[-1::-2])) + sum(map(int, digits[-2::-2].translate(_DOUBLED)))) % 10 == 0


def _card_number_ok(digits: str) -> bool:
    """13-19 digits, an issuer's first digit (1-6: airlines, Amex, Visa, Mastercard,
    Discover, ...), not a 13-digit millisecond timestamp (1xxxxxxxxxxxx), Luhn-valid."""
    return (
        13 <= len(digits) <= 19
        and "1" <= digits[0] <= "6"
        and not (len(digits) == 13 and digits[0] == "1")
        and _luhn_ok(digits)
    )


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
            if all(3 <= len(g) <= 6 for g in window[1:-1]) and _card_number_ok("".join(window)):
                end = start + len(sep.join(window))
                break
        else:
            return None
        if _continues_code(text, start, digit_group=False):
            return None
    return None if _labelled_not_pii(text, start) else (start, end)


def _card_resume(m: re.Match[str]) -> int:
    """After a rejected run of groups, retry from its second group: a card may start there."""
    sep = m.group("sep")
    return m.end() if sep is None else m.start() + m.group().index(sep) + 1


# --------------------------------------------------------------------------- IP_ADDRESS

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


# --------------------------------------------------------------------------- IBAN

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
_IBAN = re.compile(r"[0-9](?<=(?<![\w])[A-Za-z]{2}[0-9])[0-9](?:[ -]?[A-Za-z0-9]){11,34}")
_IBAN_TO_DIGITS = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})


def _iban(m: re.Match[str]) -> Span | None:
    """Exactly the country's number of characters (spaces or dashes between them allowed),
    ending at a word boundary, in one letter case, with the mod-97 checksum equal to 1."""
    text, start = m.string, m.start() - 2
    s = text[start : m.end()]
    length = _IBAN_LENGTH.get(s[:2].upper())
    if length is None:
        return None
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
    iban = iban.upper()
    if int((iban[4:] + iban[:4]).translate(_IBAN_TO_DIGITS)) % 97 != 1:
        return None
    return (start, stop)


# --------------------------------------------------------------------------- SECRET

_TOKEN_SHAPES = (
    r"sk-[A-Za-z0-9_-]{20,}+",  # OpenAI / Anthropic style (sk-..., sk-proj-..., sk-ant-...)
    r"sk_(?:live|test)_[A-Za-z0-9]{16,}+",  # Stripe secret key
    r"rk_(?:live|test)_[A-Za-z0-9]{16,}+",  # Stripe restricted key
    r"gh[pousr]_[A-Za-z0-9]{30,}+",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,}+",  # GitHub fine-grained tokens
    r"glpat-[A-Za-z0-9_-]{20,}+",  # GitLab
    r"hf_[A-Za-z0-9]{30,}+",  # Hugging Face
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"ASIA[0-9A-Z]{16}",  # AWS temporary access key id
    r"xox[baprse]-[A-Za-z0-9-]{10,}+",  # Slack
    r"AIza[0-9A-Za-z_-]{35}",  # Google API key
    r"eyJ[A-Za-z0-9_-]{5,}+\.eyJ[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]*+",  # JWT
)
# Each shape starts with a letter, checked not to continue a word right after it: every
# alternative then begins with a literal, so `re` jumps between candidate first letters.
_SECRET_TOKEN = re.compile("(?:" + "|".join(f"{t[0]}(?<![\\w-]{t[0]}){t[1:]}" for t in _TOKEN_SHAPES) + r")(?![\w-])")
# The body is a greedy run of base64 and header characters that stops at the next "-----",
# so the scan stays linear when the END line is missing; the key material is still covered.
_PEM = re.compile(
    r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[A-Za-z0-9+/=:,.\s]|-(?!----)){0,65536}"
    r"(?:-----END (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----)?"
)
_BEARER = re.compile(r"[Bb](?:earer|EARER|asic|ASIC)\s{1,4}(?P<v>[A-Za-z0-9._~+/-]{16,}+=*+)(?![\w.~+/=-])")
# Matched against the lowercased text (same offsets, see `_lowercase`).
_ASSIGNMENT = re.compile(
    r"(?:api[_-]?key|apikey|secret|token|passw(?:or)?d|pwd|passphrase|credentials?|private[_-]?key)"
    r"[a-z0-9]{0,20}(?:[_.-][a-z0-9]{1,20}){0,3}[\"']?\s{0,3}(?::=|=>|[:=])\s{0,3}"
    r"(?:(?P<q>[\"'])(?P<qv>[^\"'\s]{8,1024}+)(?P=q)|(?P<v>[^\s\"'`,;()\[\]{}<>]{8,}+))"
)


def _token(m: re.Match[str]) -> Span | None:
    """Known key and token shapes; an "sk-..." one must hold a digit, as random keys all
    but always do and hyphenated words ("sk-learn-style-configuration") do not."""
    token = m.group()
    if token.startswith("sk-") and not _has_digit(token):
        return None
    return m.span()


def _pem(m: re.Match[str]) -> Span | None:
    """A private key block is unmistakable: the match is the secret."""
    return m.span()


def _bearer(m: re.Match[str]) -> Span | None:
    """Keep "Bearer"/"Basic", hide the credential after it: one with a digit, a capital or
    a symbol, which "basic internationalization" lacks."""
    value = m.group("v")
    if _word_before(m.string, m.start()) or (value.islower() and value.isalpha()):
        return None
    return m.span("v")


def _assignment(m: re.Match[str]) -> Span | None:
    """`api_key=...`, `password: "..."`: hide the value, keep the name. An unquoted value
    must contain a digit or a symbol and not be a call or an index, so that code such as
    `token = self.token` or `secret = load_secret2(path)` stays."""
    if m.group("qv") is not None:
        return m.span("qv")
    value, end, text = m.group("v"), m.end(), m.string
    if end < len(text) and text[end] in "([{<":
        return None
    if any(ch.isdigit() or ch in "!@#$%^&*+/=~?" for ch in value):
        return m.span("v")
    return None


# --------------------------------------------------------------------------- engine

Candidate = tuple[int, int, str]  # start, end, type


@dataclass(frozen=True, slots=True)
class _Detector:
    """One pattern and its validator, and what it takes for the scan to be worth running.

    `min_digits` > 0 marks a numeric detector: its matches are runs of digits and
    separators, so it only runs inside such runs (see `_ISLAND`) holding that many digits,
    and `needs` tests the run; otherwise `needs` tests the text, and `text_digits` is the
    fewest ASCII digits a text must hold for one of its matches to pass. `keywords`: a
    test of the lowercased text (that one of the words it needs occurs). `lowercase`:
    scan the lowercased text. `resume`: where to go on after a rejected match (default:
    its end)."""

    type: str
    pattern: re.Pattern[str]
    validate: Callable[[re.Match[str]], Span | None]
    min_digits: int = 0
    needs: Callable[[str], bool] | None = None
    keywords: Callable[[str], bool] | None = None
    lowercase: bool = False
    resume: Callable[[re.Match[str]], int] | None = None
    text_digits: int = 0


def _may_hold_token(text: str) -> bool:
    """Every `_TOKEN_SHAPES` entry contains one of these."""
    return (
        "_" in text or "sk-" in text or "xox" in text or "eyJ" in text or "glpat-" in text
        or "AKIA" in text or "ASIA" in text or "AIza" in text
    )  # fmt: skip


def _may_name_a_credential(text: str) -> bool:
    """What `_BEARER` starts with, bar its first letter."""
    return "earer" in text or "asic" in text or "EARER" in text or "ASIC" in text


def _may_start_national(run: str) -> bool:
    """A national number starts with its trunk 0 at the start of a group."""
    return run[0] == "0" or "(0" in run or " 0" in run or "-0" in run or ".0" in run


def _names_a_secret(low: str) -> bool:
    """Every `_ASSIGNMENT` keyword contains one of these."""
    return "key" in low or "secret" in low or "token" in low or "pass" in low or "pwd" in low or "credential" in low


def _names_an_ssn(low: str) -> bool:
    """What `_SSN_WORD` looks for."""
    return "ssn" in low or "social" in low or ("ss" in low and "#" in low)


def _names_a_phone(low: str) -> bool:
    """What `_PHONE_WORD` and `_MY_NUMBER` look for."""
    return (
        "phone" in low or "tel" in low or "mobile" in low or "cell" in low or "fax" in low or "whatsapp" in low
        or "sms" in low or "call" in low or "number" in low
    )  # fmt: skip


_DETECTORS: tuple[_Detector, ...] = (
    _Detector("SECRET", _SECRET_TOKEN, _token, needs=_may_hold_token),
    _Detector("SECRET", _PEM, _pem, needs=lambda text: "-----BEGIN " in text),
    _Detector("SECRET", _BEARER, _bearer, needs=_may_name_a_credential),
    _Detector("SECRET", _ASSIGNMENT, _assignment, keywords=_names_a_secret, lowercase=True),
    _Detector("EMAIL", _EMAIL, _email, needs=lambda text: "@" in text),
    _Detector("IBAN", _IBAN, _iban, text_digits=2),  # the check digits
    _Detector("IP_ADDRESS", _IPV6, _ipv6, needs=_ipv6_possible, text_digits=1),  # see `_ipv6`
    _Detector("CREDIT_CARD", _CARD, _card, min_digits=13, resume=_card_resume),
    _Detector("SSN", _SSN, _ssn, min_digits=9),
    _Detector("SSN", _SSN_BARE, _ssn_in_context, min_digits=9, keywords=_names_an_ssn),
    _Detector("IP_ADDRESS", _IPV4, _ipv4, min_digits=4, needs=lambda run: run.count(".") >= 3),
    _Detector("PHONE", _PHONE_NANP, _phone_nanp, min_digits=10),
    _Detector("PHONE", _PHONE_INTL, _phone_intl, min_digits=8, needs=lambda run: "+" in run),
    _Detector("PHONE", _PHONE_NATL, _phone_natl, min_digits=9, needs=_may_start_national),
    _Detector("PHONE", _PHONE_BARE, _phone_in_context, min_digits=7, keywords=_names_a_phone),
)
_TEXT_DETECTORS = tuple(d for d in _DETECTORS if not d.min_digits)
_NUMERIC_DETECTORS = tuple(d for d in _DETECTORS if d.min_digits)

# A maximal run of digits and separators, at least 7 characters, starting with a digit,
# "+" or "(" that does not continue a word. Every numeric detector's match (bar a phone
# extension's letters) lies inside one, so those detectors only run there: most texts
# have no such run at all.
_ISLAND = re.compile(r"[+(0-9](?<![\w][+(0-9])[-0-9(). /+]{6,}")
_ISLAND_SEPARATORS = b" -.()/+"
_ISLAND_MIN_DIGITS = 4
_ASCII_DIGITS = b"0123456789"
_EXTENSION_ROOM = 24  # characters after a run a match may still look at ("ext. 123456")
_UPPER_RUN = re.compile(r"[A-Z]+")


def _lowercase(text: str) -> str:
    """The text lowercased with its offsets kept: `str.lower` lengthens a few characters
    (e.g. "İ"), in which case only ASCII letters are lowered, which is all the keyword
    patterns need."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return _UPPER_RUN.sub(lambda m: m.group().lower(), text)


def _scan(
    det: _Detector,
    text: str,
    subject: str,
    m: re.Match[str] | None,
    stop: int,
    endpos: int,
    found: list[Candidate],
    rejected: list[Span],
) -> None:
    """Go on with one detector's scan of `subject` (the text or its lowercased copy) from
    its match `m` up to `endpos`, for matches that start before `stop`; validated spans
    go to `found`, the extent of rejected matches to `rejected`. The caller makes the
    first search, as most find nothing."""
    pattern, validate, resume, kind = det.pattern, det.validate, det.resume, det.type
    while m is not None and m.start() < stop:
        span = validate(m)
        if span is not None and span[1] > span[0] and not _glued_to_placeholder(text, span[0], span[1]):
            found.append((span[0], span[1], kind))
            pos = span[1]
        else:
            rejected.append(m.span())
            pos = resume(m) if resume is not None else m.end()
        if pos <= m.start():  # always make progress
            pos = m.start() + 1
        m = pattern.search(subject, pos, endpos)


def _candidates(text: str, rejected: list[Span]) -> list[Candidate]:
    """Every validated span of every detector, overlaps included."""
    found: list[Candidate] = []
    n = len(text)
    low: str | None = None
    # Counted on the UTF-8 bytes, in C: most texts are ruled out of most detectors by this.
    encoded = text.encode("utf-8", "surrogatepass")
    digits = len(encoded) - len(encoded.translate(None, _ASCII_DIGITS))
    for det in _TEXT_DETECTORS:
        if digits < det.text_digits or (det.needs is not None and not det.needs(text)):
            continue
        subject = text
        if det.lowercase or det.keywords is not None:
            if low is None:
                low = _lowercase(text)
            if det.keywords is not None and not det.keywords(low):
                continue
            if det.lowercase:
                subject = low
        m = det.pattern.search(subject)
        if m is not None:
            _scan(det, text, subject, m, n, n, found, rejected)
    if digits < _ISLAND_MIN_DIGITS:
        return found
    numeric: list[_Detector] | None = None
    for island in _ISLAND.finditer(text):
        run = island.group()
        run_digits = len(run.encode().translate(None, _ISLAND_SEPARATORS))  # ASCII: fast in C
        if run_digits < _ISLAND_MIN_DIGITS:
            continue
        if numeric is None:
            if low is None:
                low = _lowercase(text)
            numeric = [d for d in _NUMERIC_DETECTORS if d.keywords is None or d.keywords(low)]
        start, stop = island.span()
        endpos = min(n, stop + _EXTENSION_ROOM)
        for det in numeric:
            if run_digits >= det.min_digits and (det.needs is None or det.needs(run)):
                m = det.pattern.search(text, start, endpos)
                if m is not None and m.start() < stop:
                    _scan(det, text, text, m, stop, endpos, found, rejected)
    return found


def _find(text: str) -> list[Candidate]:
    """Non-overlapping candidates sorted by position; where candidates overlap, the more
    specific type (see `_RANK`) wins, then the longer span.

    Findings change what is around them: a candidate that lost an overlap can leave a
    remainder that is PII on its own ("+10000000 0@0.AA": the phone number minus the "0"
    the email took), a rejected match that reached into a finding hid whatever started
    inside it, and a label inside a finding no longer labels what follows. When that
    happened the text is scanned again with the findings replaced, and new findings are
    mapped back, until nothing new appears: so `sanitize` is idempotent. Placeholders
    block their neighbours (see `_glued_to_placeholder`) as the values they replace did."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    subject = text
    found: list[Candidate] = []
    origin: Callable[[int], int] | None = None
    for _ in range(_MAX_PASSES):
        rejected: list[Span] = []
        cands = _candidates(subject, rejected)
        more = _resolve_all(cands)
        if not more:
            break
        hide = _may_hide_more(cands, more, rejected)
        if origin is None:
            found = more
        else:
            found = sorted(found + [(origin(s), origin(s) + (e - s), kind) for s, e, kind in more])
        if not hide:
            break
        subject, origin = _redact_with_origin(text, found)
    return found


_MAX_PASSES = 4
_CONTEXT_REACH = 64  # how far before a match its validator may look (an email's local part)


def _may_hide_more(cands: list[Candidate], kept: list[Candidate], rejected: list[Span]) -> bool:
    """True if replacing `kept` (sorted, disjoint) could reveal more: a dropped candidate
    that reaches outside the finding holding it, a rejected match that touches a finding
    and reaches outside it, or one that starts within `_CONTEXT_REACH` after a finding
    (its validator may have looked into it)."""
    starts = [k[0] for k in kept]
    if len(cands) > len(kept):
        for s, e, _ in cands:
            i = bisect_right(starts, s) - 1
            if i < 0 or e > kept[i][1]:
                return True
    for s, e in rejected:
        i = bisect_left(starts, e)  # kept[:i] start before the match ends
        if i and kept[i - 1][0] <= s and e <= kept[i - 1][1]:
            continue  # inside a finding: it becomes part of a placeholder
        for k in kept[max(0, i - 2) : i]:
            if k[1] > s - _CONTEXT_REACH:
                return True
    return False


def _redact_with_origin(text: str, found: list[Candidate]) -> tuple[str, Callable[[int], int]]:
    """`text` with placeholders, and a map from an offset in it (outside placeholders,
    where every later finding lies) back to the offset in `text`."""
    parts: list[str] = []
    shifts: list[tuple[int, int]] = []  # (offset in redacted text, shift to add)
    pos = shift = out = 0
    for start, end, kind in found:
        parts.append(text[pos:start])
        placeholder = f"[{kind}]"
        parts.append(placeholder)
        out += (start - pos) + len(placeholder)
        shift += (end - start) - len(placeholder)
        shifts.append((out, shift))
        pos = end
    parts.append(text[pos:])
    keys = [k for k, _ in shifts]

    def origin(offset: int) -> int:
        i = bisect_right(keys, offset)
        return offset + (shifts[i - 1][1] if i else 0)

    return "".join(parts), origin


def _resolve_all(cands: list[Candidate]) -> list[Candidate]:
    """Resolve overlaps cluster by cluster (a run of mutually overlapping candidates)."""
    if len(cands) <= 1:
        return cands
    cands.sort(key=lambda c: (c[0], -c[1]))
    out: list[Candidate] = []
    cluster: list[Candidate] = []
    cluster_end = -1
    for c in cands:
        if c[0] >= cluster_end:
            _resolve(cluster, out)
            cluster, cluster_end = [c], c[1]
        else:
            cluster.append(c)
            cluster_end = max(cluster_end, c[1])
    _resolve(cluster, out)
    return out


def _resolve(cluster: list[Candidate], out: list[Candidate]) -> None:
    """Greedy by (rank, length): keep a candidate unless it overlaps one already kept."""
    if len(cluster) <= 1:
        out.extend(cluster)
        return
    kept: list[Candidate] = []
    for c in sorted(cluster, key=lambda c: (_RANK[c[2]], c[0] - c[1], c[0])):
        if all(c[1] <= k[0] or k[1] <= c[0] for k in kept):
            kept.append(c)
    out.extend(sorted(kept))


def find_pii(text: str) -> list[Finding]:
    """Every piece of PII in `text`, non-overlapping and sorted by position."""
    return [Finding(kind, start, end) for start, end, kind in _find(text)]


def sanitize(text: str) -> Sanitized:
    """Replace every finding by its `[TYPE]` placeholder; report the types and counts."""
    findings = _find(text)
    if not findings:
        return Sanitized(text)
    parts: list[str] = []
    counts: dict[str, int] = {}
    pos = 0
    for start, end, kind in findings:
        parts.append(text[pos:start])
        parts.append(f"[{kind}]")
        counts[kind] = counts.get(kind, 0) + 1
        pos = end
    parts.append(text[pos:])
    return Sanitized("".join(parts), tuple(sorted(counts)), dict(sorted(counts.items())))


def hash_user_id(user_id: str, salt: str) -> str:
    """Pseudonymous user id: HMAC-SHA256 keyed by the salt, as 64 hex characters. Unlike
    a plain digest it cannot be recomputed from a guessed id without the salt."""
    mac = _keyed_hmac(salt).copy()
    mac.update(user_id.encode("utf-8", "surrogatepass"))
    return mac.hexdigest()


@functools.lru_cache(maxsize=4)
def _keyed_hmac(salt: str) -> hmac.HMAC:
    """The HMAC state after the key, computed once per salt (a process uses one) and
    copied for each id: the key schedule is most of the cost of hashing a short id."""
    return hmac.new(salt.encode("utf-8", "surrogatepass"), digestmod=hashlib.sha256)
