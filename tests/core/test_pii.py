"""PII sanitizer: positives and look-alikes per type, properties, linear time, Presidio's vectors."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cl_assets.core.identity import hash_user_id
from cl_assets.core.pii import PII_TYPES, Finding, Sanitized, find_pii, sanitize

# --------------------------------------------------------------------------- positives

POSITIVES: list[tuple[str, str, str]] = [  # (text, type, the part that must disappear)
    ("mail jane.doe@example.com today", "EMAIL", "jane.doe@example.com"),
    ("Hi, this is Tom (tom.becker@bistro-lumen.example).", "EMAIL", "tom.becker@bistro-lumen.example"),
    ("JOHN_O'NEIL+tag@Mail.Example.CO.UK.", "EMAIL", "JOHN_O'NEIL+tag@Mail.Example.CO.UK"),
    ("idn user@xn--80ak6aa92e.com ok", "EMAIL", "user@xn--80ak6aa92e.com"),
    ("unicode пользователь@пример.рф ok", "EMAIL", "пользователь@пример.рф"),
    ("Call me back at (555) 123-4567.", "PHONE", "(555) 123-4567"),
    ("call 555-123-4567 now", "PHONE", "555-123-4567"),
    ("or +1 555 123 4567", "PHONE", "+1 555 123 4567"),
    ("text 555.123.4567 if easier", "PHONE", "555.123.4567"),
    ("toll free 1-800-555-0199", "PHONE", "1-800-555-0199"),
    ("office (415)555-0132 x204", "PHONE", "(415)555-0132 x204"),
    ("London +44 20 7946 0958", "PHONE", "+44 20 7946 0958"),
    ("Berlin +49 30 123456", "PHONE", "+49 30 123456"),
    ("Zurich +41 (0)69 979 80 58", "PHONE", "+41 (0)69 979 80 58"),
    ("mobile +447700677662", "PHONE", "+447700677662"),
    ("UK 020 7946 0958 landline", "PHONE", "020 7946 0958"),
    ("Sydney (08) 8747 6301", "PHONE", "(08) 8747 6301"),
    ("Paris 01.84.17.61.18", "PHONE", "01.84.17.61.18"),
    ("Phone: 467 3395", "PHONE", "467 3395"),
    ("my phone number is 13812345678", "PHONE", "13812345678"),
    ("My CN number is 13812345678", "PHONE", "13812345678"),
    ("reach me, my number: 555 1234", "PHONE", "555 1234"),
    ("my SSN is 123-45-6789.", "SSN", "123-45-6789"),
    ("ssn 078 05 1120", "SSN", "078 05 1120"),
    ("id 078.05.1123 ok", "SSN", "078.05.1123"),
    ("SSN: 078051121", "SSN", "078051121"),
    ("social security number 219099999", "SSN", "219099999"),
    ("card 4111 1111 1111 1111 exp", "CREDIT_CARD", "4111 1111 1111 1111"),
    ("card 5555-5555-5555-4444.", "CREDIT_CARD", "5555-5555-5555-4444"),
    ("number 4012888888881881 was", "CREDIT_CARD", "4012888888881881"),
    ("Amex 378282246310005 twice", "CREDIT_CARD", "378282246310005"),
    ("Amex 3782 822463 10005 grouped", "CREDIT_CARD", "3782 822463 10005"),
    ("airline 122000000000003", "CREDIT_CARD", "122000000000003"),
    ("19 digits 4111111111111111110", "CREDIT_CARD", "4111111111111111110"),
    ("card:4111111111111111", "CREDIT_CARD", "4111111111111111"),
    ("from IP 203.0.113.45.", "IP_ADDRESS", "203.0.113.45"),
    ("(192.168.0.1)", "IP_ADDRESS", "192.168.0.1"),
    ("route 10.0.0.0/8 via", "IP_ADDRESS", "10.0.0.0/8"),
    ("host 2001:db8::8a2e:370:7334 up", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
    ("[2001:db8::1]:8080", "IP_ADDRESS", "2001:db8::1"),
    ("link fe80::1%eth0 up", "IP_ADDRESS", "fe80::1%eth0"),
    ("mapped ::ffff:192.0.2.1 here", "IP_ADDRESS", "::ffff:192.0.2.1"),
    ("full 684D:1111:222:3333:4444:5555:6:77", "IP_ADDRESS", "684D:1111:222:3333:4444:5555:6:77"),
    ("embedded 0:0:0:0:0:FFFF:129.144.52.38 ok", "IP_ADDRESS", "0:0:0:0:0:FFFF:129.144.52.38"),
    ("loopback ::1", "IP_ADDRESS", "::1"),
    ("pay to GB82 WEST 1234 5698 7654 32. Thanks", "IBAN", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN DE89370400440532013000 please", "IBAN", "DE89370400440532013000"),
    ("iban fr1420041010050500013m02606", "IBAN", "fr1420041010050500013m02606"),
    ("Dash: AL47-2121-1009-0000-0002-3569-8741.", "IBAN", "AL47-2121-1009-0000-0002-3569-8741"),
    ("key sk-demo-8f3a9c2e71b44d06a5e1c3f9 works", "SECRET", "sk-demo-8f3a9c2e71b44d06a5e1c3f9"),
    ("openai sk-proj-Abc123Def456Ghi789Jkl012Mno345", "SECRET", "sk-proj-Abc123Def456Ghi789Jkl012Mno345"),
    ("gh ghp_16C7e42F292c6912E7710c838347Ae178B4a ok", "SECRET", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    (
        "pat github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "SECRET",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    ),
    ("aws AKIAIOSFODNN7EXAMPLE key", "SECRET", "AKIAIOSFODNN7EXAMPLE"),
    ("token=AKIAASQQQOABLZLDVIIT thanks", "SECRET", "AKIAASQQQOABLZLDVIIT"),  # base32: may hold no digit
    ("slack xoxb-123456789012-abcdefABCDEF", "SECRET", "xoxb-123456789012-abcdefABCDEF"),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end",
        "SECRET",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    ("Authorization: Bearer abcDEF123456ghiJKL789", "SECRET", "abcDEF123456ghiJKL789"),
    ("AUTHORIZATION: BEARER ya29.a0AfH6SMBxyzxyzxyzxyz", "SECRET", "ya29.a0AfH6SMBxyzxyzxyzxyz"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "SECRET", "dXNlcjpwYXNzd29yZA=="),
    ("api_key=Zx81kQ0pLm2NvB7r", "SECRET", "Zx81kQ0pLm2NvB7r"),
    ('{"password": "correcthorse"}', "SECRET", "correcthorse"),
    ("DB_PASSWORD: hunter2hunter2", "SECRET", "hunter2hunter2"),
    (
        "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "SECRET",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1c7+9z\nq0Zs==\n-----END RSA PRIVATE KEY-----\nbye",
        "SECRET",
        "MIIEpAIBAAKCAQEA1c7+9z",
    ),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", "SECRET", "b3BlbnNzaC1rZXktdjEAAAAA"),
]


@pytest.mark.parametrize(
    ("text", "kind", "value"), POSITIVES, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(POSITIVES)]
)
def test_detects(text: str, kind: str, value: str) -> None:
    result = sanitize(text)
    assert value not in result.text
    assert f"[{kind}]" in result.text
    assert kind in result.pii_types
    start = text.index(value)
    assert any(f.type == kind and f.start <= start and start + len(value) <= f.end for f in find_pii(text))


# The classes a third-party corpus leaked before (issue 12), each with the part that must go.
LEAKED_BEFORE: list[tuple[str, str, str]] = [
    ("Tel. +41 79 601 79 39", "PHONE", "+41 79 601 79 39"),
    ("Tel.:+41 (0)82 977 67 04", "PHONE", "+41 (0)82 977 67 04"),
    ("Handy 0699 829 80 31", "PHONE", "0699 829 80 31"),
    ("ring 07700 047 400", "PHONE", "07700 047 400"),
    ("Call (07) 5317 8843", "PHONE", "(07) 5317 8843"),
    ("tél 04.17.88.69.73", "PHONE", "04.17.88.69.73"),
    ("Phone: 26 753221", "PHONE", "26 753221"),
    ("tel 413 3504", "PHONE", "413 3504"),
    ("call 040 898 9331", "PHONE", "040 898 9331"),
    ("Phone (060)231-2978", "PHONE", "(060)231-2978"),
    ("00420 704 347 882 is my mobile", "PHONE", "00420 704 347 882"),
    ("They're not answering at 78 651 450", "PHONE", "78 651 450"),
    ("the shop: 6937964366", "PHONE", "6937964366"),  # no phone word: valid in a region (GR)
    ("is415-555-0132", "PHONE", "415-555-0132"),  # glued to a word
    (r"Phone:\n760-819-2468", "PHONE", "760-819-2468"),  # a literal backslash and "n"
    (r"Phone:\\t864.675.6005", "PHONE", "864.675.6005"),  # escaped twice
    ("tel&nbsp;+41&nbsp;79&nbsp;601&nbsp;79&nbsp;39", "PHONE", "+41&nbsp;79&nbsp;601&nbsp;79&nbsp;39"),
    ("phone=%2B41%2079%20601%2079%2039", "PHONE", "%2B41%2079%20601%2079%2039"),
    ("call 555\u2013123\u20134567", "PHONE", "555\u2013123\u20134567"),  # en dashes
    ("call +44\u00a020\u00a07946\u00a00958", "PHONE", "+44\u00a020\u00a07946\u00a00958"),  # NBSP
    ("my card 639051859986", "CREDIT_CARD", "639051859986"),  # Maestro, 12 digits
    ("card 060406464176", "CREDIT_CARD", "060406464176"),  # Maestro 0604
    ("UnionPay 8124314398834894", "CREDIT_CARD", "8124314398834894"),
    ("Prostir 9506327776815455", "CREDIT_CARD", "9506327776815455"),
    ("card 4111\u00a01111\u00a01111\u00a01111", "CREDIT_CARD", "4111\u00a01111\u00a01111\u00a01111"),
    ("IBAN TH776212872698", "IBAN", "TH776212872698"),  # no registry entry, checksum valid
    ("IBAN GB31XQNH9767179579576", "IBAN", "GB31XQNH9767179579576"),  # one short of GB's 22
    (r"mail\u00a0jane@example.com", "EMAIL", "jane@example.com"),
    ("<p>SSN:&nbsp;679-11-7493</p>", "SSN", "679-11-7493"),
]


@pytest.mark.parametrize(
    ("text", "kind", "value"), LEAKED_BEFORE, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(LEAKED_BEFORE)]
)
def test_detects_what_leaked_before(text: str, kind: str, value: str) -> None:
    test_detects(text, kind, value)
    assert sanitize(sanitize(text).text).text == sanitize(text).text


def test_labels_around_a_value_are_kept() -> None:
    assert sanitize("Authorization: Bearer abcDEF123456ghiJKL789").text == "Authorization: Bearer [SECRET]"
    assert sanitize("api_key=Zx81kQ0pLm2NvB7r; next").text == "api_key=[SECRET]; next"
    assert sanitize("card 4111 1111 1111 1111 12").text == "card [CREDIT_CARD] 12"
    assert sanitize("10.0.0.0/123").text == "[IP_ADDRESS]/123"  # no such prefix length: the address alone


# --------------------------------------------------------------------------- look-alikes

NEGATIVES: list[str] = [
    "What is the status of Lot 42?",
    "Where is order #100234? And order 100517.",
    "Your reference is ORD-2024-00017.",
    "SKU HP-SAF-010 and HP-OAT-500 are in stock.",
    "Delivered on 2024-03-15, 03/15/2024 or 15.03.2024 at 12:30:45.",
    "15.03.2024 10 pallets",  # a date and a count, not a phone
    "It costs $1,234.56 (or 1.234,56 EUR).",
    "Upgrade to v1.2.3 or version 2.0.1; firmware 10.2.0.1 and version 10.2.0.1 too.",
    "Release 1.2.3.4.5 is out.",
    "ISBN 978-3-16-148410-0, ISBN-13: 9783161484100, ISBN 0-306-40615-2.",
    "card 4111 1111 1111 1112 fails Luhn, so does 4012-8888-8888-1882",
    "timestamp 1748503543012",  # Luhn-valid but a millisecond timestamp
    "IMEI 490154203237518",  # Luhn-valid device id
    "order 4111111111111111",  # labelled as an order number
    "zip 12345-6789",  # ZIP+4, never an SSN
    "bare 078051121 with no context, my order number is 1234567, account number 12345678",
    "invalid SSNs 000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000",
    "mixed separators 693-09.4444",
    "std::cout << x; MyClass::toString(); y = a[1::2]; z = a[::2]; f :: Int -> Int",
    "Time 12:34:56, ratio 1:2:3:4, MAC aa:bb:cc:dd:ee:ff, port 80:443",
    "Bad IPs: 256.256.256.256 192.168.1.256 192.168.1 2001::db8::1",
    "text192.168.1.1 and IP192.168.1.1text",
    "GB82 WEST 1234 5698 7654 33 fails its checksum",
    "token = self.token; secret = load_secret2(path); password: required",
    "sk-short and mask-abcdefghijklmnopqrstuvwxyz0123 and sk-learn-style-configuration-options",
    "a basic internationalization guide; the bearer instrument",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
    "Room 1204, 3rd floor, 48 pages, 7 days, 2 x 250 g",
    "<p>Ref&nbsp;2167066897</p> and <p>Order&nbsp;#5087343206</p>",  # labels read through markup
    "GET /feedback?note=order%20no.%201412322052&lang=en",  # and through percent-encoding
    "art. 451-3646-17, SKU 9623510675264, lot 1985/358",
    "The reference on the pallet reads 6693 5493 9615 5214.",  # Luhn-invalid; its 12-digit head is valid
    "Ship to ZIP 62142-119, Postcode: 318-5074, my area is 47149-210",  # CEP, Japanese postcode
    "Delivered on 2564-04-07.",  # a Buddhist-era date
    "Since 2019 we sold 12,345 units; the 1999 harvest",

    "יהודית מדברת עברית \u200f\u200b and \u202eRTL override\u202c العربية ١٢٣٤٥٦٧٨٩",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_look_alikes_are_kept(text: str) -> None:
    assert find_pii(text) == []
    assert sanitize(text) == Sanitized(text)


# --------------------------------------------------------------------------- API shape


def test_sanitized_reports_sorted_types_and_counts() -> None:
    text = "x@y.com, a@b.org, 555-123-4567, card 4111111111111111"
    result = sanitize(text)
    assert result.text == "[EMAIL], [EMAIL], [PHONE], card [CREDIT_CARD]"
    assert result.pii_types == ("CREDIT_CARD", "EMAIL", "PHONE")
    assert result.counts == {"CREDIT_CARD": 1, "EMAIL": 2, "PHONE": 1}
    assert set(result.pii_types) <= set(PII_TYPES)
    with pytest.raises(AttributeError):
        result.text = "changed"  # type: ignore[misc]
    assert sanitize("nothing here") == Sanitized("nothing here", (), {})


def test_findings_are_sorted_disjoint_and_typed() -> None:
    text = "mail a@b.co, call +1 555 123 4567 or 078-05-1123, ip 10.1.2.3, iban GB82WEST12345698765432"
    findings = find_pii(text)
    assert [f.type for f in findings] == ["EMAIL", "PHONE", "SSN", "IP_ADDRESS", "IBAN"]
    assert all(isinstance(f, Finding) and f.start < f.end for f in findings)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


def test_specific_types_win_overlaps() -> None:
    # the IBAN's digits hold a Luhn-valid card-like group; a password can look like a phone
    assert [f.type for f in find_pii("GB82 WEST 1234 5698 7654 32")] == ["IBAN"]
    assert sanitize("password=555-123-4567x").text == "password=[SECRET]"


def test_non_str_input_is_refused() -> None:
    with pytest.raises(TypeError, match="expected str"):
        sanitize(b"x@y.com")  # type: ignore[arg-type]


def test_hash_user_id_is_keyed_deterministic_hex() -> None:
    h = hash_user_id("jane", "salt-1")
    assert h == hash_user_id("jane", "salt-1")
    assert h == hmac.new(b"salt-1", b"jane", hashlib.sha256).hexdigest()
    assert h != hash_user_id("jane", "salt-2") and h != hash_user_id("john", "salt-1")
    assert re.fullmatch(r"[0-9a-f]{64}", h) and "jane" not in h
    assert re.fullmatch(r"[0-9a-f]{64}", hash_user_id("ünï\u200bcode", ""))


# --------------------------------------------------------------------------- properties

FRAGMENTS = [
    "jane.doe@example.com", "@", ".", "-", " ", ":", "::", "/", "+", "(", ")", "x", "=", "'", '"', "[", "]",
    "555-123-4567", "(555) 123-4567", "+44 20 7946 0958", "020 7946 0958", "4111 1111 1111 1111",
    "4111111111111111", "378282246310005", "078-05-1123", "078051121", "192.168.0.1", "10.0.0.", "2001:db8::1",
    "fe80::", "::ffff:", "%eth0", "/24", "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "GB82", "AL47",
    "sk-demo-8f3a9c2e71b44d06a5e1c3f9", "AKIAIOSFODNN7EXAMPLE", "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "eyJhbGciOiJIUzI1NiJ9", ".eyJzdWIiOiIxMjM0In0.", "Bearer ", "Basic ", "password=", 'password: "', "api_key=",
    "ssn ", "social security ", "phone: ", "call ", "ISBN ", "order #", "version ", "v", "ext", "+1", "00", "(0)",
    "-----BEGIN PRIVATE KEY-----", "MIIBOgIBAAJBAKj34GkxFhD90vcN", "-----END PRIVATE KEY-----",
    "0", "1", "12", "123", "1234", "2024-03-15", "12:30:45", "[EMAIL]", "[PHONE]", "\u200b", "é", "İ", "\n",
    "\\n", "\\\\t", "\\u00a0", "&nbsp;", "&#43;", "%20", "%2B", "%C3%B3", "\u2013", "\u00a0", "00", "0604",
    "Telefon ", "is my mobile", "+43 ",
]  # fmt: skip
pii_soup = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(FRAGMENTS)), max_size=24).map("".join)
# A word right before a number can change what it is ("ISBN 978...", "order #4111..."),
# so the text before an embedded value does not end in an ASCII letter or digit (spaces
# and ".#:" aside), and the text after it does not start with one.
surrounding_before = st.text(max_size=40).filter(lambda s: not re.search(r"[A-Za-z0-9][\s.#:]*\Z", s))
surrounding_after = st.text(max_size=40).filter(lambda s: not re.match(r"[A-Za-z0-9]", s))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), pii_soup))
def test_sanitize_never_raises_and_returns_text(text: str) -> None:
    result = sanitize(text)
    assert isinstance(result.text, str)
    assert sorted(result.counts) == list(result.pii_types) and all(n > 0 for n in result.counts.values())
    findings = find_pii(text)
    assert all(0 <= f.start < f.end <= len(text) for f in findings)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), pii_soup))
def test_sanitize_is_idempotent(text: str) -> None:
    once = sanitize(text).text
    assert sanitize(once).text == once


# Cases where a finding changed its surroundings, found by the property above.
@pytest.mark.parametrize(
    "text",
    [
        "0@0.AA(000)000.0000",  # the phone was glued to the email's last letter
        "+10000000 0@0.AA",  # the email took the phone number's last digit
        "-----BEGIN PRIVATE KEY-----order #4012888888881881",  # the label was inside the key
        "555-123-4567Bearer eyJhbGciOiJIUzI1NiJ9",  # "Bearer" was glued to the phone number
        'password: "fe80::"',  # the quoted value became "[IP_ADDRESS]"
    ],
)
def test_sanitize_is_idempotent_where_findings_touch(text: str) -> None:
    once = sanitize(text)
    assert once.pii_types
    assert sanitize(once.text).text == once.text


def test_sanitize_replaces_exactly_the_findings() -> None:
    text = "x 0@0.AA(000)000.0000 and +10000000 0@0.AA, card 4111-1111-1111-1111."
    out, pos = [], 0
    for f in find_pii(text):
        out += [text[pos : f.start], f"[{f.type}]"]
        pos = f.end
    assert "".join(out) + text[pos:] == sanitize(text).text


def _luhn_complete(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


@st.composite
def cards(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    first = draw(st.sampled_from("23456" if length == 13 else "123456"))
    body = first + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=length - 2, max_size=length - 2)))
    number = _luhn_complete(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(number[i : i + 4] for i in range(0, length, 4)) if sep else number


@st.composite
def ssns(draw: st.DrawFn) -> str:
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    group, serial = draw(st.integers(1, 99)), draw(st.integers(1, 9999))
    sep = draw(st.sampled_from(["-", " "]))
    return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"


@pytest.mark.parametrize(("kind", "values"), [("EMAIL", st.emails()), ("CREDIT_CARD", cards()), ("SSN", ssns())])
def test_embedded_values_are_always_removed(kind: str, values: st.SearchStrategy[str]) -> None:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(before=surrounding_before, value=values, after=surrounding_after)
    def check(before: str, value: str, after: str) -> None:
        text = f"{before} {value} {after}"
        result = sanitize(text)
        assert value not in result.text
        assert kind in result.pii_types

    check()


# --------------------------------------------------------------------------- linear time

ADVERSARIAL = {
    "at-signs": "a@" * 500_000,
    "dash-digits": "1-" * 500_000,
    "pem-without-end": "-----BEGIN PRIVATE KEY-----" + "QUJD" * 250_000,
    "pem-begins": "-----BEGIN PRIVATE KEY-----" * 40_000,
    "digits": "7" * 1_000_000,
    "dotted-digits": "1." * 500_000,
    "colons": "1:" * 500_000,
    "double-colons": "a::" * 333_333,
    "digit-groups": "4111 " * 200_000,
    "plus-ones": "+1 " * 333_333,
    "assignments": "password=" * 111_111,
    "token-run": "sk-" + "a" * 1_000_000 + "é",
    "jwt-ish": "eyJa." * 200_000,
    "domains": "x@" + "b." * 500_000,
    "words": "lorem ipsum dolor sit amet " * 40_000,
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_megabyte_finishes(name: str) -> None:
    # No clock: a quadratic scan would simply hang here (each case takes < 2 s).
    assert isinstance(sanitize(ADVERSARIAL[name]).text, str)


# --------------------------------------------------------------------------- Presidio vectors
# Test cases of Presidio's pattern recognizers (microsoft/presidio, MIT), collected in
# shared/data/presidio_recognizer_vectors.json; see shared/data/README.md for provenance.

PRESIDIO_TO_CL = {
    "CREDIT_CARD": "CREDIT_CARD",
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "US_SSN": "SSN",
    "IP_ADDRESS": "IP_ADDRESS",
    "IBAN_CODE": "IBAN",
}
# What this implementation reaches, measured, with the misses it makes on purpose:
# - SSN: Presidio also accepts the "very weak" 3-6 and 5-4 shapes (078-051121, 07805-1121:
#   the latter is a ZIP+4) and a bare 9-digit number with no context; CL does not.
# - IP_ADDRESS: "::" / "::/0" (no host, and C++/Haskell syntax) and "192.168.1.1.1"
#   (five dotted parts read as a version) are not flagged.
MIN_RECALL = {"EMAIL": 1.0, "PHONE": 1.0, "CREDIT_CARD": 1.0, "SSN": 0.57, "IP_ADDRESS": 0.93, "IBAN": 1.0}
MIN_NEGATIVE_ACCURACY = 1.0  # no vector that Presidio calls negative is flagged as that type


def _shared_data() -> Path:
    env = os.environ.get("CL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def load_presidio_vectors() -> list[dict]:
    """The vectors from shared/ beside the clone (or $CL_SHARED_DATA); missing data fails
    the run on CI and skips the test elsewhere."""
    path = _shared_data() / "presidio_recognizer_vectors.json"
    if not path.is_file():
        message = f"{path} is missing: put shared/ beside the clone or set CL_SHARED_DATA"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def presidio_vectors() -> list[dict]:
    return load_presidio_vectors()


def test_missing_shared_data_fails_on_ci_and_skips_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CL_SHARED_DATA", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing"):
        load_presidio_vectors()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="missing"):
        load_presidio_vectors()


def agreement(vectors: list[dict]) -> dict[str, dict[str, float]]:
    """Per CL type: recall over the labelled spans (a span counts as found when a finding of
    that type overlaps it), and the share of negative vectors with no finding of that type."""
    tally: dict[str, dict[str, int]] = {
        t: {"spans": 0, "found": 0, "negatives": 0, "clean": 0} for t in PRESIDIO_TO_CL.values()
    }
    for v in vectors:
        kind = PRESIDIO_TO_CL.get(v["entity_type"])
        if kind is None:
            continue
        hits = [f for f in find_pii(v["text"]) if f.type == kind]
        t = tally[kind]
        if v["expected_count"] == 0:
            t["negatives"] += 1
            t["clean"] += not hits
        elif v["spans"]:
            for start, end in v["spans"]:
                t["spans"] += 1
                t["found"] += any(f.start < end and start < f.end for f in hits)
        else:  # a count without offsets
            t["spans"] += v["expected_count"]
            t["found"] += min(len(hits), v["expected_count"])
    return {
        kind: {
            "recall": t["found"] / t["spans"],
            "negative_accuracy": t["clean"] / t["negatives"] if t["negatives"] else 1.0,
            "spans": t["spans"],
            "negatives": t["negatives"],
        }
        for kind, t in tally.items()
    }


def test_agrees_with_presidio_recognizer_vectors(presidio_vectors: list[dict]) -> None:
    scores = agreement(presidio_vectors)
    for kind, s in scores.items():
        assert s["spans"] > 0, kind
        assert s["recall"] >= MIN_RECALL[kind], (kind, s)
        assert s["negative_accuracy"] >= MIN_NEGATIVE_ACCURACY, (kind, s)


def test_presidio_ssn_vectors_missed_on_purpose_are_found_with_context() -> None:
    assert find_pii("078051121") == []
    assert [f.type for f in find_pii("SSN 078051121")] == ["SSN"]
