"""The wheel carries what a run needs beside the code: configs/, experiments/ (personas, judge sets, EM data), the
default SAE and the dashboards' reference corpus, copied under psm_repro/_data (psm_repro/core/paths.py reads them
from there when no checkout surrounds the package). Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = ("configs", "experiments", "saes/smollm2_135m_l15_topk_v2", "corpus/smollm2_135m")
"""Paths relative to the checkout; tests/test_wheel.py checks they cover the default config's SAE and corpus."""


class BuildWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout itself
            return
        for rel in BUNDLED:
            src, dst = ROOT / rel, Path(self.build_lib) / "psm_repro" / "_data" / rel
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithData})
