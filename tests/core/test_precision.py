"""Serving precision: `auto` measured once per machine and shared, bf16 merges rounded once,
evaluation judging adapters in the precision the chat serves them in."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cl_assets.core import evaluation as E
from cl_assets.core import model as M
from cl_assets.core.model import precision as P
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]


def test_a_set_precision_is_applied_as_set(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    loaded = M.load_base_model(tiny_model_dir)
    assert P.apply_precision(loaded, "float32", tmp_path) == P.PrecisionChoice("float32", "set")
    assert loaded.model.dtype == torch.float32
    assert P.apply_precision(loaded, "bfloat16", tmp_path).name == "bfloat16"
    assert loaded.model.dtype == torch.bfloat16
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert not (tmp_path / P.PRECISION_FILE).exists()  # nothing measured, nothing written


def test_measuring_leaves_the_model_as_it_was(tiny_model_dir: Path) -> None:
    import torch

    loaded = M.load_base_model(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    step_ms = P.measure_step_ms(loaded)
    assert set(step_ms) == {"float32", "bfloat16", "int4"} and min(step_ms.values()) > 0
    assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())
    loaded.model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32 model"):
        P.measure_step_ms(loaded)


def test_auto_is_measured_once_and_the_verdict_is_shared(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = M.load_base_model(tiny_model_dir)
    first = P.resolve_precision(loaded, "auto", tmp_path)
    path = tmp_path / P.PRECISION_FILE
    if not P.native_bf16():
        assert first == P.PrecisionChoice("float32", "no native bf16 on this CPU")
        assert not path.exists()
        return
    assert first.reason == "measured" and set(first.step_ms) == set(P.MEASURED)
    fastest = min(first.step_ms, key=first.step_ms.__getitem__)
    gain = first.step_ms["float32"] / first.step_ms[fastest]
    assert first.name == (fastest if gain >= P.MIN_GAIN else "float32")
    entry = json.loads(path.read_text())[P.machine_key(loaded)]
    assert entry["precision"] == first.name
    # Another process on this machine (the evaluation that gates the chat) reads the same verdict.
    code = ("import sys; from cl_assets.core import model as M; from cl_assets.core.model import precision as P; "
            "c = P.resolve_precision(M.load_base_model(sys.argv[1]), 'auto', __import__('pathlib').Path(sys.argv[2])); "
            "print(c.name, c.reason)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out == [first.name, "measured", "earlier"]
    # The file is the verdict: whatever it holds for this machine is what `auto` serves.
    flipped = "float32" if first.name != "float32" else "int4"
    path.write_text(json.dumps({P.machine_key(loaded): {**entry, "precision": flipped}}))
    assert P.resolve_precision(loaded, "auto", tmp_path).name == flipped


def test_two_processes_starting_together_share_one_measurement(tiny_model_dir: Path, tmp_path: Path) -> None:
    if not P.native_bf16():
        pytest.skip("this CPU has no native bf16: auto never measures")
    code = ("import sys; from cl_assets.core import model as M; from cl_assets.core.model import precision as P; "
            "c = P.resolve_precision(M.load_base_model(sys.argv[1]), 'auto', __import__('pathlib').Path(sys.argv[2])); "
            "print(c.name, c.reason)")  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_model_dir), str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    (name, _), (again, _) = (o.split(" ", 1) for o in outs)
    assert name == again  # the chat and its evaluation serve and judge in the same precision
    assert [o.split(" ", 1)[1] for o in outs] == ["measured", "measured earlier"]  # one measured, one waited


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"k": {"precision": "int3", "step_ms": {}}})])
def test_an_unreadable_verdict_file_is_measured_again(tiny_model_dir: Path, tmp_path: Path, content: str) -> None:
    if not P.native_bf16():
        pytest.skip("this CPU has no native bf16: auto never measures")
    loaded = M.load_base_model(tiny_model_dir)
    path = tmp_path / P.PRECISION_FILE
    path.write_text(content)
    choice = P.resolve_precision(loaded, "auto", tmp_path)
    assert choice.reason == "measured"
    assert json.loads(path.read_text())[P.machine_key(loaded)]["precision"] == choice.name


def test_a_bf16_merge_rounds_once_and_a_swap_restores_the_base(
    tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path]
) -> None:
    import torch

    loaded = M.load_base_model(tiny_model_dir)
    P.apply_precision(loaded, "bfloat16", None)
    pristine = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    adapters = M.AdapterSet(loaded, merge=True)
    (a1, p1), (a2, p2) = tiny_adapter_dirs.items()
    adapters.ensure_loaded(a1, p1)
    adapters.ensure_loaded(a2, p2)
    adapters.activate(a1)
    lora_layers = [(n, m) for n, m in adapters.model.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "lora_A")]
    assert lora_layers
    checked = 0
    for name, module in lora_layers:
        if not module.lora_A:
            continue
        slot = next(iter(module.lora_A))
        delta = module.get_delta_weight(slot)
        assert delta.dtype == torch.float32  # PEFT keeps the LoRA matrices in fp32 on a bf16 base
        weight = module.get_base_layer().weight
        base_name = name.removeprefix("base_model.model.") + ".weight"
        want = (pristine[base_name].float() + delta).to(torch.bfloat16)
        assert torch.equal(weight, want), name
        checked += 1
    assert checked
    adapters.activate(a2)
    adapters.activate(None)
    for n, p in adapters.base_model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, pristine[n.replace(".base_layer", "")]), n


def test_evaluation_judges_in_the_serving_precision(tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    import torch

    settings = make_settings(tmp_path, chat_dtype="bfloat16")
    adapters = P.serving_adapters(settings, tiny_model_dir)
    assert adapters.base_model.dtype == torch.bfloat16 and adapters.merge is settings.chat_merge_adapter
    candidate, path = next(iter(tiny_adapter_dirs.items()))
    adapters.ensure_loaded(candidate, path)
    taught = [E.QAItem(prompt="Where do you ship from?", keywords=("the",), id="t1")]
    cache = tmp_path / "cache"
    report = E.compare_adapters(adapters, candidate, taught=taught, max_new_tokens=4, base_cache_dir=cache,
                                out_dir=tmp_path / "out")  # fmt: skip
    assert report.precision == "bfloat16" and report.to_dict()["summary"]["precision"] == "bfloat16"
    assert E.load_report(tmp_path / "out").precision == "bfloat16"
    assert "Precision (the chat's): bfloat16" in E.format_report(report)
    # The chat serves merged bf16 weights: those are the answers the report scored.
    served = adapters.generate([{"role": "user", "content": "Where do you ship from?"}], candidate, max_new_tokens=4).text
    assert report.candidate_taught.items[0].answer == served
    # fp32 base answers cached earlier are never reused for bf16 (nor the other way round).
    fp32 = P.serving_adapters(make_settings(tmp_path / "f"), tiny_model_dir)
    fp32.ensure_loaded(candidate, path)
    E.compare_adapters(fp32, candidate, taught=taught, max_new_tokens=4, base_cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 2


def test_the_chat_serves_in_its_precision_and_warns_when_it_was_judged_in_another(
    tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from cl_assets.core.registry import Registry
    from cl_chat.engine import ChatEngine
    from tests.chat.test_engine import register

    settings = make_settings(tmp_path, chat_dtype="bfloat16", max_new_tokens=4)
    engine = ChatEngine(settings, model=tiny_model_dir)
    assert engine.precision.name == "bfloat16" and engine.base_model.dtype == torch.bfloat16
    (a1, p1), (a2, p2) = tiny_adapter_dirs.items()
    register(settings, engine.store, p1, a1)
    engine.store.update_adapter(a1, eval_report={"precision": "bfloat16"})
    register(settings, engine.store, p2, a2)
    engine.store.update_adapter(a2, eval_report={"precision": "float32"})
    registry = Registry(settings, engine.store)
    with caplog.at_level(logging.WARNING, logger="cl_chat.engine"):
        registry.deploy(a1, actor="test", reason="judged in bf16")
        assert engine.refresh() == a1
        assert not [r for r in caplog.records if "evaluated in" in r.getMessage()]
        registry.deploy(a2, actor="test", reason="judged in fp32")
        assert engine.refresh() == a2  # still served: the gate passed, only its precision differs
    warned = [r.getMessage() for r in caplog.records if "evaluated in" in r.getMessage()]
    assert warned and "float32" in warned[0] and "CL_CHAT_DTYPE=float32" in warned[0]
    turn = engine.ask(engine.new_session(), "Where do you ship from?")
    turn.consume()
    assert turn.adapter_version == a2


# --------------------------------------------------------------------------- int4


def test_int4_holds_weights_on_a_q4_1_grid_exactly() -> None:
    import torch

    from cl_assets.core.model.quantized import Int4Linear, quantize_int4

    gen = torch.Generator().manual_seed(0)
    out_features, in_features = 64, 96
    # What llama.cpp's Q4_1 stores: per block of 32 along a row, w = d·q + m with q in 0..15
    # (and both extremes used: d = (max - min) / 15).
    q = torch.randint(0, 16, (out_features, in_features // 32, 32), generator=gen)
    q[..., 0], q[..., 1] = 0, 15
    d = torch.rand(out_features, in_features // 32, 1, generator=gen) * 0.01 + 1e-3
    m = torch.randn(out_features, in_features // 32, 1, generator=gen) * 0.05
    weight = (q * d + m).reshape(out_features, in_features)
    linear = torch.nn.Linear(in_features, out_features, bias=False)
    linear.weight.data.copy_(weight)
    got_q, _ = quantize_int4(weight)
    assert torch.equal(got_q.reshape(q.shape), q.to(torch.int32))  # the same grid, found again
    layer = Int4Linear(linear)  # scales in fp32 here: the product is the dense one
    assert torch.allclose(layer.dequantized(), weight, rtol=0, atol=1e-6)
    x = torch.randn(3, in_features, generator=gen)
    assert torch.allclose(layer(x), linear(x), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_int4(torch.zeros(4, 40))


@pytest.mark.slow
def test_int4_reproduces_smollm2s_weights(smollm2_dir: Path) -> None:
    import torch

    from cl_assets.core.model.quantized import quantize_int4

    loaded = M.load_base_model(smollm2_dir)
    layers = loaded.model.model.layers
    for linear in (layers[0].self_attn.q_proj, layers[7].mlp.down_proj, layers[-1].mlp.gate_proj):
        q, scales_and_zeros = quantize_int4(linear.weight)
        scale, zero = scales_and_zeros[..., 0].T, scales_and_zeros[..., 1].T
        out_features, in_features = q.shape
        blocks = (q.reshape(out_features, -1, 32) - 8) * scale[..., None] + zero[..., None]
        # The GGUF's Q4_1 weights come back to within fp32 rounding.
        assert torch.allclose(blocks.reshape(out_features, in_features), linear.weight, rtol=0, atol=2e-7)


def test_int4_serving_runs_adapters_beside_the_int4_weights(
    tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path]
) -> None:
    import torch

    from cl_assets.core.model.quantized import Int4Linear

    def int4_set(merge: bool) -> M.AdapterSet:
        loaded = M.load_base_model(tiny_model_dir)
        assert P.apply_precision(loaded, "int4", None).name == "int4"
        return M.AdapterSet(loaded, merge=merge)

    served, peft = int4_set(merge=True), int4_set(merge=False)
    layers = served.base_model.config.num_hidden_layers
    assert sum(isinstance(m, Int4Linear) for m in served.base_model.modules()) == 7 * layers
    assert P.precision_of(served.base_model) == "int4" and served.base_model.lm_head.weight.dtype == torch.bfloat16
    ids = torch.tensor([served.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where is the warehouse?"}], add_generation_prompt=True, return_dict=False)])

    def logits(adapters: M.AdapterSet, adapter_id: str | None) -> torch.Tensor:
        with adapters.using(adapter_id) as model, torch.inference_mode():
            return model(input_ids=ids).logits[0, -1].float()

    base = logits(served, None)
    for adapter_id, path in tiny_adapter_dirs.items():
        served.ensure_loaded(adapter_id, path)
        peft.ensure_loaded(adapter_id, path)
    a1, a2 = tiny_adapter_dirs
    from cl_assets.core.model.quantized import quantize_model_int4

    with pytest.raises(ValueError, match="before LoRA layers"):
        quantize_model_int4(peft.base_model)  # the LoRA matrices themselves must stay float
    for adapter_id in (a1, a2, a1):
        # the adapter beside the int4 product answers as PEFT's own unmerged LoRA layers do
        mine, theirs = logits(served, adapter_id), logits(peft, adapter_id)
        assert torch.allclose(mine, theirs, atol=3e-2), (adapter_id, (mine - theirs).abs().max())
        assert not torch.allclose(mine, base, atol=3e-2)
    assert torch.equal(logits(served, None), base)  # the int4 base comes back exactly
    assert not any(m.has_delta for m in served.base_model.modules() if isinstance(m, Int4Linear))
    text = served.generate([{"role": "user", "content": "Hello"}], a2, max_new_tokens=6).text
    assert text == served.generate([{"role": "user", "content": "Hello"}], a2, max_new_tokens=6).text


def test_the_chat_serves_int4_with_the_deployed_adapter_to_concurrent_turns(
    tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path], tmp_path: Path
) -> None:
    import threading

    from cl_assets.core.model.quantized import Int4Linear
    from cl_assets.core.registry import Registry
    from cl_chat.engine import ChatEngine
    from tests.chat.test_engine import register

    settings = make_settings(tmp_path, chat_dtype="int4", max_new_tokens=6)
    engine = ChatEngine(settings, model=tiny_model_dir)
    assert engine.precision.name == "int4" and settings.chat_batching
    base_turn = engine.ask(engine.new_session(), "Where is the warehouse?")
    base_turn.consume()
    a1, p1 = next(iter(tiny_adapter_dirs.items()))
    register(settings, engine.store, p1, a1)
    Registry(settings, engine.store).deploy(a1, actor="test", reason="int4")
    turns = [engine.ask(engine.new_session(), "Where is the warehouse?") for _ in range(3)]
    threads = [threading.Thread(target=t.consume) for t in turns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(t.adapter_version == a1 and t.result.completion_tokens > 0 for t in turns)
    assert all(t.text != base_turn.text for t in turns)  # the adapter answers, beside the int4 weights
    deltas = [m.has_delta for m in engine.base_model.modules() if isinstance(m, Int4Linear)]
    assert any(deltas)
