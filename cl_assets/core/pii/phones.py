"""PHONE: NANP, "+<country>" and "00<country>", national trunk-0 shapes, numbers a phone word
names, and phone-shaped numbers that libphonenumber's metadata calls valid in a region."""

from __future__ import annotations

import functools
import re

from cl_assets.core.pii.context import (
    _NOT_PII_LABELS,
    _continues_code,
    _digit_count,
    _labelled_not_pii,
    _lowercase,
    _said_before,
    _starts_like_date,
    _word_before,
)
from cl_assets.core.pii.model import Span

_PHONE_TAIL = r"(?:[ ]?(?:x|ext\.?|extension)[ ]?[0-9]{1,6})?(?![0-9]|[-.][0-9])"
# NANP core; the first character is "(" or a digit, told apart by the lookbehinds:
# (555) 123-4567, (415)555-0132, 555-123-4567, 555.123.4567, 555 123 4567.
_PHONE_NANP = re.compile(
    r"[(0-9](?<![0-9_+][(0-9])(?<![A-Za-z]\()(?:(?<=\()[0-9]{3}\)[-. ]?|(?<=[0-9])[0-9]{2}[-. ])[0-9]{3}[-. ][0-9]{4}"
    + _PHONE_TAIL
)
_NANP_PREFIX = re.compile(r"(?:\+1[-. ]?|(?<![\w+])(?:1|001)[-. ])\Z")
# International: +44 20 7946 0958, +49 30 123456, +41 (0)69 979 80 58, +447700677662.
_PHONE_INTL = re.compile(
    r"\+(?<![0-9_+]\+)[1-9][0-9]{0,14}\)?(?:[-. /]?\([0-9]{1,4}\)[-. /]?[0-9]{1,14})?(?:[-. /]{1,2}[0-9]{1,14}){0,7}"
    + _PHONE_TAIL
)
# National with a trunk 0: 020 7946 0958, 09-7625400, (08) 8747 6301, 01.84.17.61.18.
_PHONE_NATL = re.compile(
    r"(?:\((?<![\w+]\()0[1-9][0-9]{0,3}\)[-. /]?|0(?<![\w+]0)[1-9][0-9]{0,3}[-. /])[0-9]{1,8}(?:[-. /][0-9]{1,8}){0,4}"
    + _PHONE_TAIL
)
# Any digits-and-separators run, for numbers that are phones only because the text says
# so: "Phone: 467 3395", "call me on 13812345678".
_PHONE_BARE = re.compile(r"[+(0-9](?<![\w+][+(0-9])[-0-9(). /]{5,28}[0-9](?![0-9]|[-.][0-9])")
# Words that name a phone number, in the languages of the regions below; matched on the
# lowercased text, as whole words (the boundary in front is checked by `_said_before`).
PHONE_WORDS = (
    "phone", "telephone", "tel", "mobile", "cell", "cellphone", "fax", "whatsapp", "sms", "call", "ring", "text",
    "reach", "contact", "dial", "answering", "téléphone", "tél", "portable", "telefon", "telefonnummer", "handy",
    "mobil", "kontakt", "rufnummer", "teléfono", "telefono", "telefone", "telemóvel", "móvil", "movil", "celular",
    "número", "numero", "contacto", "contatto", "cellulare", "nummer", "numer", "puhelin", "gsm", "tlf", "telefoon",
    "телефон", "тел", "моб", "電話", "携帯", "电话", "手机", "전화", "휴대폰", "טלפון",
)  # fmt: skip
_WORD_CHOICE = "|".join(sorted(map(re.escape, PHONE_WORDS), key=len, reverse=True))
_PHONE_WORD = re.compile(rf"(?:{_WORD_CHOICE})(?!\w)[^0-9\]]{{0,24}}\Z")
# ... or right after it: "0699 829 80 31 is my mobile", "040 898 9331 (office)".
_PHONE_WORD_AFTER = re.compile(rf"[^0-9\[]{{0,16}}?(?<!\w)(?:{_WORD_CHOICE}|office|home|work)(?!\w)")
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
    """7-15 digits, not a date, with a phone word ("phone", "tel", "call", "Telefon",
    "móvil", ...) just before or after, or "my number" / "my <word> number" for a word that
    is not a thing's number; else "00<country>..." with a possible length for that
    country, or a number shaped like a phone (see `_may_stand_alone`) that
    libphonenumber's metadata calls valid in one of `REGIONS`."""
    text, start, s = m.string, m.start(), m.group()
    digits = _digit_count(s)
    if not 7 <= digits <= 15 or _starts_like_date(s):
        return None
    if _said_before(_PHONE_WORD, text, start, 48) or _my_number_before(text, start) or _said_after(text, m.end()):
        return None if _labelled_not_pii(text, start, _NOT_PHONE_NUMBERS) else m.span()
    number = s.translate(_KEEP_DIGITS)
    if number.startswith("00") and not _word_before(text, start) and not _labelled_not_pii(text, start):
        # The international call prefix of most countries: "00420 729 792 950".
        return m.span() if possible_international(number[2:]) else None
    if not _may_stand_alone(text, start, s, digits):
        return None
    return m.span() if digits == 7 or _valid_somewhere(number) else None  # 7: a US local number, no region of its own


def _may_stand_alone(text: str, start: int, s: str, digits: int) -> bool:
    """Without a phone word, only a number shaped like one is validated: 10-12 digits
    unseparated, or 8-12 grouped (13 after a trunk "(0"; 7 as a US local "668 5702") by
    spaces, dashes or slashes (dotted runs are versions and addresses); not an SSN, ZIP+4
    or CEP shape, not labelled as a thing's number, not glued to a word, not the tail of a code
    ("ORD-2024-00017", "GB82 WEST 1234 ...")."""
    separators = s.translate(_KEEP_SEPARATORS).replace("(", "").replace(")", "")
    seps = set(separators)
    fewest = 10 if not separators else 7 if _LOCAL_NANP.match(s) else 8  # US local: "668 5702"
    if "." in seps or len(seps) > 2 or seps == {"-", "/"} or not fewest <= digits <= (13 if s[:2] == "(0" else 12):
        return False
    if _SSN_SHAPE.match(s) or _POSTCODE.match(s) or _labelled_not_pii(text, start, _NOT_PHONE_NUMBERS):
        return False
    if _word_before(text, start) or _code_tail(text, start) or _continues_code(text, start, digit_group=True):
        return False
    head = text[max(0, start - 5) : start]
    return not (len(head) == 5 and head[4] == " " and head[:4].isalnum() and head[:4].isupper())


def _code_tail(text: str, start: int) -> bool:
    """ "ORD-2024-00017", "A/2024/12345": the number ends a code that starts with a word."""
    return start >= 2 and text[start - 1] in "-/._#" and text[start - 2].isalnum()


def _said_after(text: str, end: int) -> bool:
    return _PHONE_WORD_AFTER.match(_lowercase(text[end : end + 32])) is not None


# "668 5702"; with a dash it is as often a Japanese postcode (318-5074).
_LOCAL_NANP = re.compile(r"[2-9][0-9]{2} [0-9]{4}\Z")
_POSTCODE = re.compile(r"[0-9]{5}-[0-9]{3,4}\Z")  # Brazil's CEP, the US ZIP+4
_KEEP_DIGITS = str.maketrans("", "", " -.()+/")
_KEEP_SEPARATORS = str.maketrans("", "", "0123456789")
# Regions whose numbers are recognised without a phone word; numbers of any region are
# found with one, or in international format.
REGIONS = (
    "US", "GB", "AU", "CA", "IN", "DE", "AT", "CH", "FR", "IT", "ES", "MX", "BR", "PT", "NL", "BE", "SE", "DK", "NO",
    "FI", "PL", "CZ", "HU", "RU", "UA", "TR", "JP", "CN", "KR", "IL", "ID", "TH", "VN", "GR", "RO", "PH", "AR", "ZA",
)  # fmt: skip


def clear_caches() -> None:
    """Forget the numbers validated so far (benchmarks time a cold cache: new text holds
    new numbers)."""
    _valid_somewhere.cache_clear()
    possible_international.cache_clear()


@functools.lru_cache(maxsize=4096)
def _valid_somewhere(digits: str) -> bool:
    """libphonenumber's metadata (`phonenumbers`) says the number is valid in a region:
    it matches one of the region's number types (fixed line, mobile, toll free, ...), as
    written or after the region's country code, and with or without its national prefix.
    This agreed with `phonenumbers.parse` + `is_valid_number` per region on 4,458 of 4,460
    Faker and random numbers, at ~10 µs instead of ~400 µs (1 ms for a number valid nowhere)."""
    for valid, prefix, country in _region_rules():
        starts = (0, len(country)) if digits.startswith(country) else (0,)  # "4930...": +49 without "+"
        for start in starts:
            if valid.fullmatch(digits, start):
                return True
            if prefix is not None and (m := prefix.match(digits, start)) is not None and m.end() > start:
                if valid.fullmatch(digits, m.end()):
                    return True
    return False


@functools.cache
def _region_rules() -> list[tuple[re.Pattern[str], re.Pattern[str] | None, str]]:
    """Per region of `REGIONS`: one pattern for all its number types, its national prefix
    for parsing, and its country calling code."""
    from phonenumbers import PhoneMetadata

    rules = []
    for region in REGIONS:
        md = PhoneMetadata.metadata_for_region(region)
        descs = (md.fixed_line, md.mobile, md.toll_free, md.premium_rate, md.shared_cost, md.personal_number,
                 md.voip, md.pager, md.uan, md.voicemail)  # fmt: skip
        types = [d.national_number_pattern for d in descs if d is not None and d.national_number_pattern]
        prefix = md.national_prefix_for_parsing or md.national_prefix
        rules.append((re.compile("(?:" + ")|(?:".join(types) + ")"), re.compile(prefix) if prefix else None,
                      str(md.country_code)))
    return rules


@functools.lru_cache(maxsize=4096)
def possible_international(digits: str) -> bool:
    """libphonenumber says "+<digits>" has a country code and a possible length for it."""
    import phonenumbers

    try:
        return phonenumbers.is_possible_number(phonenumbers.parse("+" + digits, None))
    except phonenumbers.NumberParseException:
        return False


_MY_NUMBER = re.compile(r"my\s+(?:([a-z]{1,12})\s+)?number\b[^0-9\]]{0,12}\Z")
_NOT_PHONE_NUMBERS = _NOT_PII_LABELS | frozenset({
    "account", "card", "credit", "debit", "customer", "member", "membership", "policy", "case", "ticket", "routing",
    "confirmation", "booking", "reservation", "serial", "license", "passport", "tax", "social", "security", "ssn",
    "id", "bank", "iban", "tracking", "zip", "postcode", "postal", "plz", "cep",
})  # fmt: skip


def _my_number_before(text: str, start: int) -> bool:
    """ "my number is ...", "my CN number: ..." (but not "my order number ...")."""
    offset = max(0, start - 40)
    m = _MY_NUMBER.search(_lowercase(text[offset:start]))
    return m is not None and not _word_before(text, offset + m.start()) and m.group(1) not in _NOT_PHONE_NUMBERS
