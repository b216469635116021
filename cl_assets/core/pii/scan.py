"""The engine: run the detectors where they can match, resolve overlaps, rescan until stable."""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from cl_assets.core.pii.addresses import _IPV4, _IPV6, _ipv4, _ipv6, _ipv6_possible
from cl_assets.core.pii.cards import _CARD, _card, _card_resume
from cl_assets.core.pii.context import _glued_to_placeholder, _lowercase
from cl_assets.core.pii.credentials import (
    _ASSIGNMENT,
    _BEARER,
    _PEM,
    _SECRET_TOKEN,
    _assignment,
    _bearer,
    _pem,
    _token,
)
from cl_assets.core.pii.emails import _EMAIL, _email
from cl_assets.core.pii.ibans import _IBAN, _iban
from cl_assets.core.pii.model import _RANK, Candidate, Span
from cl_assets.core.pii.phones import (
    _PHONE_BARE,
    _PHONE_INTL,
    _PHONE_NANP,
    _PHONE_NATL,
    _phone_in_context,
    _phone_intl,
    _phone_nanp,
    _phone_natl,
)
from cl_assets.core.pii.ssns import _SSN, _SSN_BARE, _ssn, _ssn_in_context
from cl_assets.core.pii.view import detection_view


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


_DETECTORS: tuple[_Detector, ...] = (
    _Detector("SECRET", _SECRET_TOKEN, _token, needs=_may_hold_token),
    _Detector("SECRET", _PEM, _pem, needs=lambda text: "-----BEGIN " in text),
    _Detector("SECRET", _BEARER, _bearer, needs=_may_name_a_credential),
    _Detector("SECRET", _ASSIGNMENT, _assignment, keywords=_names_a_secret, lowercase=True),
    _Detector("EMAIL", _EMAIL, _email, needs=lambda text: "@" in text),
    _Detector("IBAN", _IBAN, _iban, text_digits=2),  # the check digits
    _Detector("IP_ADDRESS", _IPV6, _ipv6, needs=_ipv6_possible, text_digits=1),  # see `_ipv6`
    _Detector("CREDIT_CARD", _CARD, _card, min_digits=12, resume=_card_resume),
    _Detector("SSN", _SSN, _ssn, min_digits=9),
    _Detector("SSN", _SSN_BARE, _ssn_in_context, min_digits=9, keywords=_names_an_ssn),
    _Detector("IP_ADDRESS", _IPV4, _ipv4, min_digits=4, needs=lambda run: run.count(".") >= 3),
    _Detector("PHONE", _PHONE_NANP, _phone_nanp, min_digits=10),
    _Detector("PHONE", _PHONE_INTL, _phone_intl, min_digits=8, needs=lambda run: "+" in run),
    _Detector("PHONE", _PHONE_NATL, _phone_natl, min_digits=9, needs=_may_start_national),
    _Detector("PHONE", _PHONE_BARE, _phone_in_context, min_digits=7),
)
_TEXT_DETECTORS = tuple(d for d in _DETECTORS if not d.min_digits)
_NUMERIC_DETECTORS = tuple(d for d in _DETECTORS if d.min_digits)

# A maximal run of digits and separators, at least 7 characters, starting with a digit,
# "+" or "(" that does not continue a word. Every numeric detector's match (bar a phone
# extension's letters) lies inside one, so those detectors only run there: most texts
# have no such run at all.
_ISLAND = re.compile(r"[+(0-9](?<![0-9_][+(0-9])[-0-9(). /+]{6,}")
_ISLAND_SEPARATORS = b" -.()/+"
_ISLAND_MIN_DIGITS = 4
_ASCII_DIGITS = b"0123456789"
_EXTENSION_ROOM = 24  # characters after a run a match may still look at ("ext. 123456")


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
    view, back = detection_view(text)
    found = _find_in_view(view)
    if back is None:
        return found
    return [(*back(s, e), kind) for s, e, kind in found]


def _find_in_view(text: str) -> list[Candidate]:
    """`_find` on the detection view (see `view.py`)."""
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
