"""bench.md: the benchmark's numbers as a table, each ratio beside its target."""

from __future__ import annotations

from psm_repro.bench.peers import peer_rows

TARGETS = {"scan_vs_bare_hf": 0.9, "scan_vs_naive": 2.0, "steered_vs_hf_generate": 0.9, "batched_sweep_speedup": 3.0,
           "sae_training_vs_scan": 0.8}
SITUATION_SHARE = 0.6
"""Situation sets (sampling replies on a cold cache, and reading both points) may add at most this to `find`."""


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


def _unembedding_rows(r: dict) -> list[str]:
    u = r.get("unembedding")
    if not u:
        return []
    return [f"| greedy generate: share of wall time in the unembedding ({u['vocab']:,}-token vocabulary) | "
            f"{u['share_median']:.0%} ({u['share_min']:.0%}-{u['share_max']:.0%}) | | |",
            f"| unembedding's share of the matmul parameters (FLOPs per token) | {u['head_param_share']:.0%} | | |"]


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
             *_unembedding_rows(r),
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
