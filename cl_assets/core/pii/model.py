"""The public types of the sanitizer and the order in which overlapping types win."""

from __future__ import annotations

from dataclasses import dataclass, field

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
Candidate = tuple[int, int, str]  # start, end, type
