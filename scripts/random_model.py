"""Build a random-weight copy of a model from its config + tokenizer only, for offline smoke tests.

    python scripts/random_model.py SRC_DIR DST_DIR [--seed 0]

SRC_DIR holds config.json and the tokenizer files (e.g. the embedded model's cache directory,
~/.cache/psm_repro/smollm2-135m-instruct-f32, without its weights). DST_DIR gets a model of the
same architecture and size with random weights, loadable with `model.path=DST_DIR`. It exercises
every code path (shapes, hooks, devices, dtypes, memory) at the real size; its outputs mean nothing.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(args.src)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(args.dst)
    AutoTokenizer.from_pretrained(args.src).save_pretrained(args.dst)
    print(f"random {config.model_type} with {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters "
          f"-> {args.dst}")


if __name__ == "__main__":
    main()
