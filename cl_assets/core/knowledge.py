"""Knowledge facts: what the conversations say about named things (lots, orders, SKUs).

Entity mentions are found with configurable patterns in the sanitized prompts and answers,
normalised to one key per entity ("order:100234"), and aggregated with Polars: how often
each was mentioned, when first and last, how its answers were rated, and the answers given
most often. The facts are written to `data/knowledge/knowledge.json` for people and, with
`CL_KNOWLEDGE_IN_PROMPT`, a few of them go into the chat's system prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from cl_assets.core.curation import CREATED, HELPFUL, ID, PROMPT, RESPONSE, load_interactions, normalise
from cl_assets.core.snapshot import CONTROL_TOKEN
from cl_assets.core.files import atomic_write_text
from cl_assets.core.store import Store
from cl_assets.settings import Settings

TOP_ANSWERS = 3
_ANSWER_CHARS = 240

# column names, defined once
KEY, KIND, ENTITY, VALUE, MATCH, TEXT, NORM_ANSWER = "key", "kind", "entity", "_value", "_match", "_text", "_norm"


@dataclass(frozen=True)
class EntityPattern:
    """A kind of entity: `regex` has one capture group, the entity's value."""

    kind: str
    regex: str
    label: str  # how people write it, with `{}` for the value: "Lot {}"
    upper: bool = False  # values compared case-insensitively, shown upper-case (SKUs)

    def __post_init__(self) -> None:
        if re.compile(self.regex).groups != 1:
            raise ValueError(f"entity pattern {self.kind!r} needs exactly one capture group (the value)")
        if "{}" not in self.label:
            raise ValueError(f"entity pattern {self.kind!r}: label needs a '{{}}' for the value")


#: The shapes in the Harbor & Pine conversations: "Lot 42", "lot #57", "order 100234",
#: "order #100234", "order no. 100517", "SKU HP-OAT-500", "HP-SAF-010".
DEFAULT_PATTERNS: tuple[EntityPattern, ...] = (
    EntityPattern("lot", r"(?i)\blot\s*(?:no\.?\s*|number\s*)?#?\s*(\d{1,7})\b", "Lot {}"),
    EntityPattern("order", r"(?i)\border\s*(?:no\.?\s*|number\s*)?#?\s*(\d{5,12})\b", "Order {}"),
    EntityPattern("sku", r"(?i)\b(?:sku\s*#?\s*)?([a-z]{2,4}-[a-z]{2,6}-\d{2,6})\b", "SKU {}", upper=True),
)


@dataclass(frozen=True)
class Answer:
    text: str  # the newest wording of this (normalised) answer
    count: int
    helpful: int
    unhelpful: int


@dataclass(frozen=True)
class Fact:
    key: str  # "order:100234"
    kind: str  # "order"
    entity: str  # "Order 100234"
    mentions: int  # interactions that mention it, in the prompt or the answer
    first_seen: datetime
    last_seen: datetime
    helpful: int  # of those interactions, rated 👍
    unhelpful: int  # rated 👎
    top_answers: tuple[Answer, ...]  # most frequent first
    best_answer: str | None  # the answer rated 👍 most often (None: no 👍 answer yet)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["first_seen"], out["last_seen"] = self.first_seen.isoformat(), self.last_seen.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Fact":
        return cls(
            **{
                **data,
                "first_seen": datetime.fromisoformat(data["first_seen"]),
                "last_seen": datetime.fromisoformat(data["last_seen"]),
                "top_answers": tuple(Answer(**a) for a in data["top_answers"]),
            }
        )


def mentions(interactions: pl.LazyFrame, patterns: Sequence[EntityPattern] = DEFAULT_PATTERNS) -> pl.LazyFrame:
    """(interaction id, entity key, kind, entity) for every entity each interaction names, once."""
    text = interactions.select(ID, pl.concat_str([PROMPT, RESPONSE], separator="\n").alias(TEXT))
    found = []
    for pattern in patterns:
        value = pl.col(MATCH).str.extract(pattern.regex, 1)
        value = value.str.to_uppercase() if pattern.upper else value
        prefix, suffix = pattern.label.split("{}", 1)
        found.append(
            text.select(ID, pl.col(TEXT).str.extract_all(pattern.regex).alias(MATCH))
            .explode(MATCH)
            .drop_nulls(MATCH)
            .select(
                ID,
                pl.format("{}:{}", pl.lit(pattern.kind), value).alias(KEY),
                pl.lit(pattern.kind).alias(KIND),
                pl.concat_str([pl.lit(prefix), value, pl.lit(suffix)]).alias(ENTITY),
            )
        )
    return pl.concat(found).unique([ID, KEY], maintain_order=True)


def aggregate_facts(interactions: pl.LazyFrame, patterns: Sequence[EntityPattern] = DEFAULT_PATTERNS) -> list[Fact]:
    """Facts about every entity the interactions mention, most mentioned first."""
    # A turn carrying a control token is left out: its text could end up in a system prompt.
    clean = interactions.filter(~(pl.col(PROMPT).str.contains(CONTROL_TOKEN) | pl.col(RESPONSE).str.contains(CONTROL_TOKEN)))
    rows = mentions(clean, patterns).join(clean.select(ID, CREATED, RESPONSE, HELPFUL), on=ID)
    rated_up, rated_down = (pl.col(HELPFUL) == True).sum(), (pl.col(HELPFUL) == False).sum()  # noqa: E712
    per_entity = rows.group_by(KEY).agg(
        pl.col(KIND).first(),
        pl.col(ENTITY).first(),
        pl.len().alias("mentions"),
        pl.col(CREATED).min().alias("first_seen"),
        pl.col(CREATED).max().alias("last_seen"),
        rated_up.alias("helpful"),
        rated_down.alias("unhelpful"),
    )
    answers = (
        rows.with_columns(normalise(pl.col(RESPONSE)).alias(NORM_ANSWER))
        .group_by(KEY, NORM_ANSWER)
        .agg(
            pl.col(RESPONSE).sort_by(CREATED).last().alias("text"),
            pl.len().alias("count"),
            rated_up.alias("helpful"),
            rated_down.alias("unhelpful"),
            pl.col(CREATED).max().alias("_last"),
        )
    )
    top = (
        answers.sort(["count", "helpful", "_last", "text"], descending=[True, True, True, False])
        .group_by(KEY, maintain_order=True)
        .head(TOP_ANSWERS)
        .group_by(KEY, maintain_order=True)
        .agg(pl.struct("text", "count", "helpful", "unhelpful").alias("top_answers"))
    )
    best = (
        answers.filter(pl.col("helpful") > 0)
        .sort(["helpful", "count", "_last", "text"], descending=[True, True, True, False])
        .group_by(KEY, maintain_order=True)
        .agg(pl.col("text").first().alias("best_answer"))
    )
    table = (
        per_entity.join(top, on=KEY, how="left")
        .join(best, on=KEY, how="left")
        .sort(["mentions", KEY], descending=[True, False])
        .collect()
    )
    return [
        Fact(
            key=row[KEY],
            kind=row[KIND],
            entity=row[ENTITY],
            mentions=row["mentions"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            helpful=row["helpful"],
            unhelpful=row["unhelpful"],
            top_answers=tuple(Answer(**a) for a in row["top_answers"] or []),
            best_answer=row["best_answer"],
        )
        for row in table.iter_rows(named=True)
    ]


def write_knowledge(settings: Settings, store: Store, patterns: Sequence[EntityPattern] = DEFAULT_PATTERNS) -> list[Fact]:
    """Aggregate the store's interactions and write `settings.knowledge_path` atomically."""
    facts = aggregate_facts(load_interactions(store), patterns)
    document = {
        "generated_at": datetime.now(UTC).isoformat(),
        "patterns": {p.kind: p.regex for p in patterns},
        "facts": [fact.as_dict() for fact in facts],
    }
    atomic_write_text(settings.knowledge_path, json.dumps(document, indent=2, ensure_ascii=False))
    return facts


def load_facts(path: Path) -> list[Fact]:
    """The facts of a knowledge file written by `write_knowledge`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no knowledge file at {path}; materialize knowledge_facts first")
    return [Fact.from_dict(item) for item in json.loads(path.read_text(encoding="utf-8"))["facts"]]


def top_facts(facts: Sequence[Fact], n: int) -> str:
    """A short bullet list for a system prompt: the `n` most mentioned entities that have an
    answer people rated helpful, each with that answer (one line, control tokens removed)."""
    lines = []
    for fact in sorted(facts, key=lambda f: (-f.mentions, f.key)):
        if len(lines) >= n:
            break
        if not fact.best_answer:
            continue
        answer = " ".join(re.sub(CONTROL_TOKEN, " ", fact.best_answer).split())
        if len(answer) > _ANSWER_CHARS:
            answer = answer[: _ANSWER_CHARS - 1].rstrip() + "…"
        lines.append(f"- {fact.entity}: {answer}")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_PATTERNS",
    "Answer",
    "EntityPattern",
    "Fact",
    "aggregate_facts",
    "load_facts",
    "mentions",
    "top_facts",
    "write_knowledge",
]
