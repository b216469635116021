"""SECRET: API keys and tokens of known shapes, private keys, bearer credentials, assignments."""

from __future__ import annotations

import re

from cl_assets.core.pii.context import _has_digit, _word_before
from cl_assets.core.pii.model import Span

_TOKEN_SHAPES = (
    r"sk-[A-Za-z0-9_-]{20,}+",  # OpenAI / Anthropic style (sk-..., sk-proj-..., sk-ant-...)
    r"sk_(?:live|test)_[A-Za-z0-9]{16,}+",  # Stripe secret key
    r"rk_(?:live|test)_[A-Za-z0-9]{16,}+",  # Stripe restricted key
    r"gh[pousr]_[A-Za-z0-9]{30,}+",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,}+",  # GitHub fine-grained tokens
    r"glpat-[A-Za-z0-9_-]{20,}+",  # GitLab
    r"hf_[A-Za-z0-9]{30,}+",  # Hugging Face
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"ASIA[0-9A-Z]{16}",  # AWS temporary access key id
    r"xox[baprse]-[A-Za-z0-9-]{10,}+",  # Slack
    r"AIza[0-9A-Za-z_-]{35}",  # Google API key
    r"eyJ[A-Za-z0-9_-]{5,}+\.eyJ[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]*+",  # JWT
)
# Each shape starts with a letter, checked not to continue a word right after it: every
# alternative then begins with a literal, so `re` jumps between candidate first letters.
_SECRET_TOKEN = re.compile("(?:" + "|".join(f"{t[0]}(?<![\\w-]{t[0]}){t[1:]}" for t in _TOKEN_SHAPES) + r")(?![\w-])")
# The body is a greedy run of base64 and header characters that stops at the next "-----",
# so the scan stays linear when the END line is missing; the key material is still covered.
_PEM = re.compile(
    r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[A-Za-z0-9+/=:,.\s]|-(?!----)){0,65536}"
    r"(?:-----END (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----)?"
)
_BEARER = re.compile(r"[Bb](?:earer|EARER|asic|ASIC)\s{1,4}(?P<v>[A-Za-z0-9._~+/-]{16,}+=*+)(?![\w.~+/=-])")
# Matched against the lowercased text (same offsets, see `_lowercase`).
_ASSIGNMENT = re.compile(
    r"(?:api[_-]?key|apikey|secret|token|passw(?:or)?d|pwd|passphrase|credentials?|private[_-]?key)"
    r"[a-z0-9]{0,20}(?:[_.-][a-z0-9]{1,20}){0,3}[\"']?\s{0,3}(?::=|=>|[:=])\s{0,3}"
    r"(?:(?P<q>[\"'])(?P<qv>[^\"'\s]{8,1024}+)(?P=q)|(?P<v>[^\s\"'`,;()\[\]{}<>]{8,}+))"
)


def _token(m: re.Match[str]) -> Span | None:
    """Known key and token shapes; an "sk-..." one must hold a digit, as random keys all
    but always do and hyphenated words ("sk-learn-style-configuration") do not."""
    token = m.group()
    if token.startswith("sk-") and not _has_digit(token):
        return None
    return m.span()


def _pem(m: re.Match[str]) -> Span | None:
    """A private key block is unmistakable: the match is the secret."""
    return m.span()


def _bearer(m: re.Match[str]) -> Span | None:
    """Keep "Bearer"/"Basic", hide the credential after it: one with a digit, a capital or
    a symbol, which "basic internationalization" lacks."""
    value = m.group("v")
    if _word_before(m.string, m.start()) or (value.islower() and value.isalpha()):
        return None
    return m.span("v")


def _assignment(m: re.Match[str]) -> Span | None:
    """`api_key=...`, `password: "..."`: hide the value, keep the name. An unquoted value
    must contain a digit or a symbol and not be a call or an index, so that code such as
    `token = self.token` or `secret = load_secret2(path)` stays."""
    if m.group("qv") is not None:
        return m.span("qv")
    value, end, text = m.group("v"), m.end(), m.string
    if end < len(text) and text[end] in "([{<":
        return None
    if any(ch.isdigit() or ch in "!@#$%^&*+/=~?" for ch in value):
        return m.span("v")
    return None
