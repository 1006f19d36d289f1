"""VISA audit store and generation CLI: atomic appends, kill -9 resume, shards, torchrun, report."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from occ_audit_ros import paths
from training.visa.generate import agreement_report, main
from training.visa.schema import validate_record
from training.visa.store import AuditStore, StoreCorrupt, merge_stores, read_store

REPO = paths.REPO_ROOT
CLI = ["-m", "training.visa.generate"]


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_store_truncates_a_torn_tail_skips_known_keys_and_rejects_corruption(tmp_path):
    p = tmp_path / "s.jsonl"
    with AuditStore(p) as s:
        assert s.append({"instance_token": "a", "v": 1})
        assert s.append({"instance_token": "b", "v": 2})
        assert not s.append({"instance_token": "a", "v": 3})  # already present: not written
    with open(p, "ab") as f:
        f.write(b'{"instance_token": "c", "v"')  # what a kill during write(2) could leave
    with AuditStore(p) as s:
        assert s.truncated_bytes == len(b'{"instance_token": "c", "v"')
        assert sorted(s.keys) == ["a", "b"]
        assert s.append({"instance_token": "c", "v": 4})
    assert [r["instance_token"] for r in _lines(p)] == ["a", "b", "c"]
    merged = merge_stores([p, p], tmp_path / "m.jsonl")
    assert list(merged) == ["a", "b", "c"] and len(_lines(tmp_path / "m.jsonl")) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instance_token": "a"}\nnot json\n{"instance_token": "b"}\n')
    with pytest.raises(StoreCorrupt, match="bad.jsonl:2"):
        read_store(bad)
    with pytest.raises(ValueError, match="instance_token"):
        AuditStore(tmp_path / "x.jsonl").append({"v": 1})


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted single-process run of the CLI with the SIMULATED auditor."""
    out = tmp_path_factory.mktemp("ref")
    assert main(["--out", str(out), "--no-progress"]) == 0
    return out


def test_reference_run_writes_valid_records_and_a_consistent_report(reference_run):
    recs = _lines(reference_run / "audits.jsonl")
    rejected = _lines(reference_run / "rejected.jsonl")
    assert len(recs) > 40 and len({r["instance_token"] for r in recs}) == len(recs)
    for r in recs:
        validate_record(r)
        assert r["vlm"]["kind"] == "SIMULATED"
    # Every K_obj box of the keyframe is either audited or rejected (no crop), never both.
    from occ_audit_ros.nuscenes_io import load_keyframe
    from training.visa.generate import keyframe_instances

    tokens = {t for t, _, _ in keyframe_instances(load_keyframe())}
    done = {r["instance_token"] for r in recs}
    rej = {r["instance_token"] for r in rejected}
    assert done | rej == tokens and not done & rej
    report = json.loads((reference_run / "report.json").read_text())
    hits = sum(r["class_hypothesis"] == r["gt"]["class"] for r in recs)
    assert report["n"] == len(recs) and report["agreement"] == pytest.approx(hits / len(recs))
    assert np.trace(np.array(report["confusion"])) == hits
    assert "SIMULATED" in report["note"]
    from PIL import Image

    with Image.open(reference_run / "confusion.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_resume_after_sigkill_loses_and_duplicates_nothing(reference_run, tmp_path):
    out = tmp_path / "killed"
    shard_file = out / "audits.shard-0-of-1.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, *CLI, "--out", str(out), "--throttle-s", "0.15",
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if shard_file.exists() and shard_file.read_bytes().count(b"\n") >= 8:
                break
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = shard_file.read_bytes().count(b"\n")
    total = len(_lines(reference_run / "audits.shard-0-of-1.jsonl"))
    assert 8 <= partial < total
    assert not (out / "audits.jsonl").exists()  # killed before the merge
    # Also leave a torn line, as a kill inside write(2) would.
    with open(shard_file, "ab") as f:
        f.write(b'{"attributes": {"cargo')
    assert main(["--out", str(out), "--no-progress"]) == 0
    resumed = _lines(out / "audits.shard-0-of-1.jsonl")
    assert len(resumed) == len({r["instance_token"] for r in resumed}) == total
    assert (out / "audits.jsonl").read_text() == (reference_run / "audits.jsonl").read_text()
    assert (out / "rejected.jsonl").read_text() == (reference_run / "rejected.jsonl").read_text()
    # A second resume has nothing left to do and changes nothing.
    before = shard_file.read_bytes()
    assert main(["--out", str(out), "--no-progress"]) == 0
    assert shard_file.read_bytes() == before


def test_manual_shards_merge_to_the_single_process_result(reference_run, tmp_path):
    for i in range(2):
        assert main(["--out", str(tmp_path), "--shard", f"{i}/2", "--no-progress"]) == 0
    a = _lines(tmp_path / "audits.shard-0-of-2.jsonl")
    b = _lines(tmp_path / "audits.shard-1-of-2.jsonl")
    assert a and b and not {r["instance_token"] for r in a} & {r["instance_token"] for r in b}
    assert main(["--out", str(tmp_path), "--shard", "0/2", "--merge"]) == 0
    assert (tmp_path / "audits.jsonl").read_text() == (reference_run / "audits.jsonl").read_text()


def test_torchrun_two_gloo_ranks_match_the_single_process_result(reference_run, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(port), *CLI, "--out", str(tmp_path), "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "audits.shard-1-of-2.jsonl").exists()
    assert (tmp_path / "audits.jsonl").read_text() == (reference_run / "audits.jsonl").read_text()


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--shard", "2/2"]) == 2
    assert "0 <= I < N" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--shard", "0/3", "--merge"]) == 2
    assert "run that shard first" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--auditor", "vlm", "--model", str(tmp_path / "no-vlm")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_agreement_report_counts_by_quality():
    recs = {
        "a": {"class_hypothesis": "car", "gt": {"class": "car"}, "crop": {"quality": "clear"}},
        "b": {"class_hypothesis": "truck", "gt": {"class": "car"}, "crop": {"quality": "poor"}},
        "c": {"class_hypothesis": "bus", "gt": {"class": "bus"}, "crop": {"quality": "poor"}},
    }
    rep = agreement_report(recs)
    assert rep["n"] == 3 and rep["agreement"] == pytest.approx(2 / 3)
    assert rep["per_quality"]["poor"] == {"n": 2, "agreement": 0.5}
    assert rep["confusion"][3][9] == 1  # GT car (row 3) audited as truck (column 9)


def test_cli_runs_the_clip_and_vlm_auditors_and_counts_rejections(tmp_path):
    from visa_tiny_vlm import save_tiny_qwen2vl

    import yaml

    vlm_dir = save_tiny_qwen2vl(tmp_path / "tiny_vlm")
    cfg = yaml.safe_load((REPO / "training" / "config" / "visa.yaml").read_text())
    cfg["auditor"]["vlm"].update(max_new_tokens=8, device="cpu")  # a random model never stops early
    (tmp_path / "visa.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "vlm"
    assert main(["--out", str(out), "--config", str(tmp_path / "visa.yaml"), "--auditor", "vlm",
                 "--model", str(vlm_dir), "--limit", "3", "--no-progress"]) == 0
    rejected = _lines(out / "rejected.jsonl")
    reasons = [r["reason"] for r in rejected]
    assert len(rejected) == 3 and set(reasons) <= {"auditor answer rejected", "no usable crop"}
    stats = json.loads((out / "stats.shard-0-of-1.json").read_text())["runs"][0]["auditor_stats"]
    # Every crop that reached the model was rejected (random weights never write JSON), after a retry.
    n_asked = reasons.count("auditor answer rejected")
    assert n_asked >= 1 and stats["requests"] == stats["rejected"] == n_asked
    assert json.loads((out / "report.json").read_text())["n"] == 0
    out = tmp_path / "clip"
    assert main(["--out", str(out), "--auditor", "clip", "--model", "random-tiny", "--limit", "3",
                 "--no-progress"]) == 0
    recs = _lines(out / "audits.jsonl")
    assert len(recs) + len(_lines(out / "rejected.jsonl")) == 3 and recs and all(r["vlm"]["kind"] == "clip-zero-shot" and "RANDOM" in r["vlm"]["model"] for r in recs)
