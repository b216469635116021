"""Chat: time to first token and tokens/s with no adapter, with an adapter and after a hot-swap;
swap time against a full reload of the chat engine.

Measured through `cl_chat.engine.ChatEngine` (the engine the web and terminal chats use), on
the real SmolLM2 base, with two LoRA adapters of the shape the platform trains (`TrainConfig`'s:
rank 32 on the linear layers of the upper half; random weights: speed does not depend on what
an adapter learned) registered
and deployed through the registry, as a training cycle would:

- *full reload*: constructing a `ChatEngine` while adapter A is deployed (store, base model
  load, adapter load with its hash check), as restarting the chat would; also the bare
  `load_base_model` + `PeftModel.from_pretrained` without the engine;
- *hot-swap*: the engine serving A, adapter B deployed, `engine.refresh()` (hash check, load B
  into the same base model, activate); a *warm swap* goes back to an adapter already loaded;
- *generation*: `engine.ask(...)` drained, greedy, the same prompts in each state; the turn's
  own `GenerationResult` gives TTFT and tokens/s (completion tokens / latency).

- *one stream*: tokens/s of one answer with adapter A through the engine as shipped (A merged
  into the weights or beside int4 ones, in the serving precision `CL_CHAT_DTYPE=auto` resolves
  to on this CPU, SDPA attention, CL's decode loop), the engine forced to float32, bfloat16 and
  int4, and with eager
  attention, against plain transformers (`model.generate` on a `PeftModel` holding A, float32,
  default attention: the baseline), transformers with eager attention and in bfloat16, and
  llama.cpp (`llama_cpp.Llama` on the same GGUF file, `n_threads=2`, base model, Q4_1) when
  `llama-cpp-python` is installed;
- *concurrency*: 1, 4 and 8 clients (threads of another process, each with its own
  `openai.OpenAI` client, so parsing their chunks does not share the server's interpreter)
  streaming answers from the OpenAI-compatible API at once, as people's programs would: the
  real server (`cl_chat.server.launch`, uvicorn on 127.0.0.1) over a `ChatEngine` with
  continuous batching on, and another with it off (`CL_CHAT_BATCHING`), measured in turns in
  the same run: median TTFT (request sent to the first text chunk) and aggregate tokens/s (all
  completion tokens, from each answer's `usage`, / wall time);
- *training beside* (size full, or `--training-beside`): TTFT of one client while a process
  does real LoRA steps on the same base model, at nice 0 and at CL's nice 10.

Targets: swap < 1 s and ≥ 10× faster than a reload; one stream ≥ 2× plain transformers;
batched aggregate ≥ 2.5× one-at-a-time at 8 clients.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import REPO, Result, median

SIZES = {
    "tiny": {"max_new_tokens": 8, "prompts": 1, "reloads": 1, "swaps": 2, "clients": (1, 2), "beside": False},
    "small": {"max_new_tokens": 32, "prompts": 2, "reloads": 2, "swaps": 4, "clients": (1, 4, 8), "beside": False},
    "full": {"max_new_tokens": 64, "prompts": 5, "reloads": 3, "swaps": 8, "clients": (1, 4, 8), "beside": True},
}
ADAPTERS = ("20261101_000000", "20261102_000000", "20261103_000000")  # A, B, and C for the profile
PROMPTS = [
    "What is the status of Lot 88?",
    "How many days do I have to return an item?",
    "Do you ship to Canada?",
    "What is the capital of France?",
    "What are your customer support hours?",
    "Is there a restocking fee on returns?",
    "Can I change the address of an order that has shipped?",
    "Tell me about your saffron.",
]
SALT = "bench-salt-not-secret"
CL_ROW = "**CL engine as shipped** ({precision}, A {how}, SDPA attention, CL decode loop)"
HF_ROW = "transformers `generate` on a PeftModel with A (float32, default attention): the baseline"
_RESTART = """
import json, time
started = time.perf_counter()
from cl_chat.engine import ChatEngine
from cl_assets.settings import Settings
engine = ChatEngine(Settings(_env_file=None))
print(json.dumps({"seconds": time.perf_counter() - started, "adapter": engine.adapter_id}))
"""


def make_adapter(model_dir: Path, out: Path, seed: int) -> None:
    """A LoRA adapter of the platform's shape (TrainConfig's LoRA) with random, non-zero weights."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from cl_assets.core.training import TrainConfig

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(seed)
    lora = TrainConfig().to_lora_config(base)
    lora.init_lora_weights = False
    get_peft_model(base, lora).save_pretrained(out)


def register(settings: Any, store: Any, adapter_id: str) -> None:
    from cl_assets.core.registry import adapter_dir, files_sha256

    folder = adapter_dir(settings, adapter_id)
    store.add_snapshot(id=adapter_id, path=str(settings.curated_dir / f"curated_{adapter_id}.jsonl"), sha256="0" * 64,
                       n_rows=1)
    store.upsert_adapter(adapter_id, path=str(folder), files_sha256=files_sha256(folder), mode="bench",
                         gate_passed=True)


# Real LoRA steps on the base model (batch 4 × 128 tokens, the platform's LoRA shape) until
# killed, at the nice level given; prints one line once the first step is done.
_TRAINER = """
import sys, torch
from cl_assets.core.priority import lower_cpu_priority
lower_cpu_priority(int(sys.argv[2]))
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from cl_assets.core.training import TrainConfig
base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
model = get_peft_model(base, TrainConfig().to_lora_config(base))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, model.config.vocab_size, (4, 128))
steps = 0
while True:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()
    steps += 1
    if steps == 1:
        print("ready", flush=True)
"""


def serve_api(engine: Any, settings: Any) -> tuple[Any, str]:
    """The chat server (page + `/v1`) over `engine` on a free 127.0.0.1 port, in this process."""
    import socket

    from cl_chat.server import launch

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return launch(engine, settings, "127.0.0.1", port, block=False), f"http://127.0.0.1:{port}/v1"


# `concurrent` in a process of its own: the clients are other programs, not threads of the server.
_CLIENTS = ("import json, sys; sys.path.insert(0, 'bench'); from chat import concurrent; "
            "print(json.dumps(concurrent(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))))")


def clients_process(url: str, clients: int, prompts: list[str]) -> dict[str, float]:
    return common.run_json_subprocess(["-c", _CLIENTS, url, str(clients), json.dumps(prompts)], timeout=3_600)


def concurrent(url: str, clients: int, prompts: list[str]) -> dict[str, float]:
    """`clients` threads, each with its own openai client, stream an answer at once (one prompt
    each); median TTFT (request to the first text chunk) and aggregate tokens/s."""
    import threading

    import openai

    barrier = threading.Barrier(clients + 1)
    results: list[tuple[float, int]] = [(0.0, 0)] * clients

    def client(i: int) -> None:
        api = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
        barrier.wait()
        sent = time.perf_counter()
        first, tokens = None, 0
        stream = api.chat.completions.create(model="cl", messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
                                             stream=True, stream_options={"include_usage": True})  # fmt: skip
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        results[i] = (((first or time.perf_counter()) - sent) * 1000, tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    tokens = sum(n for _, n in results)
    return {"ttft_ms": median([ms for ms, _ in results]), "aggregate_tokens_per_s": tokens / wall,
            "completion_tokens": tokens, "wall_s": wall}  # fmt: skip


def plain_transformers(model_dir: Path, adapter: Path, prompts: list[str], max_new_tokens: int,
                       attention: str | None = None, dtype: str | None = None) -> dict[str, float]:  # fmt: skip
    """`model.generate` on a `PeftModel` with the adapter, as a transformers user would run it."""
    import torch
    from peft import PeftModel

    from cl_assets.core.model import _encode, load_base_model
    from cl_assets.core.model.threads import release_openmp_threads

    loaded = load_base_model(model_dir)
    if dtype:
        loaded.model.to(getattr(torch, dtype))
    if attention:
        loaded.model.set_attn_implementation(attention)
    model = PeftModel.from_pretrained(loaded.model, str(adapter)).eval()
    tps = []
    for i, prompt in enumerate([prompts[0], *prompts]):  # the first one warms up
        ids = torch.tensor([_encode(loaded.tokenizer, [{"role": "user", "content": prompt}])])
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)  # fmt: skip
        if i:
            tps.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - started))
    # This (main) thread is done computing: its OpenMP workers would slow the engine's
    # generation thread later in the run (see `cl_assets.core.model.threads`).
    release_openmp_threads()
    return {"tokens_per_s": median(tps)}


def llama_cpp(prompts: list[str], max_new_tokens: int) -> dict[str, float] | None:
    """llama.cpp on the GGUF file CL converts its base from (Q4_1, no adapter), 2 threads."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from cl_assets.core.model import embedded_gguf_path

    llm = Llama(model_path=str(embedded_gguf_path()), n_threads=2, n_ctx=2048, verbose=False)
    tps = []
    for i, prompt in enumerate([prompts[0], *prompts]):
        started = time.perf_counter()
        out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_new_tokens,
                                         temperature=0.0)  # fmt: skip
        if i:
            tps.append(out["usage"]["completion_tokens"] / (time.perf_counter() - started))
    return {"tokens_per_s": median(tps)}


def ttft_beside_training(engine: Any, model_dir: Path, prompts: list[str]) -> dict[str, float]:
    """Median TTFT of one client alone, and while a training process runs at nice 0 and 10."""
    import subprocess
    import sys

    figures = {"alone": generate_in_state(engine, prompts)["ttft_ms"]}
    for nice in (0, 10):
        proc = subprocess.Popen([sys.executable, "-c", _TRAINER, str(model_dir), str(nice)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            figures[f"training at nice {nice}"] = generate_in_state(engine, prompts)["ttft_ms"]
        finally:
            proc.kill()
            proc.wait()
    return figures


def generate_in_state(engine: Any, prompts: list[str]) -> dict[str, float]:
    ttft, tps, tokens = [], [], []
    for prompt in prompts:
        turn = engine.ask(engine.new_session(), prompt)
        turn.consume()
        ttft.append(turn.result.ttft_ms)
        tps.append(turn.result.tokens_per_s)
        tokens.append(turn.result.completion_tokens)
    return {"ttft_ms": median(ttft), "tokens_per_s": median(tps), "completion_tokens": median(tokens)}


def run(size: str = "small", model: str | None = None, training_beside: bool = False) -> Result:
    from cl_assets.core.model import AdapterSet, ensure_base_model, load_base_model
    from cl_assets.core.model.precision import resolve_precision
    from cl_assets.core.model.threads import release_openmp_threads
    from cl_assets.core.registry import Registry, adapter_dir
    from cl_assets.core.store import Store
    from cl_assets.settings import EMBEDDED_BASE_MODEL, Settings
    from cl_chat.engine import ChatEngine

    cfg = SIZES[size]
    result = Result("chat", "5. Chat: TTFT and tokens/s, hot-swap vs reload", size)
    model_dir = Path(model) if model else ensure_base_model(
        Settings(_env_file=None, home=REPO, data_dir=REPO / "data", base_model=EMBEDDED_BASE_MODEL)  # type: ignore[call-arg]
    )
    prompts = PROMPTS[: cfg["prompts"]]
    with tempfile.TemporaryDirectory(prefix="cl-bench-chat-") as tmp:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, home=Path(tmp), base_model=str(model_dir), user_hash_salt=SALT,
            max_new_tokens=cfg["max_new_tokens"], temperature=0.0,
        )
        store = Store.from_settings(settings)
        for seed, adapter_id in enumerate(ADAPTERS, start=1):
            make_adapter(model_dir, adapter_dir(settings, adapter_id), seed)
            register(settings, store, adapter_id)
        registry = Registry(settings, store)
        a, b, c = ADAPTERS

        # The serving precision `auto` resolves to on this CPU, measured once before the reloads
        # (as the first start of the chat on a machine does), so no reload below includes it.
        precision = resolve_precision(load_base_model(model_dir), settings.chat_dtype, settings.models_dir)
        result.notes.append(
            f"Serving precision: `CL_CHAT_DTYPE={settings.chat_dtype}` → **{precision.name}** ({precision.reason}"
            + (": a decode step " + ", ".join(f"{v:.1f} ms in {k}" for k, v in precision.step_ms.items())
               if precision.step_ms else "") + "). Every engine row below serves in it "
            "unless it names another."
        )

        # Full reloads: the engine started while A is deployed, and the bare model + adapter load.
        registry.deploy(a, actor="bench", reason="reload")
        reload_s, engine = [], None
        for _ in range(cfg["reloads"]):
            engine = None
            started = time.perf_counter()
            engine = ChatEngine(settings, store=store)
            reload_s.append(time.perf_counter() - started)
        assert engine is not None and engine.adapter_id == a
        bare_s, peft_swap_s = [], []
        for _ in range(cfg["reloads"]):
            from peft import PeftModel
            from peft.utils.hotswap import hotswap_adapter

            started = time.perf_counter()
            loaded = load_base_model(model_dir)
            peft_model = PeftModel.from_pretrained(loaded.model, str(adapter_dir(settings, a)))
            bare_s.append(time.perf_counter() - started)
            # PEFT's own in-place swap, for comparison (no hash check; walks the model per call).
            started = time.perf_counter()
            hotswap_adapter(peft_model, str(adapter_dir(settings, b)), adapter_name="default", torch_device="cpu")
            peft_swap_s.append(time.perf_counter() - started)
            del loaded, peft_model
        release_openmp_threads()  # the engine's generation thread computes next, alone

        base_before = engine.base_model

        # A restart of the chat: a new process importing the engine and constructing it.
        restart = common.run_json_subprocess(
            ["-c", _RESTART], env={"CL_HOME": tmp, "CL_BASE_MODEL": str(model_dir), "CL_USER_HASH_SALT": SALT})

        # Generation in three states, on the engine that reloaded last (A loaded and serving).
        states: dict[str, dict[str, float]] = {}
        generate_in_state(engine, prompts[:1])  # warm-up
        registry.deploy(None, actor="bench", reason="base")
        engine.refresh()
        states["no adapter (base model)"] = generate_in_state(engine, prompts)
        registry.deploy(a, actor="bench", reason="adapter")
        engine.refresh()
        states[f"adapter A ({a})"] = generate_in_state(engine, prompts)

        # Hot-swap to B (cold: B has never been loaded), then warm swaps back and forth.
        registry.deploy(b, actor="bench", reason="swap")
        started = time.perf_counter()
        engine.refresh()
        cold_swap = time.perf_counter() - started
        assert engine.adapter_id == b, engine.swap_error
        states[f"after hot-swap to B ({b})"] = generate_in_state(engine, prompts)
        warm = []
        for i in range(cfg["swaps"]):
            registry.deploy(a if i % 2 == 0 else b, actor="bench", reason="warm swap")
            started = time.perf_counter()
            engine.refresh()
            warm.append(time.perf_counter() - started)
        # The pieces of a swap, on the AdapterSet alone (no registry, no hash check).
        adapters: AdapterSet = engine.adapters
        started = time.perf_counter()
        adapters.activate(a)
        activate_s = time.perf_counter() - started
        unchanged = []
        for _ in range(cfg["swaps"]):
            started = time.perf_counter()
            engine.refresh()  # no new deployment: one indexed query
            unchanged.append(time.perf_counter() - started)
        same_base = engine.base_model is base_before
        # Where a cold swap's time goes: C has never been loaded.
        registry.deploy(c, actor="bench", reason="profile")
        swap_profile, _ = common.profile_text(engine.refresh, limit=20, sort="cumulative")

        # One stream with A: CL's engine against plain transformers and llama.cpp.
        registry.deploy(a, actor="bench", reason="one stream")
        engine.refresh()
        stream_prompts = PROMPTS[: max(2, cfg["prompts"])]
        cl_row = CL_ROW.format(precision=precision.name,
                               how="beside the int4 weights" if precision.name == "int4" else "merged")
        one_stream = {cl_row: generate_in_state(engine, stream_prompts)}
        for label, update in (("`CL_CHAT_DTYPE=float32`", {"chat_dtype": "float32"}),
                              ("`CL_CHAT_DTYPE=bfloat16`", {"chat_dtype": "bfloat16"}),
                              ("`CL_CHAT_DTYPE=int4`", {"chat_dtype": "int4"}),
                              ("`CL_CHAT_ATTENTION=eager`", {"chat_attention": "eager"})):  # fmt: skip
            other = ChatEngine(settings.model_copy(update=update), store=store)
            one_stream[f"CL engine, {label}"] = generate_in_state(other, stream_prompts)
            del other
        one_stream[HF_ROW] = plain_transformers(model_dir, adapter_dir(settings, a), stream_prompts, cfg["max_new_tokens"])
        one_stream["transformers `generate` on a PeftModel with A, eager attention"] = plain_transformers(
            model_dir, adapter_dir(settings, a), stream_prompts, cfg["max_new_tokens"], attention="eager")
        one_stream["transformers `generate` on a PeftModel with A, `dtype=bfloat16`"] = plain_transformers(
            model_dir, adapter_dir(settings, a), stream_prompts, cfg["max_new_tokens"], dtype="bfloat16")
        cpp = llama_cpp(stream_prompts, cfg["max_new_tokens"]) if size != "tiny" else None
        if cpp is not None:
            one_stream["llama.cpp (`llama_cpp.Llama`, same GGUF, Q4_1, base only, 2 threads)"] = cpp

        # Concurrent API clients, batched and one at a time, in turns (same run, same adapter A):
        # one server over each engine, both in this process, only one asked at a time.
        serial_settings = settings.model_copy(update={"chat_batching": False})
        serial = ChatEngine(serial_settings, store=store)
        assert serial.adapter_id == a
        batched_server, batched_url = serve_api(engine, settings)
        serial_server, serial_url = serve_api(serial, serial_settings)
        try:
            clients_process(batched_url, 1, PROMPTS)  # warm-up
            clients_process(serial_url, 1, PROMPTS)
            clients: dict[int, dict[str, dict[str, float]]] = {}
            for n in cfg["clients"]:
                clients[n] = {"batched": clients_process(batched_url, n, PROMPTS),
                              "one at a time": clients_process(serial_url, n, PROMPTS)}  # fmt: skip
        finally:
            batched_server.close()
            serial_server.close()
        del serial
        beside = ttft_beside_training(engine, model_dir, PROMPTS[:3]) if (cfg["beside"] or training_beside) else None
        store.close()

    gen = result.table(
        f"Generation through `ChatEngine.ask` (greedy, ≤ {cfg['max_new_tokens']} new tokens, median of "
        f"{len(prompts)} prompts)",
        ["state", "TTFT ms", "tokens/s", "completion tokens"],
    )
    for state, m in states.items():
        gen.add(state, m["ttft_ms"], m["tokens_per_s"], m["completion_tokens"])

    reload_med, swap = median(reload_s), cold_swap
    sw = result.table("Swap vs reload (seconds)", ["operation", "seconds", "reload ÷ this"])
    sw.add(f"full reload: `ChatEngine(...)` with A deployed (median of {len(reload_s)})", reload_med, "1×")
    sw.add("bare reload: `load_base_model` + `PeftModel.from_pretrained`", median(bare_s), f"{reload_med / median(bare_s):.1f}×")
    sw.add("chat restart: a new process importing and constructing `ChatEngine`", restart["seconds"],
           f"{reload_med / restart['seconds']:.2f}×")
    sw.add("**hot-swap**: deploy B, `engine.refresh()` (read + hash check + copy into the LoRA slot)", swap,
           f"**{reload_med / swap:.0f}×**")
    sw.add("PEFT `hotswap_adapter` from the folder (no hash check), for comparison", median(peft_swap_s),
           f"{reload_med / median(peft_swap_s):.0f}×")
    sw.add(f"warm swap to an adapter already loaded (median of {len(warm)})", median(warm), f"{reload_med / median(warm):.0f}×")
    sw.add("`AdapterSet.activate` alone", activate_s, f"{reload_med / activate_s:,.0f}×")
    sw.add("`engine.refresh()` with nothing new deployed", median(unchanged), f"{reload_med / median(unchanged):,.0f}×")
    result.notes.append(f"The engine that swapped served every state and swap from {'the same' if same_base else 'ANOTHER'} base model object (it never reloads).")

    cl_tps = one_stream[cl_row]["tokens_per_s"]
    hf_tps = one_stream[HF_ROW]["tokens_per_s"]
    one = result.table(f"One stream with adapter A (greedy, ≤ {cfg['max_new_tokens']} new tokens, median of "
                       f"{len(stream_prompts)} prompts)", ["path", "tokens/s", "CL ÷ this"])  # fmt: skip
    for path_label, m in one_stream.items():
        one.add(path_label, m["tokens_per_s"], f"{cl_tps / m['tokens_per_s']:.2f}×")
    conc = result.table("Concurrent clients through the OpenAI-compatible API (openai streaming clients, adapter A, greedy)",
                        ["clients", "mode", "median TTFT ms", "aggregate tokens/s", "batched ÷ one at a time"])  # fmt: skip
    for n, modes in clients.items():
        gain = modes["batched"]["aggregate_tokens_per_s"] / modes["one at a time"]["aggregate_tokens_per_s"]
        for mode, m in modes.items():
            conc.add(n, mode, m["ttft_ms"], m["aggregate_tokens_per_s"], f"{gain:.2f}×" if mode == "batched" else "")
    if beside is not None:
        bt = result.table("TTFT of one client while a training process runs beside (median of 3 prompts)",
                          ["state", "TTFT ms", "÷ alone"])  # fmt: skip
        for state, ms in beside.items():
            bt.add(state, ms, f"{ms / beside['alone']:.2f}×")

    result.data = {"one_stream": one_stream, "clients": {str(k): v for k, v in clients.items()}, "beside": beside,
                   "restart_s": restart["seconds"], "reload_s": reload_s, "bare_reload_s": bare_s, "peft_hotswap_s": peft_swap_s, "cold_swap_s": cold_swap, "warm_swap_s": warm,
                   "activate_s": activate_s, "refresh_unchanged_s": unchanged, "states": states}
    judged = size != "tiny"
    if reload_med / swap < 10 or swap >= 1:
        result.profiles["cold hot-swap to a third adapter, `engine.refresh()` (cProfile, cumulative)"] = swap_profile
    result.check("hot-swap time", f"{swap:.3f} s", "< 1 s", swap < 1 if judged else None)
    result.check("hot-swap vs full reload", f"{reload_med / swap:.0f}× faster", "≥ 10×",
                 reload_med / swap >= 10 if judged else None)
    widest = max(clients)
    gain = clients[widest]["batched"]["aggregate_tokens_per_s"] / clients[widest]["one at a time"]["aggregate_tokens_per_s"]
    result.check("one stream: CL vs plain transformers + PEFT", f"{cl_tps / hf_tps:.2f}×", "≥ 2×",
                 cl_tps / hf_tps >= 2 if judged else None)
    result.check(f"aggregate tokens/s at {widest} clients, batched vs one at a time", f"{gain:.2f}×", "≥ 2.5×",
                 gain >= 2.5 if judged and widest >= 8 else None)
    base_tps = states["no adapter (base model)"]["tokens_per_s"]
    after = states[f"after hot-swap to B ({b})"]["tokens_per_s"]
    adapter_tps = states[f"adapter A ({a})"]["tokens_per_s"]
    result.notes.append(
        f"With an adapter ({'beside the int4 weights' if precision.name == 'int4' else 'merged into the base weights'}) "
        f"the chat runs at {adapter_tps / base_tps:.0%} of the base model's "
        f"tokens/s; after the hot-swap at {after / base_tps:.0%} (the swapped-in adapter runs as fast as the first one)."
    )
    result.notes.append(
        f"Adapters of one shape share one set of LoRA layers: the engine holds {engine.adapters.slots} slot(s) for "
        f"{len(engine.adapters.loaded)} loaded adapters, so a swap copies tensors instead of injecting layers."
    )
    return result


def _options(parser: Any) -> None:
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2); tests pass a tiny model")
    parser.add_argument("--training-beside", action="store_true", default=None,
                        help="also measure TTFT beside a training process (always on at size full)")


if __name__ == "__main__":
    raise SystemExit(common.main(run, _options))
