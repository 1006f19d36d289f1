"""VISA audit generation on one output: a second generator refuses while the first runs (exclusive
lock, released by kill -9); the report's totals add up every run's counters and auditor statistics
across a kill and a resume; temporary files of a killed write are removed on the next start."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from occ_audit_ros import paths
from training.visa.generate import main
from training.visa.store import AuditStore, StoreLocked, check_unlocked, read_store

CLI = ["-m", "training.visa.generate"]


def test_store_lock_is_exclusive_and_released_on_close(tmp_path):
    path = tmp_path / "a.jsonl"
    with AuditStore(path) as store:
        store.append({"instance_token": "x"})
        with pytest.raises(StoreLocked, match="being written by another process"):
            AuditStore(path)
        with pytest.raises(StoreLocked):
            check_unlocked(path)
        assert read_store(path) == {"x": {"instance_token": "x"}}  # readers are not blocked
    check_unlocked(path)
    with AuditStore(path) as again:
        assert "x" in again


def test_second_generator_refuses_and_a_resume_reports_every_run(tmp_path, capsys):
    """Before: both generators ran and did all the work twice; the report had no totals and the
    killed run's statistics were lost."""
    out = tmp_path / "out"
    shard = out / "audits.shard-0-of-1.jsonl"
    env = dict(os.environ, PYTHONPATH=str(paths.REPO_ROOT))
    first = subprocess.Popen([sys.executable, *CLI, "--out", str(out), "--throttle-s", "0.15", "--no-progress"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (shard.exists() and shard.read_bytes().count(b"\n") >= 5):
            assert first.poll() is None, "the first generator ended too early"
            time.sleep(0.02)
        assert main(["--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert str(shard) in err and "being written by another process" in err
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    # a temporary file as a write killed inside atomic_path leaves it
    stale = out / ".stats.shard-0-of-1.json.abc123.tmp"
    stale.write_text("{")
    assert main(["--out", str(out), "--no-progress"]) == 0
    assert not stale.exists()
    report = json.loads((out / "report.json").read_text())
    audits = read_store(out / "audits.jsonl")
    rejected = read_store(out / "rejected.jsonl") if (out / "rejected.jsonl").exists() else {}
    totals = report["totals"]
    assert totals["runs"] == 2
    done = totals["counts"]["written"] + totals["counts"]["rejected"]
    # the killed run's statistics are saved after each instance: at most the one in flight is missing
    assert len(audits) + len(rejected) - 1 <= done <= len(audits) + len(rejected)
    assert totals["auditor_stats"]["requests"] >= totals["counts"]["written"]  # rejected crops never reach it
    last_run = report["shard_stats"][0]["runs"][-1]["counts"]
    assert last_run["written"] < totals["counts"]["written"]  # the totals are not the last run's
