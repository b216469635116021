"""Checks shared by the detectors: labels, keywords said before, dates, placeholders, word edges."""

from __future__ import annotations

import re

from cl_assets.core.pii.model import PII_TYPES

# A number right after one of these labels names a thing, not a person.
_NOT_PII_LABELS = frozenset({
    "isbn", "issn", "ean", "upc", "gtin", "asin", "imei", "iccid", "meid", "order", "ord", "lot", "batch", "invoice",
    "inv", "sku", "item", "part", "tracking", "ref", "reference", "po", "version", "ver", "v", "build", "release",
    "rev", "revision", "firmware", "fw", "model", "patch", "art", "article", "artikel", "code",
})  # fmt: skip
_LABEL_NUMBER_WORDS = frozenset(("no", "nr", "num", "number", "id"))
_LABEL_SEPARATORS = " \t\r\n#:."
_WORD = re.compile(r"[^\W_]+")


def _labelled_not_pii(text: str, start: int, labels: frozenset[str] = _NOT_PII_LABELS) -> bool:
    """True if the candidate at `start` directly follows a non-PII label such as "ISBN",
    "Order No." or "version" (or another of `labels`): those numbers identify things."""
    head = text[max(0, start - 32) : start].rstrip(_LABEL_SEPARATORS)
    if not head or not head[-1].isalnum():
        return False
    words = _WORD.findall(head.lower())  # "<p>Ref", "(order": the word, not the markup
    word = words[-1]
    if len(words) > 1 and (word in _LABEL_NUMBER_WORDS or (word.isdigit() and words[-2] in ("isbn", "issn"))):
        word = words[-2]  # "order no. 123", "item number 5", "ISBN-13: ..."
    if word.startswith(("isbn", "issn")):  # "isbn10"
        word = word[:4]
    return word in labels


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
    r"(?:[0-3]?[0-9](?P<s1>[-./])[0-3]?[0-9](?P=s1)(?:19|20|25)[0-9]{2}"  # 15.03.2024, 03/15/2024
    r"|(?:19|20|25)[0-9]{2}(?P<s2>[-./])[01]?[0-9](?P=s2)[0-3]?[0-9])(?![0-9])"  # 2024-03-15
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
    """Digits in a candidate made of ASCII digits and the separators " -.()+/"."""
    return len(s.encode().translate(None, b" -.()+/"))



_UPPER_RUN = re.compile(r"[A-Z]+")


def _lowercase(text: str) -> str:
    """The text lowercased with its offsets kept: `str.lower` lengthens a few characters
    (e.g. "İ"), in which case only ASCII letters are lowered, which is all the keyword
    patterns need."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return _UPPER_RUN.sub(lambda m: m.group().lower(), text)
