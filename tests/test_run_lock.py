"""One writer per output folder (symmpo/train/run_lock.py)."""

import json
import subprocess
import sys

import pytest
from test_cli import run_train

from symmpo.train.cli import UsageError
from symmpo.train.run_lock import LOCK_NAME, RunLock

HOLD = """
import sys, time
from symmpo.train.run_lock import RunLock
lock = RunLock(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def other_process_holding(tmp_path):
    """Another live process holding the lock of tmp_path."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, other_process_holding):
    with pytest.raises(UsageError, match=rf"in use by process {other_process_holding.pid} "):
        RunLock(tmp_path)


def test_train_script_refuses_a_folder_another_run_writes(tmp_path, other_process_holding, capsys):
    status, err = run_train(["--output_dir", str(tmp_path), "--max_steps", "1"], capsys)
    assert status == 2 and f"in use by process {other_process_holding.pid}" in err
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "ref_cache").exists()


def test_a_killed_runs_lock_is_taken_over(tmp_path, other_process_holding):
    pid = other_process_holding.pid
    other_process_holding.kill()  # SIGKILL: no clean-up ran
    other_process_holding.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == pid
    said = []
    lock = RunLock(tmp_path, log=said.append)
    assert said == [f"took over the stale lock of process {pid} (it no longer runs)"]
    lock.release()
    RunLock(tmp_path).release()  # released: free again


def test_a_later_run_in_the_same_process_takes_over_its_own_lock(tmp_path):
    first = RunLock(tmp_path)  # e.g. a run that stopped with an error, its lock never released
    second = RunLock(tmp_path)
    assert first.handle.closed and not second.handle.closed
    second.release()
