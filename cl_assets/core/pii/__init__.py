"""PII sanitizer: typed placeholders for personal data and secrets, before anything is stored.

Pure and I/O-free. Modules: `model` (the public types, overlap ranks), `view` (the text as
the detectors see it: escapes decoded, unicode separators folded), `context` (checks the
detectors share: labels, keywords, dates, placeholders), one module per type (`emails`,
`phones`, `ssns`, `cards`, `addresses`, `ibans`, `credentials`) and `scan` (where each
detector runs, overlap resolution, rescans).

Every detector is one compiled pattern plus a cheap validator (checksum, range, context),
listed once in `scan._DETECTORS`. Patterns use only bounded, possessive or unambiguous
repetition, so a scan is linear in the length of the text; a detector whose match can
over-reach (a card followed by more digit groups, an IBAN followed by words) shrinks it in
its validator and the scan resumes from there. For speed every pattern starts with a
literal or a single character class (boundaries are checked by a lookbehind placed after
that first character), which lets `re` skip ahead in C; the numeric detectors only run
inside runs of digits and separators, and a detector runs at all only if the text holds
what every match of it needs (a literal, or enough digits), which most texts do not.

Choices worth knowing (each is tested):
- Detection runs on a view where "\\n", "\\u00a0", "&nbsp;", "&#43;", "%2B" and the like
  are decoded and unicode dashes, dots and spaces are ASCII; findings map back to whole
  escapes, so "Phone:\\n760-819-2468" loses its number and keeps its "\\n".
- Checksummed types are flagged wherever they appear: cards (12-19 digits, Luhn, an
  issuer's range), IBANs (mod-97 and the country's length; an unspaced code off the
  registry by its checksum alone), IPv4/IPv6 (value ranges, `ipaddress`).
- Phones: NANP, "+<country>" (E.164: 8-15 digits), "00<country>" (a country code and a
  possible length for it, by `phonenumbers`), trunk-0 national shapes, and any 7-15
  digit number with a phone word before or after it (in 20+ languages). Without a word,
  a number shaped like a phone (8-12 digits grouped, 10-12 unseparated, a US local
  "668 5702") counts if libphonenumber's metadata calls it valid in one of
  `phones.REGIONS`.
- Shapes common in ordinary text need more: a bare 9-digit number is an SSN only right
  after "SSN"/"social security"; ZIP+4 shapes (12345-6789) are never SSNs or phones; bare
  "::" and short compressed IPv6 such as "1::2" (slices, C++, Haskell) are not addresses.
- A number directly labelled as something else ("ISBN", "order", "lot", "invoice", "SKU",
  "IMEI", "version"/"v", "zip", ...) is not PII; dates and times are never phones.
- On overlap the more specific type wins (SECRET > EMAIL > IBAN > CREDIT_CARD > SSN >
  IP_ADDRESS > PHONE), then the longer span.
- `sanitize` is idempotent: a value glued to a placeholder stays blocked as it was by
  the value the placeholder replaced, and where a finding may have hidden more (see
  `scan._find`) the text is scanned again with the findings replaced.
- Digits are ASCII only: other scripts' digits or a zero-width character inside a number
  split it. Names and street addresses need an NER model, which is not shipped.
"""

from __future__ import annotations

from cl_assets.core.pii.model import PII_TYPES, Finding, Sanitized
from cl_assets.core.pii.scan import _find

__all__ = ["PII_TYPES", "Finding", "Sanitized", "find_pii", "sanitize"]


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
