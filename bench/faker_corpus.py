"""PII values nobody here wrote: Faker's, embedded in sentences and in escaped contexts.

The values (phone numbers of 37 locales, cards of every provider Faker has (the default
set and the Russian, Portuguese, Ukrainian, Chinese and Iranian ones), IBANs, US SSNs,
IPv4/IPv6 and e-mails) come from Faker (PyPI `faker`), seeded; the sentences they sit in
are our own templates, short and varied; most phone sentences name the number ("call",
"Telefon", "WhatsApp", ...), one ("I'm on ... until Friday") does not. Each text is then
put in one of the contexts logs and chat exports hold: plain, multi-line (the value on its
own line), JSON inside text, JSON escaped twice (so "\\n" is a literal backslash and "n"
right before the value), HTML (entities and `&nbsp;` inside the value), or a URL query
(percent-encoded). Every encoding is per character, so the gold span is exact in the final
text.

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

from pii_corpus import Labelled, _luhn_digit

LOCALES = (
    "en_US", "en_GB", "en_AU", "en_CA", "en_IN", "de_DE", "de_AT", "de_CH", "fr_FR", "fr_CH", "it_IT", "es_ES",
    "es_MX", "pt_BR", "pt_PT", "nl_NL", "nl_BE", "sv_SE", "da_DK", "no_NO", "fi_FI", "pl_PL", "cs_CZ", "hu_HU",
    "ru_RU", "uk_UA", "tr_TR", "ja_JP", "zh_CN", "ko_KR", "he_IL", "id_ID", "th_TH", "vi_VN", "el_GR", "ro_RO",
    "fa_IR",
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
    ("URL query", _url, "GET /feedback?note={}&lang=en", ""),
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


# --------------------------------------------------------------------------- look-alikes

LOOKALIKE_TEMPLATES: dict[str, list[str]] = {
    "price": ["The total was {}.", "It costs {} incl. VAT", "Refund of {} issued", "{} per case"],
    "date": ["Delivered on {}.", "Your appointment: {}", "Invoice dated {}", "{} was the last order"],
    "time": ["See you at {}.", "Opening hours {}", "The run finished at {}", "Pickup {} sharp"],
    "version": ["Upgrade to version {}.", "running v{} now", "Release {} fixed it", "app build {}"],
    "order id": ["Where is order {}?", "Order #{} still says processing.", "order no. {} shipped", "Ref {}"],
    "SKU": ["SKU {} is out of stock.", "item {} back in stock", "Part {} fits?", "art. {}"],
    "lot number": ["Lot {} arrives Monday.", "batch {} was recalled", "LOT: {}", "from lot {} only"],
    "quantity": ["I would like {} please.", "We sold {} last week.", "Send {}", "{} in the warehouse"],
    "Luhn-invalid 16 digits": ["The reference on the pallet reads {}.", "card {} was refused as invalid",
                               "code {} did not scan"],
    "year": ["Back in {} we opened.", "the {} harvest", "Since {}", "{} to {} were good years"],
    "postal code": ["Ship to ZIP {}.", "Postcode: {}", "PLZ {} Berlin", "my area is {}, is it covered?"],
}


def _luhn_invalid(rng: random.Random) -> str:
    """16 digits in a card's range whose last digit is not the Luhn check digit."""
    body = rng.choice("3456") + "".join(rng.choice("0123456789") for _ in range(14))
    number = body + str((int(_luhn_digit(body)) + rng.randint(1, 9)) % 10)
    return number if rng.random() < 0.5 else " ".join(number[i : i + 4] for i in range(0, 16, 4))


def _lookalike(fake, kind: str, rng: random.Random) -> str:  # type: ignore[no-untyped-def]
    if kind == "price":
        return fake.pricetag()
    if kind == "date":
        return fake.date(pattern=rng.choice(["%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%d/%m/%Y", "%d %B %Y"]))
    if kind == "time":
        return fake.time(pattern=rng.choice(["%H:%M", "%H:%M:%S", "%I:%M %p"])) + (
            f"-{fake.time(pattern='%H:%M')}" if rng.random() < 0.3 else "")
    if kind == "version":
        return ".".join(str(rng.randint(0, 20)) for _ in range(rng.randint(2, 4)))
    if kind == "order id":
        return rng.choice([str(rng.randint(10**5, 10**10)), f"ORD-{fake.year()}-{rng.randint(1, 99999):05d}",
                           fake.bothify("??-########").upper()])
    if kind == "SKU":
        return rng.choice([fake.bothify("??-???-###").upper(), fake.ean13(), fake.bothify("###-####-##")])
    if kind == "lot number":
        return rng.choice(
            [str(rng.randint(1, 99999)), fake.bothify("L##-####"), f"{fake.year()}/{rng.randint(1, 999):03d}"]
        )
    if kind == "quantity":
        return rng.choice([
            f"{rng.randint(2, 500)} x {rng.choice([250, 500, 1000])} g", f"{rng.randint(1, 99999):,} units",
            f"{rng.randint(2, 40)} cases", f"{rng.randint(1, 20)} kg",
        ])
    if kind == "Luhn-invalid 16 digits":
        return _luhn_invalid(rng)
    if kind == "year":
        return fake.year()
    return fake.postcode()


def lookalike_corpus(n: int, seed: int = 13) -> list[tuple[str, str]]:
    """`n` (category, text) pairs with a value that is not PII; values from Faker where it
    has a generator (prices, dates, times, EAN-13s, postcodes of the 37 locales)."""
    rng = random.Random(seed)
    fakers = {loc: _faker(loc, seed + i) for i, loc in enumerate(LOCALES)}
    kinds = list(LOOKALIKE_TEMPLATES)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        fake = fakers[LOCALES[(i // len(kinds)) % len(LOCALES)]]
        template = rng.choice(LOOKALIKE_TEMPLATES[kind])
        text = template.replace("{}", _lookalike(fake, kind, rng), 1).replace("{}", _lookalike(fake, kind, rng))
        _, encode, frame, line = rng.choice(CONTEXTS)
        out.append((kind, frame.replace("{}", encode(line + text))))
    return out
