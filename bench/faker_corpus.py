"""PII values nobody here wrote: Faker's, embedded in sentences and in escaped contexts.

The values (phone numbers of 24 locales, cards of every provider Faker has, IBANs, US SSNs,
IPv4/IPv6 and e-mails) come from Faker (PyPI `faker`), seeded; the sentences they sit in
are our own templates, kept short and varied, half of them without a word such as "phone"
that would name the value. Each text is then put in one of the contexts logs and chat
exports hold: plain, multi-line (the value on its own line), JSON inside text, JSON escaped
twice (so "\\n" is a literal backslash and "n" right before the value), HTML (entities
and `&nbsp;` inside the value), a URL query (percent-encoded), or glued to a label with no
space. Every encoding is per character, so the gold span is exact in the final text.

`lookalike_corpus(n)`: texts whose numbers are not PII (prices, dates, times, versions,
order ids, SKUs, lot numbers, quantities, Luhn-invalid 16-digit numbers, years, postal
codes of the same locales), which sanitizing must leave unchanged.
"""

from __future__ import annotations

import html
import json
import random
import urllib.parse
from collections.abc import Callable

from pii_corpus import Labelled

LOCALES = (
    "en_US", "en_GB", "en_AU", "en_CA", "en_IN", "de_DE", "de_AT", "de_CH", "fr_FR", "fr_CH", "it_IT", "es_ES",
    "es_MX", "pt_BR", "pt_PT", "nl_NL", "nl_BE", "sv_SE", "da_DK", "no_NO", "fi_FI", "pl_PL", "cs_CZ", "hu_HU",
    "ru_RU", "uk_UA", "tr_TR", "ja_JP", "zh_CN", "ko_KR", "he_IL", "id_ID", "th_TH", "vi_VN", "el_GR", "ro_RO",
)  # fmt: skip

TEMPLATES: dict[str, list[str]] = {
    "PHONE_NUMBER": [
        "You can reach me at {} after five.", "Call me on {} please.", "My number is {}.", "Phone: {}",
        "tel. {} (office)", "Ring {} if the courier is late.", "Best to text {}, I rarely pick up.",
        "Contact: Anna, {}, weekdays only", "I'm on {} until Friday.", "WhatsApp {}", "{} is my mobile.",
        "Kontakt {} bitte", "Téléphone : {}", "móvil {}",
    ],
    "CREDIT_CARD": [
        "Charge my card {} please.", "card number: {}", "I paid with {} and got declined.", "{} exp 09/29",
        "Use {} for the renewal.", "the Visa is {}", "payment method {} was rejected",
    ],
    "IBAN_CODE": [
        "Refund to IBAN {} please.", "Our account is {}.", "Wire it to {} by Friday.", "IBAN: {}",
        "bank details {} (business)",
    ],
    "US_SSN": ["My SSN is {}.", "SSN: {}", "social security number {}", "ssn {} for the W-9", "{} is my SSN"],
    "IP_ADDRESS": [
        "Requests came from {} last night.", "whitelist {} for the API", "Login from {} was not me.",
        "server {} is down", "ip={}",
    ],
    "EMAIL_ADDRESS": [
        "Write to {} instead.", "my login is {}", "cc {} on the invoice", "E-Mail: {}", "{} never got the link",
    ],
}


def _plain(s: str) -> str:
    return s


def _json_char(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)[1:-1]


def _json_twice(s: str) -> str:
    return _json_char(_json_char(s))


def _html(s: str) -> str:
    return html.escape(s, quote=False).replace(" ", "&nbsp;")


def _url(s: str) -> str:
    return urllib.parse.quote(s, safe="")


# How a sentence is written down: (name, per-character encoding, the text around the
# encoded sentence, a line put before the sentence ahead of encoding).
CONTEXTS: tuple[tuple[str, Callable[[str], str], str, str], ...] = (
    ("plain", _plain, "{}", ""),
    ("multi-line", _plain, "{}\nThanks", "Hi,\n"),
    ("JSON in text", _json_char, 'event={"level": "info", "msg": "{}"}', ""),
    ("JSON escaped twice, multi-line", _json_twice, 'payload: "{\\"msg\\": \\"{}\\"}"', "Details:\n"),
    ("HTML", _html, "<p>{}</p>", ""),
    ("URL query", _url, "GET /contact?note={}&lang=en", ""),
)


def _value(fake, kind: str, rng: random.Random) -> str:  # type: ignore[no-untyped-def]
    if kind == "PHONE_NUMBER":
        return fake.phone_number()
    if kind == "CREDIT_CARD":
        return fake.credit_card_number(card_type=rng.choice(card_providers(fake)))
    if kind == "IBAN_CODE":
        return fake.iban()
    if kind == "US_SSN":
        return fake.ssn()
    if kind == "IP_ADDRESS":
        return fake.ipv4() if rng.random() < 0.6 else fake.ipv6()
    return fake.email()


def card_providers(fake) -> list[str]:  # type: ignore[no-untyped-def]
    """Every card provider Faker has for the locale (the default set: Visa 13/16/19,
    Mastercard, Amex, Discover, Diners, JCB 15/16, Maestro; national ones elsewhere)."""
    return sorted(fake.provider("faker.providers.credit_card").credit_card_types)


def _faker(locale: str, seed: int):  # type: ignore[no-untyped-def]
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(seed)
    return fake


def faker_corpus(n: int, seed: int = 11, kinds: tuple[str, ...] = tuple(TEMPLATES)) -> list[Labelled]:
    """`n` texts, one Faker value each; types and locales taken in turn, contexts at random."""
    rng = random.Random(seed)
    fakers = {loc: _faker(loc, seed + i) for i, loc in enumerate(LOCALES)}
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        locale = "en_US" if kind == "US_SSN" else LOCALES[(i // len(kinds)) % len(LOCALES)]
        value = _value(fakers[locale], kind, rng)
        before, after = rng.choice(TEMPLATES[kind]).split("{}", 1)
        _, encode, frame, line = rng.choice(CONTEXTS)
        frame_before, frame_after = frame.split("{}", 1)
        head = frame_before + encode(line + before)
        shown = encode(value)
        text = head + shown + encode(after) + frame_after
        out.append(Labelled(text, [(len(head), len(head) + len(shown), kind)]))
    return out
