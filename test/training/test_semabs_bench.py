"""``training/experiments/semabs_sim.py`` end to end on toy scenes: both tasks, both protocols, the JSON it writes."""

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

from training.train_semabs import load_config, train  # noqa: E402

TINY = ["model.grid=16", "model.unet_levels=2", "model.unet_f_maps=8", "model.point_hidden=16",
        "data.train_scenes=4", "data.val_scenes=3", "data.toy={num_queries: 600, points_per_face: 60}",
        "train.batch_size=1", "train.num_input_points=300", "train.num_queries=100", "train.ckpt_every=2",
        "train.restart_steps=3", "eval.num_input_points=300", "eval.test_splits=[test]"]


@pytest.mark.parametrize("task", ["ovssc", "vool"])
def test_semabs_sim_benchmark_runs_and_reports_both_protocols(tmp_path, task, capsys):
    """Two tiny checkpoints (seeds) are scored on val and a test split: IoUs in [0, 1], the val cutoff on the
    requested sweep, a reference-protocol block everywhere (VOOL: its split value is the mean over the
    relations), the RESULT line printed, and a bad --step refused."""
    from training.experiments import semabs_sim

    cfg_path = ROOT / "training/config/semabs_cpu.yaml"
    ckpts = []
    for seed in (0, 1):
        cfg = load_config(str(cfg_path), TINY + [f"task={task}", f"seed={seed}", f"out_dir={tmp_path / str(seed)}",
                                                 "train.max_steps=2"])
        train(cfg, progress=False)
        ckpts.append(str(tmp_path / str(seed) / "last.safetensors"))
    out = tmp_path / "res.json"
    assert semabs_sim.main(["--config", str(cfg_path), "--checkpoints", *ckpts, "--wide", "--step", "0.5",
                            "--device", "cpu", "--json", str(out), "--set", *TINY, f"task={task}"]) == 0
    res = json.loads(out.read_text())
    assert len(res["network"]) == 2
    sweep = np.arange(-10.0, 6.25, 0.5)
    for r in res["network"] + [res["baseline"]]:
        for split in ("val", "test"):
            assert 0.0 <= r[split]["mean"] <= 1.0
            assert "reference" in r[split]
        if r is not res["baseline"]:
            assert np.isclose(sweep, r["val"]["cutoff"]).any()
    if task == "vool":
        ref = res["network"][0]["test"]["reference"]
        per = [v for v in ref["per_name"].values() if np.isfinite(v)]
        assert ref["mean"] == pytest.approx(np.mean(per))
        assert ref["items"] > 0
    printed = capsys.readouterr().out
    assert f"RESULT task={task}" in printed
    assert "reference protocol" in printed
    with pytest.raises(SystemExit):
        semabs_sim.main(["--config", str(cfg_path), "--checkpoints", *ckpts, "--wide", "--step", "0"])
