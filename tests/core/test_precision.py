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


def _native_bf16() -> bool:
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_a_set_precision_is_applied_as_set(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    loaded = M.load_base_model(tiny_model_dir)
    assert P.apply_precision(loaded, "float32", tmp_path) == P.PrecisionChoice("float32", "set")
    assert loaded.model.dtype == torch.float32
    assert P.apply_precision(loaded, "bfloat16", tmp_path).dtype == "bfloat16"
    assert loaded.model.dtype == torch.bfloat16
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert not (tmp_path / P.PRECISION_FILE).exists()  # nothing measured, nothing written


def test_measuring_leaves_the_model_as_it_was(tiny_model_dir: Path) -> None:
    import torch

    loaded = M.load_base_model(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    fp32_ms, bf16_ms = P.measure_step_ms(loaded)
    assert fp32_ms > 0 and bf16_ms > 0
    assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())
    loaded.model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32 model"):
        P.measure_step_ms(loaded)


def test_auto_is_measured_once_and_the_verdict_is_shared(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = M.load_base_model(tiny_model_dir)
    first = P.resolve_precision(loaded, "auto", tmp_path)
    path = tmp_path / P.PRECISION_FILE
    if not _native_bf16():
        assert first == P.PrecisionChoice("float32", "no native bf16 on this CPU")
        assert not path.exists()
        return
    assert first.reason == "measured" and first.float32_ms and first.bfloat16_ms
    assert first.dtype == ("bfloat16" if first.float32_ms / first.bfloat16_ms >= P.MIN_GAIN else "float32")
    entry = json.loads(path.read_text())[P.machine_key(loaded)]
    assert entry["dtype"] == first.dtype
    # Another process on this machine (the evaluation that gates the chat) reads the same verdict.
    code = ("import sys; from cl_assets.core import model as M; from cl_assets.core.model import precision as P; "
            "c = P.resolve_precision(M.load_base_model(sys.argv[1]), 'auto', __import__('pathlib').Path(sys.argv[2])); "
            "print(c.dtype, c.reason)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out == [first.dtype, "measured", "earlier"]
    # The file is the verdict: whatever it holds for this machine is what `auto` serves.
    flipped = "float32" if first.dtype == "bfloat16" else "bfloat16"
    path.write_text(json.dumps({P.machine_key(loaded): {**entry, "dtype": flipped}}))
    assert P.resolve_precision(loaded, "auto", tmp_path).dtype == flipped


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"k": {"dtype": "int4"}})])
def test_an_unreadable_verdict_file_is_measured_again(tiny_model_dir: Path, tmp_path: Path, content: str) -> None:
    if not _native_bf16():
        pytest.skip("this CPU has no native bf16: auto never measures")
    loaded = M.load_base_model(tiny_model_dir)
    path = tmp_path / P.PRECISION_FILE
    path.write_text(content)
    choice = P.resolve_precision(loaded, "auto", tmp_path)
    assert choice.reason == "measured"
    assert json.loads(path.read_text())[P.machine_key(loaded)]["dtype"] == choice.dtype


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
    assert report.dtype == "bfloat16" and report.to_dict()["summary"]["dtype"] == "bfloat16"
    assert E.load_report(tmp_path / "out").dtype == "bfloat16"
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
    assert engine.precision.dtype == "bfloat16" and engine.base_model.dtype == torch.bfloat16
    (a1, p1), (a2, p2) = tiny_adapter_dirs.items()
    register(settings, engine.store, p1, a1)
    engine.store.update_adapter(a1, eval_report={"dtype": "bfloat16"})
    register(settings, engine.store, p2, a2)
    engine.store.update_adapter(a2, eval_report={"dtype": "float32"})
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
