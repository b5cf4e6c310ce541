"""One writer per cache entry: processes that share `PSM_REPRO_CACHE` (a Hydra multirun with the joblib launcher,
two `find`s in two shells) take an exclusive lock on `<entry>.lock` before they check the entry, so the first
computes and writes it and the others wait, then read what it wrote. Every write is atomic as well
(psm_repro/core/outputs.py), so a process killed mid-write leaves the old entry or none, never half of one; the
lock dies with its process (flock), so a kill never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


@contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of cache entry `path` (a file or a directory) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process to finish %s", path)
            start = time.time()
            fcntl.flock(fd, fcntl.LOCK_EX)
            logger.info("%s: done by another process after %.0f s", path, time.time() - start)
        yield
    finally:
        os.close(fd)  # closing releases the lock
