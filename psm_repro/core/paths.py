"""Where the shipped data lives: configs/, experiments/, the default SAE and the reference corpus are read from the
checkout, or from the copy an installed wheel carries under psm_repro/_data (setup.py). No heavy imports here."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
BUNDLED = PACKAGE_DIR / "_data"
PROJECT_ROOT = BUNDLED if (BUNDLED / "configs").is_dir() else PACKAGE_DIR.parent
"""The checkout's root, or the wheel's data copy."""


def installed() -> bool:
    """True when running from an installed wheel (no checkout around the package)."""
    return PROJECT_ROOT == BUNDLED


def project_path(path: str | Path) -> Path:
    """Resolve a config path: as given if it exists (relative to the working directory), else under PROJECT_ROOT."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else PROJECT_ROOT / p


def output_path(path: str | Path) -> Path:
    """Where a relative output path (results/bench, a corpus, an SAE) is written: under the checkout, or, for an
    installed wheel, under the working directory (never inside site-packages)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path.cwd() if installed() else PROJECT_ROOT) / p
