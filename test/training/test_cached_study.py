"""Cached-feature study design and the full-size GPU script at toy size on CPU: a generated
simulator sequence, the work folder with VISA targets, stage 1 + feature cache + stage 2 through
``train_ago.train``, the full (uncached) mode through ``gpu_full_study.sh``, and the reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("open3d")

TINY = {"samples_per_scene": 2, "lidar": {"azimuth_step_deg": 2.0},
        "world": {"length": 120.0, "buildings_per_side": [1, 2], "trees_per_side": [1, 2], "pedestrians": [2, 3],
                  "vehicles_per_lane": [2, 3], "parked_vehicles": [1, 2], "cones": [1, 2], "barriers": [1, 2]},
        "occ3d": {"dims": [25, 25, 2], "camera_ray_stride": 8}}
TOY = ["data.voxel_size=3.2", "data.image_scale=0.05", "model.cnn_channels=8", "model.cnn_width=8", "model.hidden=8",
       "optim.warmup_steps=1", "noise.pool_size=256", "noise.count=8"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from training.experiments import visa_sim
    from training.sim import generate

    root = tmp_path_factory.mktemp("cached_study")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    for name, seed in (("train", 3), ("val", 4)):
        assert generate.main(["driving", "--out", str(root / name), "--scenes", "1", "--seed", str(seed),
                              "--config", str(root / "tiny.yaml"), "--no-progress"]) == 0
    w = root / "work"
    assert visa_sim.main(["prepare", "--train", str(root / "train"), "--val", str(root / "val"), "--work", str(w),
                          "--seeds", "0", "--accuracies", "0.6", "1.0", "--set", *TOY]) == 0
    return w


def test_feature_cache_equals_the_network_and_stage2_trains_the_last_layer(work, tmp_path):
    from training import train_ago
    from training.ago.data import collate, load_samples_file
    from training.experiments import cached_study as cs

    info = cs.stage1(work, 0, 2, "closed", eval_every=1)
    assert info["steps"] == 2 and [c["step"] for c in info["curve"] if "val_miou" in c] == [1, 2]
    # the cached features reproduce the full network's output through its own last layer
    cfg = cs.run_config(work, 0, work / "stage1" / "closed-s0", ["optim.steps=2"])
    r = train_ago.train(cfg, resume=True, progress=False)  # resumes at the end: the stage-1 model
    model, spec = r["trained"]["model"], r["trained"]["spec"]
    files = json.loads((work / "files.json").read_text())
    val = load_samples_file(files["val"], spec)
    cached = train_ago.load_feature_samples(info["val"], spec)
    assert [s.token for s in cached] == [s.token for s in val] and cached[0].depth.numel() == 0
    b = collate(val[:1])
    trunk = train_ago.FeatureTrunk(model.net.out)
    with torch.no_grad():
        full = model.net(b["images"], b["geoms"], b["depth"])
        via_cache = trunk(cached[0].images[None])
    assert via_cache.shape == full.shape
    assert torch.allclose(via_cache, full, atol=2e-2 * float(full.abs().max()))  # float16 cache
    with pytest.raises(ValueError, match="features"):
        trunk(torch.zeros(1, 2, 3))
    # stage 2: only the last layer + head exist and train; VISA through the config switch
    tgt = work / "visa_targets" / "acc100_0_w.safetensors"
    rec = cs.stage2(work, 0, "visa", [], {"targets": str(tgt)}, info, "cached", 3, eval_every=1)
    assert rec["steps"] == 3 and {"visa_tax", "visa_attr", "visa_graph"} <= set(rec["final_losses"])
    assert 0.0 <= rec["miou"] <= 100.0 and len(rec["confusion"]) == 18
    assert [c["step"] for c in rec["curve"] if "val_miou" in c] == [1, 2, 3]
    base = cs.stage2(work, 0, "baseline", [], None, info, "cached", 3)
    assert "visa_tax" not in base["final_losses"]
    with pytest.raises(ValueError, match="align.source"):
        cs.stage2(work, 0, "x", ["align.enabled=true", "align.source=clip"], None, info, "cached", 1)
    # L_align against the simulated VLM works on cached features (the file keeps the camera visibility)
    ago = cs.stage2(work, 0, "ago", ["model.adapter=true", "align.enabled=true", "align.source=oracle"], None,
                    info, "cached", 2)
    assert 0.0 < ago["final_losses"]["align"] < 2.0
    assert train_ago.load_feature_samples(info["train"], spec)[0].geom.valid.shape == (1, 25 * 25 * 2)
    with pytest.raises(ValueError, match="mode"):
        cs.stage2(work, 0, "x", [], None, info, "other", 1)


def test_visa_targets_weightings(work):
    from training.visa.ago_hook import load_targets

    w, mw = load_targets(work / "visa_targets" / "acc60_0_w.safetensors")
    nw, _ = load_targets(work / "visa_targets" / "acc60_0_nw.safetensors")
    soft, ms = load_targets(work / "visa_targets" / "acc60_0_soft.safetensors")
    assert mw["weighting"] == "reliability" and ms["weighting"] == "soft" and mw["num_samples"] == 2
    for tok in w:
        assert torch.equal(w[tok].voxel_index, nw[tok].voxel_index)
        expect = nw[tok].weight.sqrt() * w[tok].weight.sqrt()  # ρ^(1-γ) · w^γ, γ = 0.5
        assert torch.allclose(soft[tok].weight, expect)
    assert mw["rows"] == mw["rows_right"] + mw["rows_wrong"]


def test_gpu_script_full_mode_and_reports_at_toy_size(work, tmp_path):
    env = dict(os.environ, WORK=str(work), PY=sys.executable, DEVICE="cpu", STEPS="2", WORKERS="2", SEEDS="0",
               VISA_ONLY="baseline visa", AGO_ONLY="linear ground ow_ground", OUT=str(tmp_path / "full"),
               PYTHONPATH=str(REPO))
    p = subprocess.run(["bash", str(REPO / "training" / "experiments" / "gpu_full_study.sh")], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    visa = [json.loads(l) for l in (tmp_path / "full" / "visa-full.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in visa) == ["baseline", "visa"] and all(r["mode"] == "full" for r in visa)
    ago = [json.loads(l) for l in (tmp_path / "full" / "ago-full.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in ago) == ["ground", "linear", "ow_ground"]
    ow = next(r for r in ago if r["run"] == "ow_ground")
    assert set(ow["confusions"]) == {"phrases/none", "names/none", "synonyms/none"}
    assert np.asarray(ow["confusions"]["names/none"]).shape == (18, 18)
    md = (tmp_path / "full" / "visa_full.md").read_text()
    assert "| visa |" in md and "RESULT" in p.stdout and "WALL" in p.stdout
    assert "held-out" in (tmp_path / "full" / "ago_full.md").read_text()
    assert (tmp_path / "full" / "img" / "visa_study_ablation.png").is_file()
    assert (tmp_path / "full" / "img" / "ago_diag_learning_curves.png").is_file()
