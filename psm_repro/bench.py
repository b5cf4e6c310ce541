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

from psm_repro.chat import Encoded, encode_prompt
from psm_repro.config import BenchConfig, RunConfig
from psm_repro.finder import item_activations
from psm_repro.hooked import HookedModel
from psm_repro.loading import PROJECT_ROOT, load_model, load_sae, sae_encode, sae_hook_name
from psm_repro.bench_peers import peer_cost, peer_rows
from psm_repro.outputs import write_json, write_text
from psm_repro.steering import Intervention, generate, steer

TARGETS = {"scan_vs_bare_hf": 0.9, "scan_vs_naive": 2.0, "steered_vs_hf_generate": 0.9, "batched_sweep_speedup": 3.0,
           "sae_training_vs_scan": 0.8}
SITUATION_SHARE = 0.6
"""Situation sets (sampling replies on a cold cache, and reading both points) may add at most this to `find`."""


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
    if cfg.model.source == "embedded":
        result["cold_load_s"] = _cold_load_seconds()
    if cfg.dashboard.enabled:
        result["feature_cache"] = _feature_cache_scan(model, sae, cfg)
    result["situation_cost"] = _situation_cost(cfg) if cfg.model.source == "embedded" else {
        "skipped": "measured on the embedded default"}
    if b.end_to_end:
        result["end_to_end"] = _end_to_end(out_dir)
        if "dashboard_share" in result["end_to_end"]:
            result["ratios"]["dashboard_share_of_run"] = result["end_to_end"]["dashboard_share"]
        result["peer_cost"] = peer_cost(model, cfg, result["end_to_end"], _end_to_end)
    write_json(out_dir / "bench.json", result)
    write_text(out_dir / "bench.md", render(result))
    return result


def _training_rates(model: HookedModel, sae, cfg: RunConfig, hook: str, repeats: int) -> dict[str, dict]:
    """`train-sae`'s inner loop (stop-at-layer read in `train_sae.activation_dtype` + sae-lens training steps) beside
    the finder's scan, on the same 2 batches of training-length sequences at the bench SAE's hook, in tokens/s."""
    from psm_repro.sae_training import build_sae, build_trainer, read_block, reader_for

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
    from psm_repro.loading import load_model
    cfg = ModelConfig(**json.loads(sys.argv[2]))
    load = lambda: load_model(cfg)
else:
    from psm_repro.embedded import ensure_dequantized
    where = str(ensure_dequantized())
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
                             cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
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

    from psm_repro import embedded

    gguf = embedded.ensure_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "gguf").mkdir()
        shutil.copy(gguf, Path(tmp) / "gguf" / gguf.name)
        code = "from psm_repro.embedded import ensure_dequantized; ensure_dequantized()"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PSM_REPRO_CACHE": tmp}, check=True,
                       capture_output=True)
        return time.perf_counter() - start


def _feature_cache_scan(model: HookedModel, sae, cfg: RunConfig) -> dict:
    """Time the one-time feature-cache scan; leave its result where `run` looks, so the end-to-end run below
    measures dashboards with a warm cache (what every run after the first pays)."""
    from psm_repro import feature_cache as fc

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

    from psm_repro.personas import resolve_persona

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
            proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
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
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
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


def _r(d: dict) -> str:
    return f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f})"


def _load_rows(load: dict) -> list[str]:
    p = load["psm_repro"]
    rows = [f"| model load, warm: cached weights, transformers' modules already imported (s) | {p['warm_s']:.2f} | "
            f"<= 3 s | {'yes' if p['warm_s'] <= 3 else 'NO'} |",
            f"| model load, first in a fresh process after `import psm_repro, transformers` (s) | {p['first_s']:.2f} | | |"]
    if "bare_hf" in load:
        h = load["bare_hf"]
        rows.append(f"| same, bare HF `from_pretrained` of tokenizer + model from the cached files (s) | "
                    f"{h['first_s']:.2f} | | |")
    return rows


def _sampling_rows(g: dict) -> list[str]:
    if "sampled" not in g:
        return []
    return [f"| sampled generate, T 0.2 top-p 0.9: HF's warpers (tok/s) | {_r(g['hf_sampled'])} | | |",
            f"| same with psm_repro's NucleusWarper (tok/s) | {_r(g['sampled'])} | | |",
            f"| NucleusWarper / HF's warpers | {g['sampled']['median'] / g['hf_sampled']['median']:.2f}x | | |"]


def _training_rows(r: dict, ok: dict) -> list[str]:
    if "sae_training_tokens_per_s" not in r:
        return []
    t, dtype = r["sae_training_tokens_per_s"], r["sae_training_activation_dtype"]
    return [f"| SAE training: finder scan on the same sequences, model dtype (tok/s) | {_r(t['finder_scan'])} | | |",
            f"| SAE training: stop-at-layer read in {dtype} alone (tok/s) | {_r(t['read'])} | | |",
            f"| SAE training: read in {dtype} + sae-lens training steps (tok/s) | {_r(t['train'])} | | |",
            f"| SAE training / finder scan | {r['ratios']['sae_training_vs_scan']:.2f}x | >= 0.8x | "
            f"{'yes' if ok['sae_training_vs_scan'] else 'NO'} |"]


def render(r: dict) -> str:
    ratios = r["ratios"]
    ok = {k: ratios[k] >= v for k, v in TARGETS.items() if k in ratios}
    lines = ["# Benchmarks", "", f"Machine: {r['machine']}. Model `{r['model']}`, SAE `{r['sae']}` at `{r['hook']}`. "
             f"Median of {r['repeats']} interleaved repeats ({r.get('scan_repeats', r['repeats'])} for the feature "
             "scan) after a warm-up (min-max). Regenerate: "
             "`python -m psm_repro bench`.", "",
             "| measurement | value | target | met |", "|---|---|---|---|",
             f"| feature scan, psm_repro (tok/s) | {_r(r['scan_tokens_per_s']['psm_repro'])} | | |",
             f"| feature scan, bare HF forward to the layer + encode (tok/s) | {_r(r['scan_tokens_per_s']['bare_hf'])} | | |",
             f"| feature scan, naive full forward keeping all hidden states (tok/s) | "
             f"{_r(r['scan_tokens_per_s']['naive_full_cache'])} | | |",
             f"| scan ratio vs bare HF | {ratios['scan_vs_bare_hf']:.2f}x | >= 0.9x | {'yes' if ok['scan_vs_bare_hf'] else 'NO'} |",
             f"| scan ratio vs naive | {ratios['scan_vs_naive']:.2f}x | >= 2x | {'yes' if ok['scan_vs_naive'] else 'NO'} |",
             f"| HF generate (tok/s) | {_r(r['generation_tokens_per_s']['hf_generate'])} | | |",
             f"| steered generate, add at all positions (tok/s) | {_r(r['generation_tokens_per_s']['steered'])} | | |",
             *_sampling_rows(r["generation_tokens_per_s"]),
             f"| steered / HF generate | {ratios['steered_vs_hf_generate']:.2f}x | >= 0.9x | "
             f"{'yes' if ok['steered_vs_hf_generate'] else 'NO'} |",
             f"| sweep, batched vs sequential coefficients | {ratios['batched_sweep_speedup']:.2f}x | >= 3x | "
             f"{'yes' if ok['batched_sweep_speedup'] else 'NO'} |",
             *_training_rows(r, ok),
             *_load_rows(r["load_s"])]
    if "cold_load_s" in r:
        lines.append(f"| cold load: GGUF dequantize + cache (s) | {r['cold_load_s']:.1f} | | |")
    lines += [f"| matmul ceiling in the model's dtype (GFLOP/s) | {r['matmul_flops_per_s'] / 1e9:.0f} | | |",
              f"| FLOPs per scanned token (to the SAE layer + encode) | {r['scan_flops_per_token'] / 1e6:.0f} M | | |",
              f"| scan as a fraction of the ceiling | {r['scan_fraction_of_ceiling']:.0%} | | |"]
    if "feature_cache" in r:
        c = r["feature_cache"]
        lines.append(f"| feature cache scan, one time per SAE ({c['tokens']:,} reference tokens) (s) | {c['scan_s']:.0f} | "
                     f"<= 600 s | {'yes' if c['scan_s'] <= 600 else 'NO'} |")
    c = r.get("situation_cost") or {}
    if "situation_share" in c:
        lines += [f"| situation sets in `find` ({c['pairs']} pairs of {c['persona']}, replies cached: "
                  f"{c['situation_warm_s']:.0f} s) / `find` without them ({c['find_without_s']:.0f} s) | "
                  f"{c['situation_share']:.0%} | <= {SITUATION_SHARE:.0%} | "
                  f"{'yes' if c['situation_share'] <= SITUATION_SHARE else 'NO'} |",
                  f"| same, the first time (replies sampled: {c['situation_cold_s']:.0f} s) | "
                  f"{c['situation_share_cold']:.0%} | | |",
                  f"| specificity: other personas scored, first time / cached (s) | {c['specificity_cold_s']:.0f} / "
                  f"{c['specificity_warm_s']:.1f} | | |"]
    if "dashboard_share_of_run" in ratios:
        e = r["end_to_end"]
        lines.append(f"| dashboards + streetlight in that run, warm cache ({e['dashboard_s']:.0f} s) / the rest of `run` | "
                     f"{ratios['dashboard_share_of_run']:.0%} | <= 20% | "
                     f"{'yes' if ratios['dashboard_share_of_run'] <= 0.2 else 'NO'} |")
    if "end_to_end" in r:
        e = r["end_to_end"]
        lines.append(f"| end to end `{e['command']}` | {e['wall_s']:.0f} s, peak {e['peak_rss_mib']:.0f} MiB"
                     f"{'' if e['ok'] else ' (FAILED)'} | <= 300 s | {'yes' if e['ok'] and e['wall_s'] <= 300 else 'NO'} |")
        lines += peer_rows(r.get("peer_cost") or {})
    p = r["load_s"]["psm_repro"]
    lines += ["", f"Model load: a second load in the same process takes {p['warm_s']:.2f} s; the first load in a fresh "
              f"process takes {p['first_s']:.2f} s because transformers imports its model, generation and loading "
              "modules lazily on first use (they pull in torch.distributed.tensor and torch._dynamo). A bare HF "
              "script pays the same import cost (the bare HF row, for the embedded model), so the CLI cannot avoid it; the weights themselves "
              "come from the dequantized safetensors cache, not from the GGUF."]
    return "\n".join(lines) + "\n"
