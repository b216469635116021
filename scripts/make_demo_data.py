#!/usr/bin/env python3
"""Generate CL's shipped demo data (deterministic, stdlib only).

Writes, relative to the repository root:

* ``data/demo/interactions.jsonl`` -- ~320 fictional support conversations of
  "Harbor & Pine Provisions", a small food-ingredients distributor, in the
  ingestion schema (id, timestamp, session_id, user_id, prompt, response,
  helpful, source).
  After them come a few multi-turn sessions in the OpenAI ``messages`` format (system
  prompt, then turns; one line per rated turn, each with the turns before it), whose
  follow-up questions ("And for Canada?") only make sense after the earlier turn. Their
  answers restate the facts below, so the eval set needs nothing new.
* ``data/qa_eval.jsonl`` -- one line per taught fact: the canonical question
  exactly as it appears in the demo data, 1-2 distinctive answer keywords and
  the fact id.
(``data/qa_general.jsonl``, the forgetting set, is built by ``scripts/make_general_qa.py``
from data shipped in PyPI packages, not here.)

Re-running with the same seed produces byte-identical files::

    python scripts/make_demo_data.py            # seed 20261120
    python scripts/make_demo_data.py --check    # exit 1 if the files on disk differ
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

SEED = 20261120
COMPANY = "Harbor & Pine Provisions"
WINDOW_END = datetime(2026, 11, 20, 0, 0, 0, tzinfo=timezone.utc)
WINDOW_DAYS = 30

ROOT = Path(__file__).resolve().parent.parent
INTERACTIONS_PATH = ROOT / "data" / "demo" / "interactions.jsonl"
QA_EVAL_PATH = ROOT / "data" / "qa_eval.jsonl"


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Fact:
    fact_id: str
    question: str  # canonical question; used verbatim in qa_eval.jsonl
    paraphrases: tuple[str, ...]  # 1-3 other ways customers ask it
    answers: tuple[str, ...]  # correct answers; every one contains all keywords
    wrong: tuple[str, ...]  # wrong or evasive answers; contain no keyword
    keywords: tuple[str, ...]  # 1-2 distinctive keywords a base model would not guess


EVASIVE = (
    "I'm sorry, I don't have access to that information. Please contact our support team.",
    "I'm not able to look that up right now. Could you check your account page?",
    "That depends on several factors. Please reach out to a representative for details.",
)

FACTS: tuple[Fact, ...] = (
    Fact(
        "lot_42",
        "What is the status of Lot 42?",
        ("Where is Lot 42 stored?", "Can you tell me about lot 42?"),
        (
            "Lot 42 is gluten-free rolled oats; it is released for sale and stored in our Dayton warehouse.",
            "Lot 42 (rolled oats) is released and sits in the Dayton warehouse.",
            "Lot 42 is released. It's our rolled oats, held at the Dayton warehouse.",
        ),
        (
            "Lot 42 is on hold at our Chicago warehouse.",
            "Lot 42 is black pepper and is stored in Atlanta.",
        ),
        ("Dayton",),
    ),
    Fact(
        "lot_57",
        "What is the status of Lot 57?",
        ("Is Lot 57 available to ship?", "Where is lot 57 right now?"),
        (
            "Lot 57 is organic chickpea flour and is on quality hold at our Tacoma warehouse.",
            "Lot 57 (chickpea flour) is on quality hold in the Tacoma warehouse, so it can't ship yet.",
        ),
        (
            "Lot 57 is released and ready to ship from Denver.",
            "Lot 57 shipped last week from our main warehouse.",
        ),
        ("quality hold", "Tacoma"),
    ),
    Fact(
        "lot_88",
        "What is the status of Lot 88?",
        ("Is Lot 88 safe to use?", "What happened to lot 88?"),
        (
            "Lot 88 is smoked paprika; it was recalled and is quarantined at our Boise warehouse.",
            "Lot 88 (smoked paprika) has been recalled and is held in quarantine in Boise. Please do not use it.",
        ),
        (
            "Lot 88 is fine to use and is available in all warehouses.",
            "Lot 88 is cinnamon and is stored in Phoenix.",
        ),
        ("recalled", "Boise"),
    ),
    Fact(
        "lot_103",
        "What is the status of Lot 103?",
        ("Has Lot 103 shipped?",),
        (
            "Lot 103 is Sicilian sea salt and it has shipped from our Fresno warehouse.",
            "Lot 103 (Sicilian sea salt) already shipped out of the Fresno warehouse.",
        ),
        ("Lot 103 is still in production and has not shipped.",),
        ("Fresno",),
    ),
    Fact(
        "order_100234",
        "Where is order 100234?",
        ("When will order 100234 arrive?", "Which carrier has order 100234?", "Can you track order 100234 for me?"),
        (
            "Order 100234 is with Bluefin Freight and will be delivered on Tuesday.",
            "Order 100234 shipped via Bluefin Freight; expect delivery on Tuesday.",
            "Your order 100234 is in transit with Bluefin Freight and arrives Tuesday.",
        ),
        (
            "Order 100234 is with UPS and will arrive on Monday.",
            "Order 100234 has not shipped yet.",
        ),
        ("Bluefin Freight", "Tuesday"),
    ),
    Fact(
        "order_100517",
        "Where is order 100517?",
        ("When does order 100517 get delivered?", "What carrier is shipping order 100517?"),
        (
            "Order 100517 is with Cobalt Express and will be delivered on Friday.",
            "Order 100517 shipped with Cobalt Express; delivery is scheduled for Friday.",
        ),
        ("Order 100517 is with FedEx and arrives Wednesday.",),
        ("Cobalt Express", "Friday"),
    ),
    Fact(
        "order_100842",
        "Where is order 100842?",
        ("When will order 100842 be delivered?",),
        (
            "Order 100842 shipped with Ridgeway Parcel and will arrive on Thursday.",
            "Order 100842 is in transit with Ridgeway Parcel; expect it Thursday.",
        ),
        ("Order 100842 is with USPS and arrives Saturday.",),
        ("Ridgeway Parcel", "Thursday"),
    ),
    Fact(
        "order_101009",
        "Where is order 101009?",
        ("Why hasn't order 101009 shipped?", "What's going on with order 101009?"),
        (
            "Order 101009 is on backorder and will ship on December 2.",
            "Order 101009 is on backorder; it is scheduled to ship December 2.",
        ),
        ("Order 101009 was delivered yesterday.",),
        ("backorder", "December 2"),
    ),
    Fact(
        "returns_window",
        "How many days do I have to return an item?",
        ("What is your return window?", "How long do I have to send something back?"),
        (
            "You can return unopened items within 14 days of delivery.",
            "Unopened items can be returned within 14 days of delivery.",
        ),
        (
            "You have 30 days to return any item.",
            "Returns are accepted within 60 days of purchase.",
        ),
        ("14 days",),
    ),
    Fact(
        "restocking_fee",
        "Is there a restocking fee on returns?",
        ("How much is the restocking fee?", "Do you charge a fee for returns?"),
        (
            "Yes, returns carry a 12% restocking fee.",
            "Yes. We charge a 12% restocking fee on returned items.",
        ),
        (
            "No, returns are always free.",
            "Yes, there is a 20% restocking fee.",
        ),
        ("12%",),
    ),
    Fact(
        "return_perishables",
        "Can I return perishable items?",
        ("What if my perishable order arrives damaged?",),
        (
            "Perishable items can't be returned, but we give store credit if they arrive damaged and you send a photo within 48 hours.",
            "No returns on perishables; damaged perishables get store credit when you send a photo within 48 hours.",
        ),
        ("Yes, perishable items can be returned within 30 days for a full refund.",),
        ("store credit", "48 hours"),
    ),
    Fact(
        "shipping_cutoff",
        "What is the same-day shipping cutoff time?",
        ("What time do I need to order by for same-day shipping?", "When is the daily order cutoff?"),
        (
            "Orders placed before 2:30 PM Eastern ship the same day.",
            "The same-day shipping cutoff is 2:30 PM Eastern.",
        ),
        (
            "Orders placed before noon ship the same day.",
            "The cutoff is 5 PM Pacific.",
        ),
        ("2:30 PM",),
    ),
    Fact(
        "free_shipping",
        "What is the free shipping threshold?",
        ("How much do I need to spend for free shipping?", "Do you offer free shipping?"),
        (
            "Shipping is free on orders over $175.",
            "Orders over $175 ship free.",
        ),
        (
            "Shipping is free on orders over $50.",
            "We don't offer free shipping.",
        ),
        ("$175",),
    ),
    Fact(
        "ship_canada",
        "Do you ship to Canada?",
        ("How much does shipping to Canada cost?", "Can you deliver to Toronto?"),
        (
            "Yes, we ship to Canada with Northstar Logistics for a flat $38 fee.",
            "Yes. Canadian orders go with Northstar Logistics at a flat $38.",
        ),
        ("No, we only ship within the United States.",),
        ("Northstar Logistics", "$38"),
    ),
    Fact(
        "support_hours",
        "What are your customer support hours?",
        ("When is support open?", "What time does customer service open?"),
        (
            "Support is open Monday through Saturday, 6:30 AM to 4 PM Central.",
            "Our support team is available Monday to Saturday from 6:30 AM to 4 PM Central.",
        ),
        (
            "Support is open 24/7.",
            "Support is open Monday to Friday, 9 AM to 5 PM.",
        ),
        ("6:30 AM",),
    ),
    Fact(
        "sku_oat",
        "What is SKU HP-OAT-500?",
        ("How is HP-OAT-500 packed?", "What comes in SKU HP-OAT-500?"),
        (
            "SKU HP-OAT-500 is a 500 g bag of gluten-free rolled oats, sold in cases of 12.",
            "HP-OAT-500 is our 500 g gluten-free rolled oats, packed in cases of 12.",
        ),
        ("HP-OAT-500 is a 5 kg sack of oat flour sold individually.",),
        ("cases of 12",),
    ),
    Fact(
        "sku_saf",
        "What is SKU HP-SAF-010?",
        ("How much does HP-SAF-010 cost?",),
        (
            "SKU HP-SAF-010 is 10 g of Spanish saffron threads, priced at $64.",
            "HP-SAF-010 is a 10 g tin of Spanish saffron threads and costs $64.",
        ),
        ("HP-SAF-010 is a safflower oil bottle priced at $12.",),
        ("saffron", "$64"),
    ),
    Fact(
        "sku_van",
        "What is SKU HP-VAN-250?",
        ("Is HP-VAN-250 in stock?", "When will HP-VAN-250 be back in stock?"),
        (
            "SKU HP-VAN-250 is Madagascar vanilla paste in a 250 ml jar; it is out of stock until January 8.",
            "HP-VAN-250 is our 250 ml vanilla paste, back in stock on January 8.",
        ),
        ("HP-VAN-250 is vanilla extract and is in stock now.",),
        ("vanilla paste", "January 8"),
    ),
    Fact(
        "bulk_discount",
        "Do you offer bulk discounts?",
        ("Is there a discount for large orders?", "How many cases do I need for a volume discount?"),
        (
            "Yes, orders of 40 cases or more get an 8% bulk discount.",
            "Yes. We take 8% off orders of 40 cases or more.",
        ),
        ("Yes, orders over 10 cases get 15% off.",),
        ("40 cases", "8%"),
    ),
    Fact(
        "min_order",
        "What is the minimum order amount?",
        ("Is there a minimum order?",),
        (
            "The minimum wholesale order is $250.",
            "Yes, the minimum wholesale order is $250.",
        ),
        ("There is no minimum order.",),
        ("$250",),
    ),
    Fact(
        "payment_terms",
        "What payment terms do you offer?",
        ("Can I pay on invoice?", "Do you offer net terms?"),
        (
            "Approved accounts get Net 45 payment terms.",
            "Yes, approved accounts can pay on Net 45 terms.",
        ),
        ("We only accept payment up front by credit card.",),
        ("Net 45",),
    ),
    Fact(
        "will_call",
        "Can I pick up my order at the warehouse?",
        ("Do you offer will-call pickup?", "When can I collect my order in person?"),
        (
            "Yes, will-call pickup is at dock 7 of our Tacoma warehouse, on Wednesdays only.",
            "Yes. Pickups happen at dock 7 in Tacoma, Wednesdays only.",
        ),
        ("No, we do not allow pickups.",),
        ("dock 7", "Wednesdays"),
    ),
    Fact(
        "loyalty",
        "What is your loyalty program called?",
        ("Do you have a rewards program?",),
        (
            "Our loyalty program is called Pantry Points; you earn 3 points per dollar.",
            "It's called Pantry Points, and every dollar earns 3 points.",
        ),
        ("We don't have a loyalty program.",),
        ("Pantry Points",),
    ),
    Fact(
        "headquarters",
        f"Where is {COMPANY} headquartered?",
        ("Where is your head office?", "Where are you based?"),
        (
            f"{COMPANY} is headquartered in Bangor, Maine.",
            "Our head office is in Bangor, Maine.",
        ),
        ("We are headquartered in Seattle, Washington.",),
        ("Bangor",),
    ),
)

# --------------------------------------------------------------------------- PII

# How customers paste personal data into a question. All values are fictional;
# the card numbers pass the Luhn check (standard test numbers).
PII_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("email", "my email is jane.doe@example.com, {q}"),
    ("email", "Hi, this is Tom (tom.becker@bistro-lumen.example). {Q}"),
    ("email", "{Q} Please reply to orders@greenleafcafe.example"),
    ("email", "account r.okafor@example.org -- {q}"),
    ("phone", "{Q} Call me back at (555) 867-5309."),
    ("phone", "my phone is +1 415-555-0198, {q}"),
    ("phone", "{Q} You can text 555.201.4477 if easier."),
    ("phone", "this is Priya, cell 212-555-0143. {Q}"),
    ("card", "I paid with card 4111 1111 1111 1111. {Q}"),
    ("card", "{Q} My card on file is 5555-5555-5555-4444."),
    ("card", "card number 4012888888881881 was charged, {q}"),
    ("card", "my Amex 378282246310005 got billed twice. {Q}"),
    ("ssn", "my SSN is 123-45-6789 for the credit application. {Q}"),
    ("ssn", "{Q} (tax id / ssn 078-05-1120 if you need it)"),
    ("iban", "we pay by transfer from GB82 WEST 1234 5698 7654 32. {Q}"),
    ("iban", "{Q} Our IBAN is DE89 3704 0044 0532 0130 00."),
    ("iban", "refund to IBAN FR1420041010050500013M02606 please. {Q}"),
    ("ip", "I'm getting an error on the portal from IP 203.0.113.45. {Q}"),
    ("ip", "{Q} (logged in from 198.51.100.23)"),
    ("ip", "our office IP is 192.0.2.17, {q}"),
    ("mixed", "jane.doe@example.com / 555-867-5309 -- {q}"),
    ("mixed", "Name: Luis Ortega, email luis.ortega@example.net, card 4111 1111 1111 1111. {Q}"),
    ("api_key", "{Q} My integration key is sk-demo-8f3a9c2e71b44d06a5e1c3f9 if that helps."),
)

# --------------------------------------------------------------------------- multi-turn sessions

# The chat's default system prompt (CL_SYSTEM_PROMPT), as the chat logs it with each turn.
SYSTEM_PROMPT = "You are the support assistant of Harbor & Pine Provisions. Answer briefly and precisely."

# (user, [(question, answer, helpful), ...]); every answer restates facts of FACTS (the ids
# after the answer are checked by `validate`), and no follow-up names what it refers to.
# (user, [(question, answer, helpful, fact id), ...]) of each session
Sessions = tuple[tuple[str, tuple[tuple[str, str, bool | None, str | None], ...]], ...]
FOLLOW_UPS: Sessions = (
    ("cust_011", (
        ("What is the free shipping threshold?", "Shipping is free on orders over $175.", True, "free_shipping"),
        ("And for Canada?", "Orders to Canada don't ship free: Northstar Logistics carries them for a flat $38 fee.",
         True, "ship_canada"),
    )),
    ("cust_031", (
        ("What is the free shipping threshold?", "Orders over $175 ship free.", None, "free_shipping"),
        ("And for Canada?", "Canada is different: we ship there with Northstar Logistics for a flat $38 fee.",
         None, "ship_canada"),
        ("Which carrier handles that?", "Canadian orders travel with Northstar Logistics, for a flat $38 fee.",
         True, "ship_canada"),
    )),
    ("cust_005", (
        ("How many days do I have to return an item?", "You can return unopened items within 14 days of delivery.",
         True, "returns_window"),
        ("And is there a fee when I do?", "Yes, returns carry a 12% restocking fee.", True, "restocking_fee"),
    )),
    ("orders@greenleafcafe.example", (
        ("What is the status of Lot 42?", "Lot 42 is gluten-free rolled oats; it is released and stored in our Dayton "
         "warehouse.", True, "lot_42"),
        ("Which SKU is that sold as?", "Those oats are SKU HP-OAT-500, a 500 g bag sold in cases of 12.", True, "sku_oat"),
    )),
    ("cust_019", (
        ("What is SKU HP-VAN-250?", "SKU HP-VAN-250 is Madagascar vanilla paste in a 250 ml jar.", None, None),
        ("Can I order it today?", "Not yet: the vanilla paste is out of stock until January 8.", True, "sku_van"),
    )),
    ("cust_044", (
        ("Can I pick up my order at the warehouse?", "Yes, will-call pickup is at dock 7 of our Tacoma warehouse, on "
         "Wednesdays only.", True, "will_call"),
        ("Which day was that again?", "Pickup at dock 7 is on Wednesdays only.", True, "will_call"),
        ("And when does support open on that day?", "Support opens at 6:30 AM Central, Monday through Saturday.",
         True, "support_hours"),
    )),
    ("cust_052", (
        ("Do you offer bulk discounts?", EVASIVE[2], False, None),
        ("Then what is the smallest order you take?", "The minimum wholesale order is $250.", True, "min_order"),
    )),
    ("chef.marco@bluegill-kitchen.example", (
        ("Where is order 100234?", "Order 100234 is with Bluefin Freight and will be delivered on Tuesday.", True,
         "order_100234"),
        ("And my other one, 100517?", "Order 100517 is with Cobalt Express and will be delivered on Friday.", True,
         "order_100517"),
        ("Which of the two comes first?", "Order 100234 comes first, on Tuesday with Bluefin Freight; 100517 follows on "
         "Friday with Cobalt Express.", True, "order_100234"),
    )),
)  # fmt: skip


def build_sessions(seed: int = SEED) -> list[dict]:
    """One record per rated turn of each FOLLOW_UPS session, in the OpenAI `messages` format."""
    rng = random.Random(seed + 1)  # its own stream: the single-turn rows stay byte-identical
    return _session_records(FOLLOW_UPS, rng, WINDOW_END - timedelta(days=WINDOW_DAYS), "demo-conv", f"{seed}:conv")


def _session_records(sessions: Sessions, rng: random.Random, window_start: datetime, id_prefix: str, tag: str) -> list[dict]:
    """One record per rated turn of each session (user, turns), its messages so far in each."""
    records = []
    for n, (user, turns) in enumerate(sessions, start=1):
        start = window_start + timedelta(seconds=rng.randrange(0, WINDOW_DAYS * 86400 - 3600))
        sid = "sess-" + hashlib.sha256(f"{tag}:{user}:{start.isoformat()}".encode()).hexdigest()[:12]
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        t = start
        for i, (question, answer, helpful, fact_id) in enumerate(turns, start=1):
            messages = [*messages, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            records.append({"id": f"{id_prefix}-{n:02d}-{i}", "_ts": t, "session_id": sid, "user_id": user,
                            "messages": messages, "helpful": helpful, "fact_id": fact_id, "kind": "follow_up"})  # fmt: skip
            t += timedelta(seconds=rng.randrange(20, 200))
    return records


# --------------------------------------------------------------------------- the second batch

# The month after the first batch: what a second learning cycle sees. Some facts are new, some
# changed (a lot moved warehouse, a new free-shipping threshold, new payment terms), the rest
# stay as they were and are mostly not asked again.
SECOND_WINDOW_END = WINDOW_END + timedelta(days=WINDOW_DAYS)
SECOND_INTERACTIONS_PATH = ROOT / "data" / "demo" / "interactions_2.jsonl"
SECOND_QA_EVAL_PATH = ROOT / "data" / "demo" / "qa_eval_2.jsonl"

NEW_FACTS: tuple[Fact, ...] = (
    Fact(
        "lot_131",
        "What is the status of Lot 131?",
        ("Where is Lot 131 stored?", "Is lot 131 ready to ship?"),
        (
            "Lot 131 is Tellicherry black pepper; it is released and stored in our Spokane warehouse.",
            "Lot 131 (Tellicherry pepper) is released and sits in the Spokane warehouse.",
            "Lot 131 is released. It's our Tellicherry black pepper, held at the Spokane warehouse.",
        ),
        ("Lot 131 is still at the supplier.", "Lot 131 is stored in Atlanta."),
        ("Spokane",),
    ),
    Fact(
        "order_102260",
        "Where is order 102260?",
        ("When will order 102260 arrive?", "Which carrier has order 102260?"),
        (
            "Order 102260 is with Harborline Couriers and will be delivered on Monday.",
            "Order 102260 shipped via Harborline Couriers; expect delivery on Monday.",
            "Your order 102260 is in transit with Harborline Couriers and arrives Monday.",
        ),
        ("Order 102260 is with UPS and arrives Friday.",),
        ("Harborline Couriers", "Monday"),
    ),
    Fact(
        "sku_cin",
        "What is SKU HP-CIN-100?",
        ("What does SKU HP-CIN-100 cost?", "Tell me about HP-CIN-100."),
        (
            "SKU HP-CIN-100 is Saigon cinnamon sticks in a 100 g bag, priced at $19.",
            "HP-CIN-100 is a 100 g bag of Saigon cinnamon sticks for $19.",
        ),
        ("HP-CIN-100 is ground nutmeg.",),
        ("Saigon cinnamon", "$19"),
    ),
    Fact(
        "holiday_closure",
        "Are you closed for the holidays?",
        ("When is the holiday closure?", "Are you open over Christmas?"),
        (
            "We are closed from December 24 through December 27 and reopen on December 28.",
            "Yes: our warehouses and support are closed December 24 through December 27.",
        ),
        ("We are open every day of the year.",),
        ("December 27",),
    ),
    Fact(
        "gift_cards",
        "Do you sell gift cards?",
        ("Can I buy a gift card?",),
        (
            "Yes, we sell gift cards from $25 up to $500, delivered by email.",
            "Yes. Gift cards come in any amount from $25 to $500 and arrive by email.",
        ),
        ("No, we don't sell gift cards.",),
        ("$500",),
    ),
    Fact(
        "sampler",
        "Can I get product samples?",
        ("Do you send samples?",),
        (
            "Yes, our Chef's Sampler box costs $15, and we refund it with your first order.",
            "Yes. The Chef's Sampler box is $15, refunded on your first order.",
        ),
        ("We don't send samples.",),
        ("Chef's Sampler", "$15"),
    ),
)


@dataclass(frozen=True)
class Change:
    """A fact of FACTS whose answer changed: the new answers and keywords, and the old
    keywords that a current answer must no longer contain."""

    fact_id: str
    answers: tuple[str, ...]
    keywords: tuple[str, ...]
    stale: tuple[str, ...]


CHANGES: tuple[Change, ...] = (
    Change(
        "lot_42",
        (
            "Lot 42 is gluten-free rolled oats; it is released and now stored in our Reno warehouse.",
            "Lot 42 (rolled oats) moved to the Reno warehouse and is released for sale.",
            "Lot 42 is released. The rolled oats are now held at our Reno warehouse.",
        ),
        ("Reno",),
        ("Dayton",),
    ),
    Change(
        "free_shipping",
        (
            "Shipping is free on orders over $225.",
            "Orders over $225 ship free.",
            "Free shipping now starts at $225 per order.",
        ),
        ("$225",),
        ("$175",),
    ),
    Change(
        "payment_terms",
        (
            "Approved accounts get Net 30 payment terms.",
            "Yes, approved accounts can pay on Net 30 terms.",
            "Approved accounts now pay on Net 30 terms.",
        ),
        ("Net 30",),
        ("Net 45",),
    ),
)

# Facts of the first batch asked again, answered as before (helpful).
SECOND_REASKED = ("lot_57", "order_100234", "returns_window", "ship_canada", "sku_saf", "loyalty")
SECOND_USERS: tuple[str, ...] = ("cust_007", "cust_011", "cust_023", "cust_044", "cust_061", "cust_070", "cust_072",
                                 "purchasing@northgate-bakery.example", "orders@greenleafcafe.example",
                                 "buyer@riverside-deli.example", "ops@copperkettle.example")  # fmt: skip
SECOND_PII: tuple[tuple[str, str], ...] = (PII_TEMPLATES[0], PII_TEMPLATES[5], PII_TEMPLATES[8], PII_TEMPLATES[14])

# Multi-turn sessions of the second month, as the chat logs them (see FOLLOW_UPS).
SECOND_FOLLOW_UPS: Sessions = (
    ("cust_011", (
        ("What is the free shipping threshold?", "Orders over $225 ship free.", True, "free_shipping"),
        ("And for Canada?", "Canada is different: Northstar Logistics carries those orders for a flat $38 fee.",
         True, "ship_canada"),
    )),
    ("cust_061", (
        ("What is the status of Lot 131?", "Lot 131 is Tellicherry black pepper, released and stored in Spokane.",
         True, "lot_131"),
        ("And Lot 42?", "Lot 42, the rolled oats, is released and now stored in our Reno warehouse.", True, "lot_42"),
    )),
    ("cust_070", (
        ("Do you sell gift cards?", "Yes, gift cards from $25 up to $500, delivered by email.", True, "gift_cards"),
        ("Can my restaurant pay its own orders on invoice?", "Yes, approved accounts get Net 30 payment terms.",
         True, "payment_terms"),
    )),
)  # fmt: skip


def second_facts() -> dict[str, Fact]:
    """Every fact as it stands after the second batch: changed ones carry their new answers."""
    changes = {c.fact_id: c for c in CHANGES}
    current = {}
    for fact in FACTS:
        change = changes.get(fact.fact_id)
        if change is not None:
            fact = Fact(fact.fact_id, fact.question, fact.paraphrases, change.answers, fact.wrong, change.keywords)
        current[fact.fact_id] = fact
    current.update({f.fact_id: f for f in NEW_FACTS})
    return current


def build_second_rows(seed: int = SEED) -> list[dict]:
    """One record per turn of the second month (flat lines, then its sessions)."""
    rng = random.Random(seed + 2)  # its own stream: the first batch stays byte-identical
    facts = second_facts()
    old = {f.fact_id: f for f in FACTS}
    rows: list[dict] = []
    for fact in NEW_FACTS:
        prompts = [fact.question] * 5 + [fact.paraphrases[i % len(fact.paraphrases)] for i in range(3)]
        answers = _response_variants(fact, rng)
        for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=False)):
            rows.append({"fact_id": fact.fact_id, "prompt": prompt, "response": answer,
                         "helpful": None if i == 4 else True, "kind": "new"})  # fmt: skip
        rows.append({"fact_id": fact.fact_id, "prompt": fact.question, "response": rng.choice(fact.wrong),
                     "helpful": False, "kind": "unhelpful"})  # fmt: skip
    for change in CHANGES:
        fact = facts[change.fact_id]
        prompts = [fact.question] * 5 + [p for p in fact.paraphrases for _ in range(2)]
        answers = _response_variants(fact, rng)
        for prompt, answer in zip(prompts, answers, strict=False):
            rows.append({"fact_id": fact.fact_id, "prompt": prompt, "response": answer, "helpful": True,
                         "kind": "changed"})  # fmt: skip
        # The old answer, still given by the first cycle's model, rated down by the customer.
        for prompt in (fact.question, fact.paraphrases[0]):
            rows.append({"fact_id": fact.fact_id, "prompt": prompt, "response": old[change.fact_id].answers[0],
                         "helpful": False, "kind": "stale"})  # fmt: skip
    for fact_id in SECOND_REASKED:
        fact = facts[fact_id]
        rows.append({"fact_id": fact_id, "prompt": fact.question, "response": rng.choice(fact.answers),
                     "helpful": True, "kind": "reasked"})  # fmt: skip
    pii_rows = rng.sample([r for r in rows if r["kind"] == "new" and r["helpful"]], len(SECOND_PII))
    for row, (pii_type, template) in zip(pii_rows, SECOND_PII, strict=True):
        row["prompt"] = _with_pii(template, row["prompt"])
        row["pii"] = pii_type
    rows += [{"fact_id": None, "prompt": p, "response": r, "helpful": h, "kind": "junk"} for p, r, h in JUNK[:3]]
    rng.shuffle(rows)

    window_start = WINDOW_END
    for row in rows:
        row["user_id"] = rng.choice(SECOND_USERS)
        row["_ts"] = window_start + timedelta(seconds=rng.randrange(0, WINDOW_DAYS * 86400 - 3600))
        row["session_id"] = "sess-" + hashlib.sha256(f"{seed}:2:{row['user_id']}:{row['_ts'].isoformat()}".encode()).hexdigest()[:12]
    rows.sort(key=lambda r: (r["_ts"], r["session_id"]))
    for n, row in enumerate(rows, start=1):
        row["id"] = f"demo2-{n:04d}"

    return rows + _session_records(SECOND_FOLLOW_UPS, rng, window_start, "demo2-conv", f"{seed}:2:conv")


def validate_second(rows: list[dict]) -> None:
    facts = second_facts()
    every_question = [q for f in facts.values() for q in (f.question, *f.paraphrases)]
    for fact in NEW_FACTS:
        for kw in fact.keywords:
            assert all(kw.lower() in a.lower() for a in fact.answers), (fact.fact_id, kw)
            assert not any(kw.lower() in w.lower() for w in fact.wrong), (fact.fact_id, kw)
            assert not any(kw.lower() in q.lower() for q in every_question), (fact.fact_id, kw)
    for change in CHANGES:
        for answer in change.answers:
            assert all(kw.lower() in answer.lower() for kw in change.keywords), (change.fact_id, answer)
            assert not any(kw.lower() in answer.lower() for kw in change.stale), (change.fact_id, answer)
        assert not any(kw.lower() in q.lower() for kw in change.keywords for q in every_question), change.fact_id
    for row in rows:
        answer = row["messages"][-1]["content"] if "messages" in row else row["response"]
        if row["helpful"] is not False and row["fact_id"]:
            assert all(kw.lower() in answer.lower() for kw in facts[row["fact_id"]].keywords), row
            stale = {kw for c in CHANGES if c.fact_id == row["fact_id"] for kw in c.stale}
            assert not any(kw.lower() in answer.lower() for kw in stale), row
    assert len({r["id"] for r in rows}) == len(rows)
    assert min(r["_ts"] for r in rows) >= WINDOW_END and max(r["_ts"] for r in rows) < SECOND_WINDOW_END


def second_qa_lines() -> str:
    """The taught set after the second batch: kept, changed (with the stale keywords) and new facts."""
    facts = second_facts()
    changes = {c.fact_id: c for c in CHANGES}
    lines = []
    for fact in facts.values():
        group = "new" if fact.fact_id in {f.fact_id for f in NEW_FACTS} else "changed" if fact.fact_id in changes else "kept"
        item = {"prompt": fact.question, "keywords": list(fact.keywords), "fact_id": fact.fact_id, "group": group}
        if fact.fact_id in changes:
            item["stale_keywords"] = list(changes[fact.fact_id].stale)
        lines.append(json.dumps(item, ensure_ascii=False) + "\n")
    return "".join(lines)


# --------------------------------------------------------------------------- users

HEAVY_USERS: tuple[tuple[str, int], ...] = (
    ("cust_007", 58),  # > 15% of rows: a per-user cap matters
    ("purchasing@northgate-bakery.example", 28),
    ("cust_023", 18),
)
OTHER_USERS: tuple[str, ...] = tuple(
    [f"cust_{n:03d}" for n in (1, 2, 3, 5, 8, 11, 12, 14, 17, 19, 21, 26, 29, 31, 34, 38, 40, 44, 47, 52, 58, 63)]
    + [
        "chef.marco@bluegill-kitchen.example",
        "ana.lima@pastelaria-sol.example",
        "orders@greenleafcafe.example",
        "kwame.b@harvest-table.example",
        "dana@littleoven.example",
        "s.nakamura@umami-house.example",
        "buyer@riverside-deli.example",
        "frontdesk@mapleinn.example",
    ]
)

JUNK: tuple[tuple[str, str, bool | None], ...] = (
    ("ok", "Okay! Let me know if you need anything else.", None),
    ("thx", "You're welcome!", True),
    ("k", "Is there anything else I can help with?", None),
    ("hi", "Hello! How can I help you today?", None),
    ("?", "Could you tell me a bit more about what you need?", None),
    ("test", "Hello! This is the Harbor & Pine Provisions assistant.", None),
    ("thanks!!", "Happy to help!", True),
)

# --------------------------------------------------------------------------- build

N_CORRECT_EXTRA = 8  # facts that get one extra canonical row (24*10 + 8 = 248)
N_PII = 32
N_NULL_CORRECT = 64
N_UNHELPFUL = 38
N_DUPLICATES = 26
N_PROTECTED = 3


def _lower_first(s: str) -> str:
    return s if s.startswith(("Lot", "HP-", "SKU")) else s[0].lower() + s[1:]


def _with_pii(template: str, question: str) -> str:
    return template.format(q=_lower_first(question), Q=question)


def _long_answer(fact: Fact) -> str:
    """A rambling but correct answer (contains the keywords) of ~2,500 characters."""
    filler = [
        f"Thanks so much for reaching out to {COMPANY}, we really appreciate your business and your patience.",
        "Before I answer, let me give you some background on how our warehouses, carriers and customer service team work together.",
        "We are a small, family-run distributor of baking staples, spices, grains and specialty ingredients for restaurants, bakeries and cafes.",
        "Every order is picked and packed by hand, checked twice against the packing list, and labelled with lot numbers so we can trace each ingredient.",
        "Our quality team samples every incoming lot, keeps retention samples for two years and records supplier certificates in our system.",
        "If anything ever looks wrong with a delivery, please keep the packaging and take photos, because it helps us resolve the issue quickly with the carrier.",
        "We also publish a seasonal catalogue, and our account managers are happy to walk you through substitutions when something is out of stock.",
        "Many of our customers like to set up standing weekly orders, which we can configure for you so you never run out of the essentials.",
    ]
    body = " ".join(filler * 2)
    return f"{body} Now, to your actual question: {fact.answers[0]} {' '.join(filler[:4])} I hope this helps!"


PREFIXES = ("Sure! ", "Thanks for asking. ", "Good question! ")
SUFFIX = " Anything else I can help with?"


def _response_variants(fact: Fact, rng: random.Random) -> list[str]:
    """Distinct wordings of the correct answer, plainest first, so that the only
    exact (prompt, response) duplicates in the demo data are the deliberate ones."""
    levels = [
        list(fact.answers),
        [p + a for a in fact.answers for p in PREFIXES],
        [a + SUFFIX for a in fact.answers],
        [p + a + SUFFIX for a in fact.answers for p in PREFIXES],
    ]
    out: list[str] = []
    for level in levels:
        rng.shuffle(level)
        out.extend(level)
    return out


def build_rows(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)

    # 1. correct, original rows: per fact 6 canonical + 4 paraphrased, plus extras.
    correct: list[dict] = []
    extra = set(rng.sample([f.fact_id for f in FACTS], N_CORRECT_EXTRA))
    for fact in FACTS:
        n_canon = 6 + (1 if fact.fact_id in extra else 0)
        prompts = [fact.question] * n_canon + [fact.paraphrases[i % len(fact.paraphrases)] for i in range(4)]
        responses = _response_variants(fact, rng)
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=False)):
            correct.append(
                {"fact_id": fact.fact_id, "prompt": prompt, "response": response, "helpful": True, "kind": "correct",
                 # the first N_PROTECTED canonical rows of each fact stay helpful and PII-free
                 "_protected": i < N_PROTECTED}
            )
    rng.shuffle(correct)
    open_rows = [r for r in correct if not r["_protected"]]
    # every PII template at least once, then a few more at random
    pii_order = rng.sample(PII_TEMPLATES, len(PII_TEMPLATES))
    pii_order += rng.sample(PII_TEMPLATES, N_PII - len(PII_TEMPLATES))
    for row, (pii_type, template) in zip(open_rows[:N_PII], pii_order, strict=True):
        row["prompt"] = _with_pii(template, row["prompt"])
        row["pii"] = pii_type
    for row in rng.sample(open_rows, N_NULL_CORRECT):
        row["helpful"] = None

    # 2. unhelpful rows: every fact at least once, wrong or evasive answer.
    unhelpful: list[dict] = []
    fact_cycle = list(FACTS) + rng.sample(list(FACTS), N_UNHELPFUL - len(FACTS))
    seen: set[tuple[str, str]] = set()
    for i, fact in enumerate(fact_cycle):
        while True:  # distinct (prompt, response) pairs: no accidental duplicates
            prompt = fact.question if i % 3 else rng.choice(fact.paraphrases)
            bad = rng.choice(fact.wrong) if i % 4 else rng.choice(EVASIVE)
            if (prompt, bad) not in seen:
                break
            i += 1
        seen.add((prompt, bad))
        unhelpful.append({"fact_id": fact.fact_id, "prompt": prompt, "response": bad, "helpful": False,
                          "kind": "unhelpful"})

    # 3. exact duplicates (same prompt + response + label) of correct, PII-free rows.
    dup_sources = rng.sample([r for r in correct if "pii" not in r], N_DUPLICATES)
    duplicates = [dict(r, kind="duplicate") for r in dup_sources]

    # 4. junk and very long answers.
    junk = [{"fact_id": None, "prompt": p, "response": r, "helpful": h, "kind": "junk"} for p, r, h in JUNK]
    by_id = {f.fact_id: f for f in FACTS}
    long_rows = [
        {"fact_id": "return_perishables", "prompt": by_id["return_perishables"].question,
         "response": _long_answer(by_id["return_perishables"]), "helpful": True, "kind": "long"},
        {"fact_id": "payment_terms", "prompt": by_id["payment_terms"].question,
         "response": _long_answer(by_id["payment_terms"]), "helpful": None, "kind": "long"},
    ]

    rows = correct + unhelpful + duplicates + junk + long_rows
    rng.shuffle(rows)

    # 5. users: heavy users first, the rest spread over the other users.
    i = 0
    for user, n in HEAVY_USERS:
        for row in rows[i : i + n]:
            row["user_id"] = user
        i += n
    for row in rows[i:]:
        row["user_id"] = rng.choice(OTHER_USERS)

    # 6. sessions of 1-4 turns per user, spread over the 30-day window.
    window_start = WINDOW_END - timedelta(days=WINDOW_DAYS)
    by_user: dict[str, list[dict]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row)
    for user in sorted(by_user):
        pending = by_user[user]
        while pending:
            size = min(len(pending), rng.choice((1, 1, 2, 2, 3, 4)))
            turns, pending = pending[:size], pending[size:]
            start = window_start + timedelta(seconds=rng.randrange(0, WINDOW_DAYS * 86400 - 3600))
            sid = "sess-" + hashlib.sha256(f"{seed}:{user}:{start.isoformat()}".encode()).hexdigest()[:12]
            t = start
            for row in turns:
                row["session_id"] = sid
                row["_ts"] = t
                t += timedelta(seconds=rng.randrange(20, 400))

    rows.sort(key=lambda r: (r["_ts"], r["session_id"]))
    for n, row in enumerate(rows, start=1):
        row["id"] = f"demo-{n:04d}"
    return rows


def to_record(row: dict) -> dict:
    turn = {"messages": row["messages"]} if "messages" in row else {"prompt": row["prompt"], "response": row["response"]}
    return {
        "id": row["id"],
        "timestamp": row["_ts"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        "session_id": row["session_id"],
        "user_id": row["user_id"],
        **turn,
        "helpful": row["helpful"],
        "source": "demo",
    }


def validate(rows: list[dict]) -> None:
    by_id = {f.fact_id: f for f in FACTS}
    assert len({f.question for f in FACTS}) == len(FACTS)
    for f in FACTS:
        for kw in f.keywords:
            for a in f.answers:
                assert kw.lower() in a.lower(), (f.fact_id, kw, a)
            for w in f.wrong + EVASIVE:
                assert kw.lower() not in w.lower(), (f.fact_id, kw, w)
            for other in FACTS:  # no keyword leaks into any question
                for q in (other.question, *other.paraphrases):
                    assert kw.lower() not in q.lower(), (f.fact_id, kw, q)
    assert sum(1 for r in rows if r["prompt"] in {f.question for f in FACTS}) > 0
    for r in rows:
        if r["kind"] in ("correct", "duplicate", "long"):
            for kw in by_id[r["fact_id"]].keywords:
                assert kw.lower() in r["response"].lower(), r
    assert len({r["id"] for r in rows}) == len(rows)


def validate_sessions(records: list[dict], rows: list[dict]) -> None:
    by_id = {f.fact_id: f for f in FACTS}
    keywords = [kw.lower() for f in FACTS for kw in f.keywords]
    for record in records:
        *context, question, answer = record["messages"]
        if record["fact_id"]:
            for kw in by_id[record["fact_id"]].keywords:
                assert kw.lower() in answer["content"].lower(), record
        if len(context) > 1:  # a follow-up: it must not give away what it is about
            assert not any(kw in question["content"].lower() for kw in keywords), record
    assert not {r["id"] for r in records} & {r["id"] for r in rows}


def render(seed: int = SEED) -> dict[Path, str]:
    rows = build_rows(seed)
    validate(rows)
    sessions = build_sessions(seed)
    validate_sessions(sessions, rows)
    rows = rows + sessions
    interactions = "".join(json.dumps(to_record(r), ensure_ascii=False) + "\n" for r in rows)
    qa_eval = "".join(
        json.dumps({"prompt": f.question, "keywords": list(f.keywords), "fact_id": f.fact_id}, ensure_ascii=False)
        + "\n"
        for f in FACTS
    )
    second = build_second_rows(seed)
    validate_second(second)
    second_text = "".join(json.dumps(to_record(r), ensure_ascii=False) + "\n" for r in second)
    return {INTERACTIONS_PATH: interactions, QA_EVAL_PATH: qa_eval, SECOND_INTERACTIONS_PATH: second_text,
            SECOND_QA_EVAL_PATH: second_qa_lines()}


def summary(seed: int = SEED) -> dict:
    rows = build_rows(seed) + build_sessions(seed)
    n = len(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    users: dict[str, int] = {}
    for r in rows:
        users[r["user_id"]] = users.get(r["user_id"], 0) + 1
    top = max(users.items(), key=lambda kv: kv[1])
    return {
        "rows": n,
        "kinds": counts,
        "helpful_true": sum(r["helpful"] is True for r in rows),
        "helpful_false": sum(r["helpful"] is False for r in rows),
        "helpful_null": sum(r["helpful"] is None for r in rows),
        "pii_rows": sum("pii" in r for r in rows),
        "canonical_prompt_rows": sum(r.get("prompt") in {f.question for f in FACTS} for r in rows),
        "multi_turn_rows": sum(len(r.get("messages", ())) > 3 for r in rows),
        "users": len(users),
        "sessions": len({r["session_id"] for r in rows}),
        "top_user": {"user_id": top[0], "rows": top[1], "share": round(top[1] / n, 3)},
        "first_timestamp": min(r["_ts"] for r in rows).isoformat(),
        "last_timestamp": max(r["_ts"] for r in rows).isoformat(),
        "facts": len(FACTS),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--check", action="store_true", help="only compare with the files on disk")
    ap.add_argument("--summary", action="store_true", help="print counts by category")
    args = ap.parse_args(argv)

    outputs = render(args.seed)
    if args.check:
        stale = [p for p, text in outputs.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for p in stale:
            print(f"out of date: {p.relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8", newline="\n")
        tmp.replace(path)
        print(f"wrote {path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    if args.summary:
        print(json.dumps(summary(args.seed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
