"""`bench`: how fast psm_repro's paths are against plain Hugging Face and against the machine's limit.

Every figure is the median of `repeats` timed runs after one warm-up (min-max alongside), and each
comparison is interleaved in the same loop so machine noise hits both sides alike. Ratios, not
absolute numbers, are what the targets check.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from psm_repro.bench.peers import peer_cost
from psm_repro.bench.render import render
from psm_repro.config import BenchConfig, RunConfig
from psm_repro.core.chat import Encoded, encode_prompt
from psm_repro.core.finder import item_activations
from psm_repro.core.hooked import HookedModel
from psm_repro.core.loading import load_model, load_sae, sae_encode, sae_hook_name
from psm_repro.core.outputs import write_json, write_text
from psm_repro.core.paths import output_path
from psm_repro.core.steering import Intervention, generate, steer


def _timed(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict]:
    """Run each fn once to warm up, then `repeats` interleaved rounds; fns return units processed."""
    for fn in fns.values():
        fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            units = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # CUDA kernels run asynchronously: time them to completion
            rates[name].append(units / (time.perf_counter() - start))
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in rates.items()}


def _texts(model: HookedModel, n: int, length: int, seed: int) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    vocab = len(model.tokenizer)
    return [Encoded(torch.randint(100, vocab, (length,), generator=g).tolist(), [True] * length) for _ in range(n)]


def matmul_flops(repeats: int, device: torch.device = torch.device("cpu"), dtype=torch.float32) -> float:
    """The device's matmul ceiling in the model's dtype: the best of `repeats` 2048^3 GEMMs (8192^3 on a GPU).

    A ceiling is a best case, so the maximum, not the median (a median of three 1024^3 GEMMs once read
    86 GFLOP/s against 137-159 in other runs, and put the scan at "126% of the ceiling")."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    res = _timed({"mm": lambda: (torch.mm(a, b), 2 * n ** 3)[1]}, repeats)
    return res["mm"]["max"]


def forward_flops_per_token(model: HookedModel, layer: int, sae) -> float:
    """~2 x parameters touched per token up to the SAE layer (+ the SAE encoder)."""
    params = sum(p.numel() for blk in model.layers[: layer + 1] for p in blk.parameters())
    return 2 * (params + sae.cfg.d_in * sae.cfg.d_sae)


def run_bench(cfg: RunConfig, out_dir: Path) -> dict:
    b: BenchConfig = cfg.bench
    load = _load_seconds(cfg)
    model = load_model(cfg.model)
    sae = load_sae(cfg.sae, model)
    hook = sae_hook_name(sae)
    layer = model.resolve(hook).layer
    texts = _texts(model, b.n_texts, b.text_tokens, cfg.seed)
    n_tok = b.n_texts * b.text_tokens

    def ours():
        item_activations(model, sae, texts, "max", b.scan_batch)
        return n_tok

    @torch.inference_mode()
    def bare_hf():  # written out by hand: truncated layer stack, then one SAE encode
        full = model.layers
        inner = next(m for m in model.model.modules() if getattr(m, "layers", None) is full)
        inner.layers = full[: layer + 1]
        try:
            for i in range(0, b.n_texts, b.scan_batch):
                ids = torch.tensor([t.ids for t in texts[i:i + b.scan_batch]])
                h = inner(input_ids=ids.to(model.device)).last_hidden_state  # note: final norm applied
                sae_encode(sae, h).amax(1)
        finally:
            inner.layers = full
        return n_tok

    @torch.inference_mode()
    def naive():  # the whole model with every hidden state kept, then encode the one we need
        for i in range(0, b.n_texts, b.scan_batch):
            ids = torch.tensor([t.ids for t in texts[i:i + b.scan_batch]])
            hs = model.model(input_ids=ids.to(model.device), output_hidden_states=True).hidden_states
            sae_encode(sae, hs[layer + 1]).amax(1)
        return n_tok

    scan = _timed({"psm_repro": ours, "bare_hf": bare_hf, "naive_full_cache": naive}, b.scan_repeats)

    prompts = [encode_prompt(model.tokenizer, [{"role": "user", "content": f"Tell me a short story number {i}."}])
               for i in range(b.gen_batch)]
    iv = Intervention(mode="add", feature=0, scale=4.0)

    def hf_generate():
        out, _ = generate(model, prompts, b.gen_tokens, 0.0, cfg.seed)
        return sum(len(o) for o in out) or 1

    def steered():
        with steer(model, sae, [iv], torch.full((b.gen_batch,), 2.0)):
            out, _ = generate(model, prompts, b.gen_tokens, 0.0, cfg.seed)
        return sum(len(o) for o in out) or 1

    def hf_sampled():  # HF's own temperature + top-p warpers, as the sweep samples (0.2, 0.9)
        ids, attn = model.pad_batch(prompts, side="left")
        torch.manual_seed(cfg.seed)
        with torch.inference_mode():
            out = model.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=b.gen_tokens,
                                       do_sample=True, temperature=0.2, top_p=0.9, top_k=None,
                                       pad_token_id=model.tokenizer.pad_token_id)
        return int((out[:, ids.shape[1]:] != model.tokenizer.pad_token_id).sum()) or 1

    def sampled():  # the same through psm_repro's generate (NucleusWarper)
        out, _ = generate(model, prompts, b.gen_tokens, 0.2, cfg.seed, top_p=0.9)
        return sum(len(o) for o in out) or 1

    gen = _timed({"hf_generate": hf_generate, "steered": steered, "hf_sampled": hf_sampled, "sampled": sampled},
                 b.repeats)

    coefs = torch.linspace(0, 8, b.sweep_coefficients)
    sweep_prompts = prompts[: b.sweep_prompts]

    def batched():
        rows = [p for _ in coefs for p in sweep_prompts]
        with steer(model, sae, [iv], coefs.repeat_interleave(len(sweep_prompts))):
            generate(model, rows, b.gen_tokens, 0.0, cfg.seed)
        return 1

    def sequential():
        for c in coefs:
            with steer(model, sae, [iv], torch.full((len(sweep_prompts),), float(c))):
                generate(model, sweep_prompts, b.gen_tokens, 0.0, cfg.seed)
        return 1

    sweep = _timed({"batched": batched, "sequential": sequential}, b.repeats)
    unembedding = unembedding_share(model, lambda: generate(model, prompts, b.gen_tokens, 0.0, cfg.seed), b.repeats)
    training = _training_rates(model, sae, cfg, hook, b.repeats)
    ceiling = matmul_flops(max(5, b.repeats), model.device, model.dtype)
    fpt = forward_flops_per_token(model, layer, sae)
    result = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}, "
                   f"torch {torch.__version__}, device {model.device}"
                   + (f" ({torch.cuda.get_device_name(model.device)})" if model.device.type == "cuda" else "")
                   + f", {cfg.model.dtype}",
        "model": cfg.model.name, "sae": cfg.sae.name, "hook": hook, "repeats": b.repeats, "scan_repeats": b.scan_repeats,
        "scan_tokens_per_s": scan, "generation_tokens_per_s": gen, "sweep_runs_per_s": sweep,
        "sae_training_tokens_per_s": training, "sae_training_activation_dtype": cfg.train_sae.activation_dtype,
        "unembedding": unembedding,
        "load_s": load,
        "matmul_flops_per_s": ceiling, "scan_flops_per_token": fpt,
        "scan_fraction_of_ceiling": scan["psm_repro"]["median"] * fpt / ceiling,
        "ratios": {
            "scan_vs_bare_hf": scan["psm_repro"]["median"] / scan["bare_hf"]["median"],
            "scan_vs_naive": scan["psm_repro"]["median"] / scan["naive_full_cache"]["median"],
            "steered_vs_hf_generate": gen["steered"]["median"] / gen["hf_generate"]["median"],
            "batched_sweep_speedup": sweep["batched"]["median"] / sweep["sequential"]["median"],
            "sae_training_vs_scan": training["train"]["median"] / training["finder_scan"]["median"],
        },
    }
    if cfg.model.is_judge_reference:
        result["cold_load_s"] = _cold_load_seconds()
    if cfg.dashboard.enabled:
        result["feature_cache"] = _feature_cache_scan(model, sae, cfg)
    result["situation_cost"] = _situation_cost(cfg) if cfg.model.is_judge_reference else {
        "skipped": "measured on the embedded default"}
    if b.end_to_end:
        # the card of the model being benched, not the embedded default's
        models = () if cfg.model.is_judge_reference else (f"model={cfg.model.name}", f"sae={cfg.sae.name}")
        result["end_to_end"] = _end_to_end(out_dir, models)
        if "dashboard_share" in result["end_to_end"]:
            result["ratios"]["dashboard_share_of_run"] = result["end_to_end"]["dashboard_share"]
        result["peer_cost"] = peer_cost(model, cfg, result["end_to_end"],
                                        lambda d, extra=(): _end_to_end(d, models + tuple(extra)))
    write_json(out_dir / "bench.json", result)
    write_text(out_dir / "bench.md", render(result))
    return result


def unembedding_share(model: HookedModel, run: Callable[[], object], repeats: int) -> dict:
    """Share of a generation's wall time spent in the unembedding (the output projection to the vocabulary),
    timed by hooks around that module on each call, over `repeats` runs of `run`; plus its share of the
    parameters, for comparison (a matmul's FLOPs per token are proportional to its parameters)."""
    head = model.model.get_output_embeddings()
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    spent, start = [0.0], [0.0]

    def before(module, args):
        sync()
        start[0] = time.perf_counter()

    def after(module, args, output):
        sync()
        spent[0] += time.perf_counter() - start[0]

    handles = [head.register_forward_pre_hook(before), head.register_forward_hook(after)]
    shares = []
    try:
        run()  # warm-up
        for _ in range(repeats):
            spent[0] = 0.0
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            shares.append(spent[0] / (time.perf_counter() - t0))
    finally:
        for h in handles:
            h.remove()
    n_head = head.weight.numel()
    embedding = model.model.get_input_embeddings().weight
    tied = head.weight.data_ptr() == embedding.data_ptr()
    # parameters() counts a tied weight once; an untied input embedding is a lookup, not a matmul
    matmul = sum(p.numel() for p in model.model.parameters()) - (0 if tied else embedding.numel())
    return {"share_median": statistics.median(shares), "share_min": min(shares), "share_max": max(shares),
            "vocab": head.weight.shape[0], "head_params": n_head, "matmul_params": matmul,
            "head_param_share": n_head / matmul}


def _training_rates(model: HookedModel, sae, cfg: RunConfig, hook: str, repeats: int) -> dict[str, dict]:
    """`train-sae`'s inner loop (stop-at-layer read in `train_sae.activation_dtype` + sae-lens training steps) beside
    the finder's scan, on the same 2 batches of training-length sequences at the bench SAE's hook, in tokens/s."""
    from psm_repro.sae_training.train import build_sae, build_trainer, read_block, reader_for

    t = cfg.train_sae
    g = torch.Generator().manual_seed(cfg.seed)
    bos = model.tokenizer.bos_token_id or 0
    seqs = [[bos] + torch.randint(100, len(model.tokenizer), (t.context_size - 1,), generator=g).tolist()
            for _ in range(2 * t.batch_sequences)]
    items = [Encoded(s, [True] * len(s)) for s in seqs]
    n_tok = len(seqs) * t.context_size
    batch_tokens = t.batch_sequences * (t.context_size - 2)
    reader = reader_for(model, t.activation_dtype)
    device = str(model.hook_device(hook))
    trainee = build_sae(t, model.d_model, device, model.name)
    trainer = build_trainer(t, trainee, 10 ** 6, batch_tokens, device)

    def finder_scan():
        item_activations(model, sae, items, "max", t.batch_sequences)
        return n_tok

    def read():
        read_block(reader, hook, seqs, t.batch_sequences)
        return n_tok

    def train():
        for batch in read_block(reader, hook, seqs, t.batch_sequences).split(batch_tokens):
            trainer.step(batch)
            trainer.n_training_steps += 1
        return n_tok

    return _timed({"finder_scan": finder_scan, "read": read, "train": train}, repeats)


_LOAD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import torch  # both sides import torch and transformers' Auto classes before the clock starts
from transformers import AutoModelForCausalLM, AutoTokenizer
if sys.argv[1] == "psm_repro":
    from psm_repro.config import ModelConfig
    from psm_repro.core.loading import load_model
    cfg = ModelConfig(**json.loads(sys.argv[2]))
    load = lambda: load_model(cfg)
else:
    from psm_repro.core.embedded import ensure_dequantized
    where = str(ensure_dequantized(json.loads(sys.argv[2])["embedded"]))
    load = lambda: (AutoTokenizer.from_pretrained(where), AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32))
t1 = time.perf_counter()
load()
t2 = time.perf_counter()
load()
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_s": t2 - t1, "warm_s": t3 - t2}))
"""


def _load_seconds(cfg: RunConfig) -> dict:
    """Model load in fresh processes: the first load (pays transformers' lazy imports) and a second one.

    Bare HF (`from_pretrained` of tokenizer + model from the same cached files) runs beside it for the
    embedded model, so the part of the first load that is transformers' own import cost is visible.
    """
    import dataclasses

    def once(kind: str) -> dict:
        out = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, kind, json.dumps(dataclasses.asdict(cfg.model))],
                             cwd=output_path("."), capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    kinds = ["psm_repro"] + (["bare_hf"] if cfg.model.source == "embedded" else [])
    runs = {k: [once(k) for _ in range(cfg.bench.repeats)] for k in kinds}
    return {k: {m: statistics.median(r[m] for r in v) for m in ("import_s", "first_s", "warm_s")}
            for k, v in runs.items()}


def _cold_load_seconds() -> float:
    """Dequantize the GGUF into a fresh cache (what a first run pays after the wheel download)."""
    import os
    import shutil
    import tempfile

    from psm_repro.core import embedded

    gguf = embedded.ensure_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "gguf").mkdir()
        shutil.copy(gguf, Path(tmp) / "gguf" / gguf.name)
        code = "from psm_repro.core.embedded import ensure_dequantized; ensure_dequantized()"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PSM_REPRO_CACHE": tmp}, check=True,
                       capture_output=True)
        return time.perf_counter() - start


def _feature_cache_scan(model: HookedModel, sae, cfg: RunConfig) -> dict:
    """Time the one-time feature-cache scan; leave its result where `run` looks, so the end-to-end run below
    measures dashboards with a warm cache (what every run after the first pays)."""
    from psm_repro.core import feature_cache as fc

    seqs = fc.reference_sequences(cfg.dashboard, model.tokenizer, fc.sae_prepend_bos(sae))
    key = fc.cache_key(model, sae, seqs, cfg.dashboard)
    start = time.perf_counter()
    cache = fc.scan(model, sae, seqs, cfg.dashboard, key)
    seconds = time.perf_counter() - start
    path = fc.cache_path(cfg.dashboard, cfg.sae.name)
    if fc.load(path, key)[0] is None:
        fc.save(cache, path)
    return {"scan_s": seconds, "tokens": cache.n_tokens}


def _situation_cost(cfg: RunConfig) -> dict:
    """What a persona's situation sets add to the `find` command, measured by two `find` runs of the bench
    persona in subprocesses sharing one fresh cache folder: the first samples the replies (cold), the second
    reads them from the cache (warm, what every later `find` pays). The share divides the situation stage by
    the rest of the warm run, i.e. by `find` without the situation sets. The first run also pays the
    specificity check's one-time scoring of the other personas; both stages are timed inside the runs."""
    import tempfile

    from psm_repro.core.personas import resolve_persona

    persona = resolve_persona(cfg.persona, cfg.persona_file)
    if not persona.situation:
        return {"skipped": f"{persona.name} has no situation set"}
    runs = []
    with tempfile.TemporaryDirectory(prefix="psm_repro_bench_") as tmp:
        for k in range(2):
            run_dir = Path(tmp) / f"find_{k}"
            cmd = [sys.executable, "-m", "psm_repro", "find", f"persona={persona.name}", f"seed={cfg.seed}",
                   f"model={cfg.model.name}", f"sae={cfg.sae.name}", f"finder.cache_dir={Path(tmp) / 'cache'}",
                   f"hydra.run.dir={run_dir}"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=output_path("."), capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                return {"skipped": f"find failed: {proc.stderr.strip().splitlines()[-1:]}"}
            stages = json.loads((run_dir / "summary.json").read_text()).get("stage_seconds", {})
            runs.append({"wall_s": wall, **stages})
    cold, warm = runs
    rest = warm["wall_s"] - warm["situations"]
    return {"persona": persona.name, "pairs": len(persona.situation), "find_without_s": rest,
            "situation_cold_s": cold["situations"], "situation_warm_s": warm["situations"],
            "specificity_cold_s": cold.get("specificity"), "specificity_warm_s": warm.get("specificity"),
            "situation_share": warm["situations"] / rest, "situation_share_cold": cold["situations"] / rest}


def _end_to_end(out_dir: Path, overrides: tuple[str, ...] = ()) -> dict:
    import tempfile

    # a throwaway run directory: a result card under results/ would become a row in the tables
    run_dir = Path(tempfile.mkdtemp(prefix="psm_repro_bench_")) / "run"
    cmd = [sys.executable, "-m", "psm_repro", "run", "experiment=steer_secrecy", *overrides, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=output_path("."), capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux -> MiB
    out = {"command": " ".join(["python -m psm_repro run experiment=steer_secrecy", *overrides]), "wall_s": wall,
           "peak_rss_mib": peak, "ok": proc.returncode == 0}
    summary = run_dir / "summary.json"
    if out["ok"] and summary.exists():
        s = json.loads(summary.read_text())
        out["stage_seconds"] = s.get("stage_seconds", {})
        if "streetlight" in s:
            extra = sum(s["streetlight"]["seconds"].values())
            out["dashboard_s"] = extra
            out["dashboard_share"] = extra / max(s["seconds"] - extra, 1e-9)  # what dashboards add to the rest
    return out
