from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mammopath.errors import ConfigError
from mammopath.locks import exclusive

HOLD = """
import sys, time
from mammopath.locks import exclusive
with exclusive(sys.argv[1], "the thing"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_holder_is_refused_with_the_holders_pid_while_the_first_runs(tmp_path: Path) -> None:
    lock = tmp_path / "run" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        expected = rf"the run is in use by process {holder.pid} on .*lock file {lock}"
        with pytest.raises(ConfigError, match=expected), exclusive(lock, "the run"):
            pass
        assert json.loads(lock.read_text())["pid"] == holder.pid  # the refused one leaves the holder's lock alone
    finally:
        holder.kill()
        holder.wait()
    # killed without releasing: its lock is stale, taken over, and released after the block
    assert lock.is_file()
    ran = []
    with exclusive(lock, "the run"):
        ran.append(json.loads(lock.read_text())["pid"])
    assert ran == [os.getpid()] and not lock.exists()


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with pytest.raises(RuntimeError), exclusive(lock, "x"):
        raise RuntimeError("boom")
    assert not lock.exists()
    with exclusive(lock, "x"):  # and can be taken again at once
        assert lock.is_file()


def test_a_lock_of_another_host_is_never_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(ConfigError, match="in use by process 1 on elsewhere"), exclusive(lock, "the data"):
        pass
    assert lock.is_file()


def test_a_sweep_refuses_a_run_another_sweep_is_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mammopath.sweep import Grid, Run, Sweep

    monkeypatch.chdir(tmp_path)
    grid = Grid(name="g", configs=[], methods={"erm": []}, folds={"f": []}, seeds=[0])
    run = Run("f", "erm", 0, "g")
    lock = Path(grid.runs_dir) / run.id / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(ConfigError, match=f"sweep run {run.id} is in use by process {holder.pid}"):
            Sweep(grid).execute(run)
        assert time.monotonic() - started < 5  # refused at once: nothing was launched
        assert not (Path(grid.results_dir) / run.id / "sweep.log").exists()
    finally:
        holder.kill()
        holder.wait()
