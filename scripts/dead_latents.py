"""How many of the committed SAE's latents never fire on text it was trained on (saes/dead_latents.md).

Reads ~30k tokens of four Shakespeare works from the training split through the embedded model, as the SAE was
trained (BOS-led sequences, positions from the SAE's seqpos_slice start), and counts latents that never fire.
Run: .venv/bin/python scripts/dead_latents.py [SAE_DIR] (about a minute on 2 cores)."""
import json
import sys

import torch

from psm_repro.config import ModelConfig, SAEConfig
from psm_repro.core.embedded import cache_root
from psm_repro.core.loading import load_model, load_sae, sae_encode, sae_first_position, sae_prepend_bos

sae_dir = sys.argv[1] if len(sys.argv) > 1 else "saes/smollm2_135m_l15_topk_v2"
m = load_model(ModelConfig())
sae = load_sae(SAEConfig(path=sae_dir), m)
bos = [m.tokenizer.bos_token_id] if sae_prepend_bos(sae) else []
start = sae_first_position(sae)
fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
n = 0
for play in ("hamlet_gut", "macbeth_gut", "othello_gut", "tempest_gut"):  # all four are training works
    ids = m.tokenizer((cache_root() / "shakespeare" / f"{play}.txt").read_text(), add_special_tokens=False)["input_ids"]
    width = 128 - len(bos)
    seqs = [bos + ids[i:i + width] for i in range(0, len(ids) - width, width)][:60]
    for b in range(0, len(seqs), 16):
        x = torch.tensor(seqs[b:b + 16])
        acts = m.activations(x, torch.ones_like(x), sae.cfg.metadata.hook_name)[:, start:]
        f = sae_encode(sae, acts) > 0
        fired += f.reshape(-1, f.shape[-1]).sum(0)
        n += f.shape[0] * f.shape[1]
print(json.dumps({"sae": sae_dir, "training_tokens_read": n, "never_fired_fraction": float((fired == 0).float().mean()),
                  "fired_fewer_than_10_times": float((fired < 10).float().mean())}))
