"""Steering: inject SAE latents (or a dense direction) into the residual stream, one context manager.

    with steer(model, sae, [Intervention(feature=123, mode="add")], coefficients_B, prompt_width=P):
        model.model.generate(...)

Every batch row has its own coefficient, so a whole sweep (coefficients x prompts x samples)
is one batched generate call. Coefficients are multiples of the latent's max activation on the
search set, so 1.0 means "as strongly as the latent ever fired on the persona's items".

Modes:
* add:    x + c * max_act * (decode(e_f) - decode(0))       (works at any position)
* clamp:  x + decode(f with f_i = c * max_act) - decode(f)  (keeps the SAE error term)
* ablate: clamp to zero
Both go through the SAE's own `decode`, so decoder-norm rescaling (`rescale_acts_by_decoder_norm`) and
activation normalisation are honoured. For most SAEs the add vector is fixed; for the sae-lens normalisations
that rescale by a statistic of the current input (`constant_norm_rescale`, `layer_norm`) it is computed per
token, at that token's normalisation state, as the SAE's decode would.
Positions: "all", "prompt" (absolute position < prompt width) or "generated" (>= prompt width,
which with a KV cache is every token generated after the prompt). Special/template tokens
(BOS, role headers, end-of-turn, padding) are never steered unless `steer_special=True`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from psm_repro.core.chat import TRANSCRIPT_STOPS, cut_made_up_turn, encode_prompt, is_transcript
from psm_repro.core.hooked import CallInfo, HookedModel
from psm_repro.core.loading import sae_encode, sae_hook_name

MODES = ("add", "clamp", "ablate")
POSITIONS = ("all", "prompt", "generated")


@dataclass
class Intervention:
    """One latent (or a dense `direction`) to inject; its strength per row comes from the coefficients."""

    mode: str = "add"
    feature: int | None = None
    direction: torch.Tensor | None = None
    """Used instead of a latent's decoder row (dense baselines, random directions); `add` only."""
    scale: float = 1.0
    """Activation units per coefficient: the latent's max activation on the search set."""
    weight: float = 1.0
    """Multiplier on the row coefficient, so several latents can get their own coefficients."""
    rows: torch.Tensor | None = None
    """(B,) bool: batch rows this intervention applies to (None: all), so one batch can hold
    several methods (latent, random control, dense baseline) side by side."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"steer.mode: unknown mode '{self.mode}' (expected one of {MODES})")
        if self.feature is None and self.direction is None:
            raise ValueError("an Intervention needs a feature or a direction")
        if self.direction is not None and self.mode != "add":
            raise ValueError("a dense direction can only be added (mode=add)")


INPUT_DEPENDENT_NORMS = ("constant_norm_rescale", "layer_norm")
"""sae-lens normalisations whose `decode` rescales by a statistic that `encode` stored from the current input."""


def norm_depends_on_input(sae) -> bool:
    return getattr(sae.cfg, "normalize_activations", "none") in INPUT_DEPENDENT_NORMS


def decode_difference(sae, acts: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`sae.decode(a) - sae.decode(b)`, at the normalisation state of `acts` where the SAE's depends on its input.

    sae-lens stores that state in `encode` and drops it after one `decode`, so it is set again before each."""
    dependent = norm_depends_on_input(sae)
    if dependent:
        sae_encode(sae, acts)
    out_a = sae.decode(a.to(sae.dtype)).float()
    if dependent:
        sae_encode(sae, acts)
    return out_a - sae.decode(b.to(sae.dtype)).float()


def latent_vector(sae, feature: int, acts: torch.Tensor | None = None) -> torch.Tensor:
    """What one unit of latent `feature` writes: decode(e_f) - decode(0). (D,) for SAEs with a fixed geometry,
    (B, T, D) per token of `acts` for the input-dependent normalisations."""
    if norm_depends_on_input(sae) and acts is not None:
        unit = torch.zeros(*acts.shape[:-1], sae.cfg.d_sae, device=acts.device)
        unit[..., feature] = 1.0
        return decode_difference(sae, acts, unit, torch.zeros_like(unit))
    unit = torch.zeros(1, sae.cfg.d_sae, device=sae.W_dec.device)
    unit[0, feature] = 1.0
    reference = None
    if norm_depends_on_input(sae):  # unit normalisation scale: mean 0, norm sqrt(d_in), std ~1
        reference = torch.ones(1, sae.cfg.d_in, device=sae.W_dec.device)
        reference[:, 1::2] = -1.0
    return decode_difference(sae, reference, unit, torch.zeros_like(unit))[0]


def steering_vector(sae, iv: Intervention) -> torch.Tensor:
    """The vector `add` injects at coefficient 1 (for reporting its norm, too). For SAEs whose normalisation
    depends on the input it is the vector at unit normalisation scale; each token's vector scales with it."""
    if iv.direction is not None:
        return iv.direction.float() * iv.scale
    return latent_vector(sae, iv.feature) * iv.scale


def position_mask(info: CallInfo, T: int, batch: int, positions: str, prompt_width: int,
                  special_ids: torch.Tensor | None, device) -> torch.Tensor:
    """(B, T) bool: which positions of this forward call get steered."""
    absolute = info.offset + torch.arange(T, device=device)
    if positions == "all":
        keep = torch.ones(T, dtype=torch.bool, device=device)
    elif positions == "prompt":
        keep = absolute < prompt_width
    elif positions == "generated":
        keep = absolute >= prompt_width
    else:
        raise ValueError(f"steer.positions: unknown value '{positions}' (expected one of {POSITIONS})")
    mask = keep[None, :].expand(batch, T).clone()
    if special_ids is not None and info.input_ids is not None and info.input_ids.shape[1] == T:
        mask &= ~torch.isin(info.input_ids.to(device), special_ids.to(device))
    return mask


@contextlib.contextmanager
def steer(model: HookedModel, sae, interventions: list[Intervention], coefficients_B: torch.Tensor,
          positions: str = "all", prompt_width: int = 0, steer_special: bool = False) -> Iterator[None]:
    """Apply the interventions with per-row coefficients (B,) inside the block, or one (1,) for every row; hooks
    removed on exit."""
    if positions not in POSITIONS:
        raise ValueError(f"steer.positions: unknown value '{positions}' (expected one of {POSITIONS})")
    hook = sae_hook_name(sae)
    coef_B = coefficients_B.float()
    special = None if steer_special else torch.tensor(sorted(model.tokenizer.all_special_ids))
    adds = [iv for iv in interventions if iv.mode == "add"]
    clamps = [iv for iv in interventions if iv.mode in ("clamp", "ablate")]
    add_vecs = [steering_vector(sae, iv) for iv in adds]

    def edit(acts_BTD: torch.Tensor, info: CallInfo) -> torch.Tensor:
        B, T, _ = acts_BTD.shape
        if coef_B.shape[0] not in (1, B):  # one coefficient applies to every row
            raise ValueError(f"steering got a batch of {B} rows but {coef_B.shape[0]} coefficients")
        c_B = coef_B.expand(B)
        mask_BT1 = position_mask(info, T, B, positions, prompt_width, special, acts_BTD.device)[..., None]
        x = acts_BTD.float()
        coef = c_B.to(x.device)[:, None, None]
        delta = torch.zeros_like(x)
        for iv, vec in zip(adds, add_vecs):
            rows = 1.0 if iv.rows is None else iv.rows.to(x.device).float()[:, None, None]
            if iv.direction is None and norm_depends_on_input(sae):
                vec = latent_vector(sae, iv.feature, x) * iv.scale
            delta += coef * iv.weight * rows * vec.to(x.device)
        if clamps:
            feats = sae_encode(sae, x)
            edited = feats.clone()
            for iv in clamps:
                rows = torch.ones(B, dtype=torch.bool) if iv.rows is None else iv.rows.bool()
                rows = rows.to(x.device)
                target = torch.zeros(B, device=x.device) if iv.mode == "ablate" else \
                    c_B.to(x.device) * iv.weight * iv.scale
                edited[rows, :, iv.feature] = target[rows, None].to(edited.dtype).expand(-1, T)
            # decode(edited) - decode(feats): everything the SAE does not explain (its error term) stays
            delta += decode_difference(sae, x, edited, feats)
        return (x + delta * mask_BT1).to(acts_BTD.dtype)

    with model.edit(hook, edit):
        yield


def stop_ids(model: HookedModel) -> list[int]:
    """Every end id the model's generation config lists, plus the tokenizer's EOS (Gemma-IT ends turns on
    `<end_of_turn>`, which is not its tokenizer's EOS)."""
    ids = getattr(getattr(model.model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if model.tokenizer.eos_token_id is not None:
        ids.append(model.tokenizer.eos_token_id)
    return sorted(set(ids))


def generate(model: HookedModel, prompts: list[list[int]], max_new_tokens: int, temperature: float,
             seed: int, top_p: float | None = None) -> tuple[list[list[int]], int]:
    """Sample replies for left-padded prompts with HF `generate` (KV cache on).

    Returns (new token ids per row, prompt width); run it inside `steer(...)` to steer. `top_p` None or 1
    is plain temperature sampling; temperature 0 is greedy. A reply ends at any of the model's end ids; a base
    model's (plain-text transcript) also where it starts a turn of its own ("\nUser:").
    """
    from transformers import LogitsProcessorList

    ids, attn = model.pad_batch(prompts, side="left")
    torch.manual_seed(seed)
    tok = model.tokenizer
    ends = stop_ids(model)
    sample = temperature > 0
    transcript = is_transcript(tok)
    stops = dict(stop_strings=list(TRANSCRIPT_STOPS), tokenizer=tok) if transcript else {}
    nucleus = sample and top_p is not None and top_p < 1
    # temperature and top-p by NucleusWarper (HF's two warpers without sorting the vocabulary); HF samples
    warp = dict(logits_processor=LogitsProcessorList([NucleusWarper(temperature, top_p)]), temperature=1.0,
                top_p=1.0) if nucleus else dict(temperature=temperature if sample else None, top_p=None)
    with torch.inference_mode():
        out = model.model.generate(input_ids=ids.to(model.device), attention_mask=attn.to(model.device),
                                   max_new_tokens=max_new_tokens, do_sample=sample, top_k=None,
                                   pad_token_id=tok.pad_token_id, eos_token_id=ends, **warp, **stops)
    new = out[:, ids.shape[1]:].tolist()
    cleaned = []
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in ends), len(row))
        row = [t for t in row[:cut] if t != tok.pad_token_id]
        cleaned.append(cut_made_up_turn(tok, row) if transcript else row)
    return cleaned, ids.shape[1]


class NucleusWarper:
    """Temperature then top-p (nucleus) filtering, as HF's TemperatureLogitsWarper + TopPLogitsWarper compute them,
    without sorting the whole vocabulary: a token is kept when the probability mass of the tokens ranked above it is
    below `top_p` (the top token always), and that set lies within the top `k` tokens whenever their mass reaches
    `top_p` (k grows until it does). Sorting 49k logits per row per step was a fifth of SmolLM2's sampling time."""

    def __init__(self, temperature: float, top_p: float, k: int = 64):
        self.temperature, self.top_p, self.k = temperature, top_p, k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature
        probs = scores.float().softmax(-1)
        k = min(self.k, scores.shape[-1])
        while True:
            top, idx = probs.topk(k, dim=-1)
            if k == scores.shape[-1] or bool((top.sum(-1) >= self.top_p).all()):
                break
            k = min(4 * k, scores.shape[-1])
        keep = (top.cumsum(-1) - top) < self.top_p
        keep[:, 0] = True
        drop = torch.ones_like(scores, dtype=torch.bool).scatter(-1, idx, ~keep)
        return scores.masked_fill(drop, float("-inf"))


def reply(model: HookedModel, sae, prompt: str, interventions: list[Intervention], coefficient: float,
          max_new_tokens: int, temperature: float, seed: int, positions: str = "all",
          steer_special: bool = False) -> str:
    """The model's reply to one user prompt with `interventions` at `coefficient` (none: unsteered), decoded."""
    ids = [encode_prompt(model.tokenizer, [{"role": "user", "content": prompt}])]
    with contextlib.ExitStack() as stack:
        if interventions:
            stack.enter_context(steer(model, sae, interventions, torch.tensor([float(coefficient)]),
                                      positions=positions, prompt_width=len(ids[0]), steer_special=steer_special))
        out, _ = generate(model, ids, max_new_tokens, temperature, seed)
    return model.tokenizer.decode(out[0], skip_special_tokens=True).strip()
