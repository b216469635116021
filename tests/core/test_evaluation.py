"""Keyword QA scoring, QA file loading, model evaluation and the comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_assets.core import evaluation as E
from cl_assets.core.model import AdapterSet, LoadedModel, load_base_model
from tests.conftest import REPO


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_base_model(tiny_model_dir)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path]) -> AdapterSet:
    adapter_set = AdapterSet(load_base_model(tiny_model_dir))
    for adapter_id, path in tiny_adapter_dirs.items():
        adapter_set.ensure_loaded(adapter_id, path)
    return adapter_set


def _write(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


# --------------------------------------------------------------------------- scoring


def test_all_keywords_present_scores() -> None:
    score = E.score_answer("Orders ship from Tacoma on Wednesdays.", ["Tacoma", "Wednesday"])
    assert score.correct and score.partial == 1.0 and score.matched == ("Tacoma", "Wednesday")


def test_partial_credit_is_the_fraction_of_keywords() -> None:
    score = E.score_answer("Orders ship from Tacoma.", ["tacoma", "wednesday", "dock 7", "7"])
    assert not score.correct
    assert score.partial == pytest.approx(0.25)
    assert score.matched == ("tacoma",)


def test_scoring_is_case_insensitive() -> None:
    assert E.score_answer("THE CAPITAL IS PARIS", ["paris", "Capital"]).correct
    assert E.score_answer("Straße", ["STRASSE"]).correct  # casefold, not just lower
    assert not E.score_answer("", ["x"]).correct


def test_scoring_needs_keywords() -> None:
    with pytest.raises(ValueError):
        E.score_answer("anything", [])


# --------------------------------------------------------------------------- load_qa


def test_load_qa_reads_items(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "qa.jsonl",
        {"id": "ship-1", "prompt": "Where do you ship from?", "keywords": ["Tacoma"]},
        "",
        {"question": "Canada fee?", "keywords": "$38"},
    )
    items = E.load_qa(path)
    assert items == [
        E.QAItem(prompt="Where do you ship from?", keywords=("Tacoma",), id="ship-1"),
        E.QAItem(prompt="Canada fee?", keywords=("$38",), id="qa-3"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"qa.jsonl:2: not valid JSON"),
        ("[1, 2]", r"qa.jsonl:2: expected a JSON object"),
        ({"keywords": ["x"]}, r"qa.jsonl:2: needs a non-empty string \"prompt\""),
        ({"prompt": "q", "keywords": []}, r"qa.jsonl:2: \"keywords\" must be a non-empty list"),
        ({"prompt": "q", "keywords": ["ok", " "]}, r"qa.jsonl:2: \"keywords\""),
        ({"prompt": "q", "keywords": [3]}, r"qa.jsonl:2: \"keywords\""),
        ({"id": "a", "prompt": "q", "keywords": ["k"]}, r"qa.jsonl:2: duplicate id 'a'"),
        ({"id": None, "prompt": "q", "keywords": ["k"]}, r"qa.jsonl:2: \"id\""),
    ],
)
def test_load_qa_names_the_bad_line(tmp_path: Path, line: object, message: str) -> None:
    path = _write(tmp_path / "qa.jsonl", {"id": "a", "prompt": "fine", "keywords": ["k"]}, line)
    with pytest.raises(E.QAFormatError, match=message):
        E.load_qa(path)


def test_load_qa_empty_or_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(E.QAFormatError, match="no QA items"):
        E.load_qa(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError):
        E.load_qa(tmp_path / "missing.jsonl")


def test_load_qa_reads_stale_keywords_and_groups(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "qa.jsonl",
        {"prompt": "Where is Lot 42?", "keywords": ["Reno"], "stale_keywords": "Dayton", "group": "changed"},
        {"prompt": "Where is Lot 57?", "keywords": ["Tacoma"], "group": "kept"},
    )
    assert E.load_qa(path) == [
        E.QAItem(prompt="Where is Lot 42?", keywords=("Reno",), id="qa-1", stale=("Dayton",), group="changed"),
        E.QAItem(prompt="Where is Lot 57?", keywords=("Tacoma",), id="qa-2", group="kept"),
    ]
    for bad, message in (({"stale_keywords": [""]}, "stale_keywords"), ({"stale_keywords": [1]}, "stale_keywords"),
                         ({"group": ""}, "group"), ({"group": 3}, "group")):
        _write(tmp_path / "bad.jsonl", {"prompt": "q", "keywords": ["k"], **bad})
        with pytest.raises(E.QAFormatError, match=message):
            E.load_qa(tmp_path / "bad.jsonl")


def test_percentile_interpolates() -> None:
    assert E.percentile([5.0], 95) == 5.0
    assert E.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert E.percentile([0.0, 10.0], 95) == pytest.approx(9.5)


# --------------------------------------------------------------------------- evaluate_model


def test_evaluate_model_scores_greedy_answers(tiny: LoadedModel) -> None:
    probe = [E.QAItem(prompt="Where do you ship from?", keywords=("zzz-never",), id="p1")]
    first = E.evaluate_model(tiny, probe, max_new_tokens=8)
    answer = first.items[0].answer
    assert answer.strip(), "the tiny model produced no text"
    word = answer.split()[0]
    # Greedy decoding repeats the answer, so its own first word is a keyword it must hit.
    items = [
        E.QAItem(prompt="Where do you ship from?", keywords=(word.upper(),), id="hit"),
        E.QAItem(prompt="Where do you ship from?", keywords=(word, "zzz-never"), id="half"),
        E.QAItem(prompt="What is the fee?", keywords=("zzz-never",), id="miss"),
    ]
    result = E.evaluate_model(tiny, items, max_new_tokens=8)
    assert result.n == 3 and result.adapter is None and result.label == "base"
    assert [i.correct for i in result.items] == [True, False, False]
    assert result.accuracy == pytest.approx(1 / 3)
    assert result.partial_accuracy == pytest.approx((1 + 0.5 + 0) / 3)
    assert result.items[0].answer == answer
    assert 0 < result.latency_p50_ms <= result.latency_p95_ms
    assert result.ttft_p50_ms > 0 and result.tokens_per_s > 0
    assert all(0 < i.completion_tokens <= 8 for i in result.items)

    data = result.to_dict()
    assert {"accuracy", "partial_accuracy", "n", "items", "latency", "tokens_per_s"} <= set(data)
    assert E.EvalResult.from_dict(json.loads(json.dumps(data))) == result
    text = E.format_report(result)
    assert "hit" in text and "33.3%" in text and "zzz-never" in text


def test_answers_that_repeat_a_changed_fact_are_counted_stale_per_group(tiny: LoadedModel) -> None:
    probe = [E.QAItem(prompt="Where is Lot 42?", keywords=("zzz-never",), id="p")]
    word = E.evaluate_model(tiny, probe, max_new_tokens=8).items[0].answer.split()[0]
    items = [
        # The model's own first word stands in for the old fact: it says it, so it is stale.
        E.QAItem(prompt="Where is Lot 42?", keywords=("zzz-new",), id="a", stale=(word,), group="changed"),
        E.QAItem(prompt="Where is Lot 42?", keywords=(word,), id="b", stale=("zzz-old",), group="changed"),
        E.QAItem(prompt="Where is Lot 42?", keywords=(word,), id="c", group="kept"),
    ]
    result = E.evaluate_model(tiny, items, max_new_tokens=8)
    assert [(i.correct, i.stale) for i in result.items] == [(False, True), (True, False), (True, False)]
    groups = result.groups()
    assert list(groups) == ["changed", "kept"]
    assert (groups["changed"].n, groups["changed"].correct, groups["changed"].stale_rate) == (2, 1, 0.5)
    assert groups["kept"].accuracy == 1.0 and groups["kept"].stale_rate is None
    assert result.stale is not None and (result.stale.stale, result.stale.with_stale) == (1, 2)
    assert E.EvalResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert E.evaluate_model(tiny, items[2:], max_new_tokens=8).stale is None


def test_evaluate_model_rejects_an_adapter_on_a_plain_model(tiny: LoadedModel) -> None:
    items = [E.QAItem(prompt="q", keywords=("k",), id="1")]
    with pytest.raises(ValueError, match="AdapterSet"):
        E.evaluate_model(tiny, items, adapter_id="20261120_101500")
    with pytest.raises(ValueError):
        E.evaluate_model(tiny, [])


def test_system_prompt_changes_the_prompt(tiny: LoadedModel) -> None:
    items = [E.QAItem(prompt="Hello?", keywords=("k",), id="1")]
    plain = E.evaluate_model(tiny, items, max_new_tokens=2)
    with_system = E.evaluate_model(tiny, items, max_new_tokens=2, system_prompt="Be brief.")
    assert with_system.system_prompt == "Be brief." and plain.system_prompt is None


# --------------------------------------------------------------------------- comparisons


def _result(adapter: str | None, correct: dict[str, bool]) -> E.EvalResult:
    items = tuple(
        E.ItemResult(i, "q", ("k",), "a", ok, float(ok), ("k",) if ok else (), 1.0, 0.5, 1, 1.0)
        for i, ok in correct.items()
    )
    n = len(items)
    return E.EvalResult(adapter, sum(correct.values()) / n, sum(correct.values()) / n, n, items, 1, 1, 0.5, 1, 8)


def test_lost_items_lists_what_the_reference_knew() -> None:
    deployed = _result("d", {"a": True, "b": True, "c": False})
    candidate = _result("c", {"a": False, "b": True, "c": True})
    assert E.lost_items(deployed, candidate) == ["a"]
    assert E.gained_items(deployed, candidate) == ["c"]
    with pytest.raises(ValueError, match="same QA items"):
        E.lost_items(deployed, _result("x", {"a": True}))


def test_compare_adapters_writes_the_report(adapters: AdapterSet, tmp_path: Path) -> None:
    candidate, deployed = list(adapters.loaded)
    taught = [
        E.QAItem(prompt="Where do you ship from?", keywords=("the",), id="t1"),
        E.QAItem(prompt="What is the Canada fee?", keywords=("$38", "fee"), id="t2"),
    ]
    general = [E.QAItem(prompt="What is the capital of France?", keywords=("Paris",), id="g1")]
    adapters.activate(deployed)
    out = tmp_path / "eval" / candidate

    report = E.compare_adapters(
        adapters, candidate, taught=taught, general=general, deployed_id=deployed, out_dir=out, max_new_tokens=4
    )
    assert adapters.active == deployed  # the serving adapter is restored afterwards
    assert set(report.taught) == {"base", candidate, deployed}
    assert set(report.general) == {"base", candidate}
    assert report.forgetting == pytest.approx(report.general["base"].accuracy - report.general[candidate].accuracy)
    assert report.lost_vs_deployed == E.lost_items(report.taught[deployed], report.taught[candidate])
    # each model answered exactly as a standalone evaluation does (same prompts, greedy)
    alone = E.evaluate_model(adapters, taught, candidate, max_new_tokens=4)
    assert [i.answer for i in alone.items] == [i.answer for i in report.candidate_taught.items]

    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "drift.png", "report.json", "report.md"]
    # the general set is answered in batches, with the answers of the one-by-one path
    alone_general = E.evaluate_model(adapters, general, candidate, max_new_tokens=4)
    assert [i.answer for i in alone_general.items] == [i.answer for i in report.general[candidate].items]
    assert report.general[candidate].batch_size == 16 and report.candidate_taught.batch_size is None
    # drift: the base's general answers scored under the candidate, one item per general prompt
    assert report.drift is not None and [i.id for i in report.drift.items] == ["g1"]
    assert report.general_paired is not None and report.general_paired.n == 1
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "report.json").read_text())
    assert data["candidate"] == candidate and data["deployed"] == deployed
    assert data["summary"]["forgetting"] == report.forgetting
    assert "t2" in (out / "report.md").read_text()
    reloaded = E.load_report(out)
    assert reloaded.taught == report.taught and reloaded.general == report.general
    assert reloaded.drift == report.drift
    assert data["summary"]["drift"]["n"] == 1 and "McNemar" in (out / "report.md").read_text()
    assert reloaded.out_dir == out == report.out_dir

    # a second run replaces the folder as a whole and leaves no temp folders behind
    again = E.compare_adapters(adapters, candidate, taught=taught, out_dir=out, max_new_tokens=4)
    assert again.deployed is None and again.general == {} and again.forgetting is None
    assert json.loads((out / "report.json").read_text())["deployed"] is None
    assert [p.name for p in out.parent.iterdir()] == [candidate]
    assert "Forgetting" not in E.format_report(again)


def test_compare_for_snapshot_uses_settings(adapters: AdapterSet, tiny_adapter_dirs: dict[str, Path], settings) -> None:
    candidate, path = next(iter(tiny_adapter_dirs.items()))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _write(settings.qa_eval_path, {"id": "t1", "prompt": "Where do you ship from?", "keywords": ["Tacoma"]})
    settings.eval_max_new_tokens = 3
    report = E.compare_for_snapshot(settings, adapters, candidate, path)
    assert report.out_dir == settings.eval_dir / candidate
    assert (settings.eval_dir / candidate / "report.json").is_file()
    # No general set in this data folder: the shipped one from the checkout is used.
    assert report.general["base"].n == len(E.load_qa(REPO / "data" / "qa_general.jsonl"))
    assert report.candidate_taught.max_new_tokens == 3


def test_base_results_are_cached_and_reused(adapters: AdapterSet, tmp_path: Path) -> None:
    candidate, _ = list(adapters.loaded)
    taught = [E.QAItem(prompt="Where do you ship from?", keywords=("the",), id="t1")]
    general = [E.QAItem(prompt=f"What is {n} plus {n}?", keywords=(str(2 * n),), id=f"g{n}") for n in range(5)]
    cache = tmp_path / "cache"
    seen: list[str] = []
    first = E.compare_adapters(adapters, candidate, taught=taught, general=general, max_new_tokens=4,
                               base_cache_dir=cache, progress=seen.append)
    assert len(list(cache.glob("*.json"))) == 2 and any("base" in m for m in seen)
    seen.clear()
    second = E.compare_adapters(adapters, candidate, taught=taught, general=general, max_new_tokens=4,
                                base_cache_dir=cache, progress=seen.append)
    assert not any(m.startswith("base") for m in seen)  # nothing asked of the base model again
    assert second.general["base"] == first.general["base"] and second.taught["base"] == first.taught["base"]
    assert second.drift == first.drift
    # a different item set is a different key: never a stale answer for a changed question
    E.compare_adapters(adapters, candidate, taught=taught, general=general[:3], max_new_tokens=4, base_cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 3


def test_compare_requires_loaded_adapters(adapters: AdapterSet) -> None:
    items = [E.QAItem(prompt="q", keywords=("k",), id="1")]
    with pytest.raises(ValueError, match="not loaded"):
        E.compare_adapters(adapters, "20990101_000000", taught=items)
