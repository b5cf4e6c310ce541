"""One writer per cache entry across processes (psm_repro/core/locks.py), with real processes."""

import multiprocessing as mp
import time
from pathlib import Path

from psm_repro.core.locks import entry_lock


def _get_or_make(entry: str, log: str) -> str:
    """The pattern every cache uses: check, lock, check again, compute (slowly) and write."""
    path = Path(entry)
    with entry_lock(path):
        if not path.exists():
            with open(log, "a") as fh:
                fh.write("computed\n")
            time.sleep(0.5)  # long enough for the other processes to arrive and wait
            path.write_text("value")
    return path.read_text()


def test_processes_sharing_an_entry_compute_it_once_and_all_read_it(tmp_path):
    entry, log = tmp_path / "cache" / "entry.json", tmp_path / "computed.log"
    with mp.get_context("spawn").Pool(3) as pool:
        got = pool.starmap(_get_or_make, [(str(entry), str(log))] * 3)
    assert got == ["value"] * 3
    assert log.read_text() == "computed\n"  # without the lock each process would compute it


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    entry = tmp_path / "entry"
    ctx = mp.get_context("spawn")
    holder = ctx.Process(target=_hold_forever, args=(str(entry),))
    holder.start()
    time.sleep(1.0)
    holder.kill()  # SIGKILL while it holds the lock
    holder.join()
    start = time.time()
    with entry_lock(entry):
        pass
    assert time.time() - start < 5


def _hold_forever(entry: str) -> None:
    with entry_lock(Path(entry)):
        time.sleep(60)
