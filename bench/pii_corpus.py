"""Labelled PII corpora for the ingestion benchmark.

- `synth_dataset()`: Presidio's public synthetic dataset (`../shared/data/synth_dataset_v2.json`,
  microsoft/presidio-research, MIT): 1,500 texts, but only 16 SSNs, 21 IBANs and 14 IPs.
- `recognizer_vectors()`: the positive and negative examples of Presidio's own pattern
  recognizer tests (`presidio_recognizer_vectors.json`, microsoft/presidio, MIT): Presidio's
  home ground. Only the example's own entity type is labelled, so only that type is scored.
- `generated_corpus(n, seed)`: chat turns made here from templates, seeded, with exact
  character offsets. About a third of the turns carry PII, spread so that the rare types
  (SSN, IBAN, IP, secrets) get hundreds of examples, and many turns carry look-alikes that are
  not PII (order and tracking numbers, ISBNs, versions, dates, ZIP+4, prices, checksum-invalid
  cards and IBANs) for the false-positive count.

  Why not presidio-evaluator's sentence faker: its templates hold 3 IBAN, 2 SSN and 2 IP
  slots out of 210, so the rare types stay rare, and it pulls pandas, scikit-learn, plotly
  and spaCy (whose tokenizer helpers load `en_core_web_sm`, a model download) into the bench
  environment for what is a template filler.

Entity type names are Presidio's (`EMAIL_ADDRESS`, `PHONE_NUMBER`, `US_SSN`, `CREDIT_CARD`,
`IP_ADDRESS`, `IBAN_CODE`) plus `SECRET` (API keys), which Presidio has no recognizer for.
"""

from __future__ import annotations

import ipaddress
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

from common import SHARED_DATA

SHARED_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE")
ALL_TYPES = (*SHARED_TYPES, "SECRET")
CL_TO_PRESIDIO = {
    "EMAIL": "EMAIL_ADDRESS",
    "PHONE": "PHONE_NUMBER",
    "SSN": "US_SSN",
    "CREDIT_CARD": "CREDIT_CARD",
    "IP_ADDRESS": "IP_ADDRESS",
    "IBAN": "IBAN_CODE",
    "SECRET": "SECRET",
}

Span = tuple[int, int, str]


@dataclass
class Labelled:
    text: str
    spans: list[Span] = field(default_factory=list)
    scored: tuple[str, ...] = ALL_TYPES  # types whose predictions are judged on this text


# --------------------------------------------------------------------------- public data


def synth_dataset(path: Path | None = None) -> list[Labelled]:
    path = path or SHARED_DATA / "synth_dataset_v2.json"
    out = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        spans = [(s["start_position"], s["end_position"], s["entity_type"]) for s in row["spans"]]
        out.append(Labelled(row["full_text"], [s for s in spans if s[2] in ALL_TYPES]))
    return out


def recognizer_vectors(path: Path | None = None) -> list[Labelled]:
    path = path or SHARED_DATA / "presidio_recognizer_vectors.json"
    out = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        kind = row["entity_type"]
        if kind not in SHARED_TYPES:
            continue
        spans = [(s, e, kind) for s, e in row["spans"]]
        if not spans and row["expected_count"] == 1:  # a few vectors give the count only: the whole text
            spans = [(0, len(row["text"]), kind)]
        if len(spans) != row["expected_count"]:
            continue
        out.append(Labelled(row["text"], spans, scored=(kind,)))
    return out


# --------------------------------------------------------------------------- values


FIRST = ["anna", "ben", "carla", "dmitri", "emeka", "fatima", "george", "hana", "ivan", "julia", "kofi", "lena",
         "mateo", "nina", "omar", "priya", "quinn", "rosa", "sven", "tomoko", "uma", "victor", "wei", "yusuf"]
LAST = ["smith", "garcia", "muller", "rossi", "novak", "kim", "okafor", "silva", "tanaka", "dubois", "jensen",
        "kowalski", "haddad", "nguyen", "oconnor", "petrov", "schmidt", "weber"]
DOMAINS = ["gmail.com", "outlook.com", "example.org", "harborpine.com", "mail.de", "yahoo.co.uk", "proton.me",
           "uni-heidelberg.de", "acme-corp.io"]
PRODUCTS = ["rolled oats", "saffron threads", "smoked paprika", "olive oil", "espresso beans", "basmati rice",
            "maple syrup", "sea salt", "black tea", "dried figs", "almond flour", "chili flakes"]
CITIES = ["Dayton", "Tacoma", "Boise", "Fresno", "Leeds", "Lyon", "Graz", "Porto", "Turku", "Utrecht"]
IBAN_BBAN = {  # country: (BBAN shape: 'n' digit, 'a' upper letter, 'c' either)
    "DE": "n" * 18, "GB": "aaaa" + "n" * 14, "FR": "n" * 10 + "c" * 11 + "nn", "NL": "aaaa" + "n" * 10,
    "ES": "n" * 20, "IT": "a" + "n" * 10 + "c" * 12, "BE": "n" * 12, "CH": "n" * 5 + "c" * 12, "AT": "n" * 16,
    "PL": "n" * 24, "SE": "n" * 20, "IE": "aaaa" + "n" * 14,
}


def _luhn_digit(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card_number(rng: random.Random, valid: bool = True) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                 ("6011", 16), ("65", 16), ("4", 13), ("3528", 16)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    check = _luhn_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    number = body + check
    style = rng.random()
    if style < 0.45 or length == 13:
        return number
    sep = " " if style < 0.8 else "-"
    if length == 15:
        return sep.join([number[:4], number[4:10], number[10:]])
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


def iban(rng: random.Random, valid: bool = True, grouped: bool | None = None) -> str:
    country, shape = rng.choice(list(IBAN_BBAN.items()))
    pools = {"n": string.digits, "a": string.ascii_uppercase, "c": string.ascii_uppercase + string.digits}
    bban = "".join(rng.choice(pools[c]) for c in shape)
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    check = 98 - int(numeric) % 97
    if not valid:
        check = rng.choice([c for c in range(2, 99) if c != check])
    value = f"{country}{check:02d}{bban}"
    if grouped if grouped is not None else rng.random() < 0.5:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    sep = rng.choice(["-", "-", "-", " ", "."]) if rng.random() < 0.8 else ""
    return f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"


def phone(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice([
        f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}", f"+1-{a}-{b}-{c:04d}",
        f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}", f"+49 30 {rng.randint(100000, 9999999)}",
        f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
        f"020 7946 {rng.randint(1000, 9999)}", f"+91 {rng.randint(70000, 99999)} {rng.randint(10000, 99999)}",
    ])


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}", f"{first}_{last}",
                        f"{last}+orders"])
    return f"{local}@{rng.choice(DOMAINS)}"


def ip(rng: random.Random) -> str:
    if rng.random() < 0.75:
        return str(ipaddress.IPv4Address(rng.randint(0x01000000, 0xDFFFFFFF)))
    # Half with a run of zero groups, so the compressed form has "::".
    bits = (rng.getrandbits(64) << 64) | rng.getrandbits(16) if rng.random() < 0.5 else rng.getrandbits(128)
    value = ipaddress.IPv6Address(bits)
    return value.compressed if rng.random() < 0.6 else value.exploded


def secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits

    def pick(n: int, pool: str = alnum) -> str:
        return "".join(rng.choice(pool) for _ in range(n))

    return rng.choice([
        f"sk-{pick(40)}", f"sk-proj-{pick(48)}", f"ghp_{pick(36)}", f"AKIA{pick(16, string.ascii_uppercase + string.digits)}",
        f"xoxb-{rng.randint(10**11, 10**12 - 1)}-{pick(24)}", f"hf_{pick(34)}", f"sk_live_{pick(24)}",
    ])


VALUE = {"EMAIL_ADDRESS": email, "PHONE_NUMBER": phone, "US_SSN": ssn, "CREDIT_CARD": card_number,
         "IP_ADDRESS": ip, "IBAN_CODE": iban, "SECRET": secret}

# Sentences with one PII slot. `{}` is the value; the other fields are filled with harmless words.
PII_TEMPLATES = {
    "EMAIL_ADDRESS": ["You can reach me at {} if anything changes.", "Please send the invoice to {} instead.",
                      "My login is {} but the reset link never arrives.", "cc {} on the shipping confirmation"],
    "PHONE_NUMBER": ["Call me on {} after 5 pm.", "My phone number is {}.", "The courier can ring {} at the gate.",
                     "mobile: {}", "Text {} when the {product} is back in stock."],
    "US_SSN": ["My SSN is {} for the tax form.", "social security number {}", "SSN: {}",
               "For the W-9 my social security no. is {}."],
    "CREDIT_CARD": ["Charge it to my card {} please.", "The card ending wrong was {}, use that one.",
                    "payment: {} exp 09/28", "I paid with {} but it shows declined."],
    "IP_ADDRESS": ["The dashboard blocks me from {}.", "Our firewall logs show requests from {}.",
                   "whitelist {} for the API", "Login attempt from {} was not me."],
    "IBAN_CODE": ["Refund it to IBAN {} please.", "Our bank account is {} (business).", "IBAN: {}",
                  "Wire the deposit to {} by Friday."],
    "SECRET": ["Here is the API key we use: {}", "token={}", "I pasted {} into the config, is that right?",
               "export OPENAI_API_KEY={}"],
}
# How often each type is picked for a PII slot: rare types over-represented on purpose.
PII_WEIGHTS = {"EMAIL_ADDRESS": 3, "PHONE_NUMBER": 3, "US_SSN": 2, "CREDIT_CARD": 2, "IP_ADDRESS": 2,
               "IBAN_CODE": 2, "SECRET": 1}


def _negatives(rng: random.Random) -> str:
    """A sentence with numbers that are not PII."""
    isbn = f"978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-{rng.randint(0, 9)}"
    return rng.choice([
        f"Where is order {rng.randint(100000, 999999)}?",
        f"Order #{rng.randint(1000000, 99999999)} still says processing.",
        f"The tracking number is 1Z{rng.randint(10**15, 10**16 - 1)}.",
        f"The book is ISBN {isbn}.",
        f"We upgraded to version {rng.randint(1, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}.{rng.randint(0, 99)} yesterday.",
        f"It was delivered on {rng.randint(2019, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}.",
        f"Ship it to ZIP {rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}.",
        f"The total was ${rng.randint(1, 9999):,}.{rng.randint(0, 99):02d} for {rng.randint(2, 400)} cases.",
        f"Lot {rng.randint(10, 9999)} of {rng.choice(PRODUCTS)} arrives on {rng.randint(1, 28)}/{rng.randint(1, 12)}/{rng.randint(2024, 2026)}.",
        f"The reference on the pallet reads {card_number(rng, valid=False).replace(' ', '').replace('-', '')}.",
        f"Is account {iban(rng, valid=False, grouped=False)} the right format? It was rejected.",
        f"Item {rng.randint(100000000, 999999999)} is out of stock.",
        f"We sold {rng.randint(1000, 99999):,} units in {rng.randint(2015, 2025)}.",
    ])


def _plain(rng: random.Random) -> str:
    product, city = rng.choice(PRODUCTS), rng.choice(CITIES)
    return rng.choice([
        f"Do you still stock {product}?", f"How long does shipping to {city} take?",
        f"Sure! The {product} ships from our {city} warehouse within two days.",
        f"What is the shelf life of your {product}?", f"Can I combine {product} and {rng.choice(PRODUCTS)} in one order?",
        "Thanks, that answers it. Have a good day.", f"Our {product} is organic and packed in recyclable bags.",
        f"Returns are accepted within 14 days if the {product} is unopened.",
        f"Support is open Monday to Saturday; the {city} team answers calls until 4 pm.",
        f"I would like {rng.randint(2, 40)} cases of {product}, is there a discount?",
    ])


def generated_text(rng: random.Random, pii_share: float = 0.35, negative_share: float = 0.3) -> Labelled:
    """One chat turn: 1-3 sentences; with PII in about `pii_share` of turns."""
    pieces: list[tuple[str, str | None]] = []  # (sentence with {} or plain text, type of the slot)
    for _ in range(rng.randint(1, 3)):
        pieces.append((_plain(rng), None))
    if rng.random() < negative_share:
        pieces.insert(rng.randrange(len(pieces) + 1), (_negatives(rng), None))
    if rng.random() < pii_share:
        for _ in range(1 if rng.random() < 0.8 else 2):
            kind = rng.choices(list(PII_WEIGHTS), weights=list(PII_WEIGHTS.values()))[0]
            template = rng.choice(PII_TEMPLATES[kind]).replace("{product}", rng.choice(PRODUCTS))
            pieces.insert(rng.randrange(len(pieces) + 1), (template, kind))
    text, spans = "", []
    for sentence, kind in pieces:
        if text:
            text += " "
        if kind is None:
            text += sentence
            continue
        value = VALUE[kind](rng)
        before, after = sentence.split("{}", 1)
        start = len(text) + len(before)
        spans.append((start, start + len(value), kind))
        text += before + value + after
    return Labelled(text, spans)


def generated_corpus(n: int, seed: int = 7) -> list[Labelled]:
    rng = random.Random(seed)
    return [generated_text(rng) for _ in range(n)]


# --------------------------------------------------------------------------- scoring


@dataclass
class TypeScore:
    gold: int = 0
    found: int = 0  # gold spans overlapped by a prediction of the same type
    hidden: int = 0  # gold spans overlapped by a prediction of any type (the value is masked anyway)
    predicted: int = 0
    false_positives: int = 0  # predictions overlapping no gold span of their type

    def recall(self) -> float:
        return self.found / self.gold if self.gold else float("nan")

    def hidden_share(self) -> float:
        return self.hidden / self.gold if self.gold else float("nan")


def score(corpus: list[Labelled], predictions: list[list[Span]]) -> dict[str, TypeScore]:
    scores = {kind: TypeScore() for kind in ALL_TYPES}
    for item, predicted in zip(corpus, predictions, strict=True):
        for s, e, kind in item.spans:
            if kind not in item.scored:
                continue
            t = scores[kind]
            t.gold += 1
            overlapping = [p for p in predicted if p[0] < e and s < p[1]]
            t.found += any(p[2] == kind for p in overlapping)
            t.hidden += bool(overlapping)
        for s, e, kind in predicted:
            if kind not in item.scored or kind not in scores:
                continue
            t = scores[kind]
            t.predicted += 1
            if not any(g[2] == kind and g[0] < e and s < g[1] for g in item.spans):
                t.false_positives += 1
    return scores


def micro_recall(scores: dict[str, TypeScore], types: tuple[str, ...] = SHARED_TYPES) -> float:
    gold = sum(scores[t].gold for t in types)
    return sum(scores[t].found for t in types) / gold if gold else float("nan")
