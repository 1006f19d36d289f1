"""SemAbs training packs (round trip, quantisation bounds), batch augmentation, time-budgeted training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]

from training.semabs.pack import read_pack, write_pack  # noqa: E402
from occ_audit_ros.semabs.pointcloud import Workspace, lattice_points  # noqa: E402

WS = Workspace((-1.0, -1.0, -0.1), (1.0, 1.0, 1.9))


def _sample(rng, n_random=300, grid=8, points=500, labels=3, descs=2):
    lat = lattice_points(WS, grid)
    lo, up = np.array(WS.lower), np.array(WS.upper)
    q = np.concatenate([rng.uniform(lo, up, (n_random, 3)).astype(np.float32), lat])
    M = len(q)
    return {"xyz": rng.uniform(lo, up, (points, 3)).astype(np.float32),
            "relevancy": rng.normal(0, 0.3, (labels, points)).astype(np.float32),
            "labels": [f"l{i}" for i in range(labels)], "queries": q,
            "occupancy": rng.random((labels, M)) < 0.1, "valid": rng.random(M) < 0.6,
            "T_ws_cam": np.eye(4), "descriptions": [(0, "on", 1), (2, "behind", 0)][:descs],
            "vool_occupancy": rng.random((descs, M)) < 0.2, "split": "test", "num_relevancy_labels": labels - 1}


def test_pack_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    samples = [_sample(rng), _sample(rng, labels=4, descs=1)]
    info = write_pack(samples, tmp_path / "p.npz", WS, lattice_grid=8, num_random=300, max_cloud_points=400,
                      max_random_queries=100, seed=5)
    assert info["views"] == 2 and (tmp_path / "p.npz").is_file()
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write leaves no temporary file
    back = read_pack(tmp_path / "p.npz")
    step = (np.array(WS.upper) - np.array(WS.lower)) / 65535
    lat = lattice_points(WS, 8)
    for s, b in zip(samples, back):
        assert b["labels"] == s["labels"] and b["descriptions"] == s["descriptions"]
        assert b["num_relevancy_labels"] == s["num_relevancy_labels"] and b["split"] == "test"
        assert b["xyz"].shape == (400, 3) and b["xyz"].dtype == np.float32
        # every packed point is one of the sample's points (within half a quantisation step) with its relevancy
        d = np.abs(b["xyz"][:, None, :] - s["xyz"][None]).max(-1)
        src = d.argmin(1)
        assert np.all(np.abs(b["xyz"] - s["xyz"][src]) <= step / 2 + 1e-6)
        assert len(np.unique(src)) == 400
        scale = np.abs(s["relevancy"]).max(1, keepdims=True) / 127
        assert np.all(np.abs(b["relevancy"] - s["relevancy"][:, src]) <= scale / 2 + 1e-6)
        # queries: <= 100 valid random ones, then exactly the valid lattice centres; occupancy carried along
        valid = s["valid"]
        nr = len(b["queries"]) - int(valid[300:].sum())
        assert nr == min(100, int(valid[:300].sum()))
        np.testing.assert_array_equal(b["queries"][nr:], lat[valid[300:]])
        np.testing.assert_array_equal(b["occupancy"][:, nr:], s["occupancy"][:, 300:][:, valid[300:]])
        np.testing.assert_array_equal(b["vool_occupancy"][:, nr:], s["vool_occupancy"][:, 300:][:, valid[300:]])
        rq = np.abs(b["queries"][:nr, None, :] - s["queries"][None, :300]).max(-1).argmin(1)
        assert np.all(valid[rq])
        np.testing.assert_array_equal(b["occupancy"][:, :nr], s["occupancy"][:, rq])
        assert b["valid"].all()
    # deterministic: the same call writes the same arrays
    write_pack(samples, tmp_path / "q.npz", WS, 8, 300, 400, 100, seed=5)
    with np.load(tmp_path / "p.npz") as a, np.load(tmp_path / "q.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_pack_rejects_other_query_layout(tmp_path):
    s = _sample(np.random.default_rng(0))
    with pytest.raises(ValueError):
        write_pack([s], tmp_path / "p.npz", WS, lattice_grid=8, num_random=299)
    with pytest.raises(FileNotFoundError):
        read_pack(tmp_path / "missing.npz")


def test_augmentation_moves_points_and_queries_together():
    from training.train_semabs import augment_batch

    rng = np.random.default_rng(1)
    xyz = torch.from_numpy(rng.uniform(-0.5, 0.5, (2, 50, 3)).astype(np.float32)) + torch.tensor([0.0, 0.0, 0.9])
    q = torch.from_numpy(rng.uniform(-1.0, 1.0, (2, 3, 20, 3)).astype(np.float32)) + torch.tensor([0.0, 0.0, 0.9])
    batch = {"xyz": xyz.clone(), "relevancy": torch.randn(2, 3, 50), "queries": q.clone(),
             "target": torch.zeros(2, 3, 20), "mask": torch.ones(2, 3, 20, dtype=torch.bool)}
    augment_batch(batch, np.random.default_rng(2), rotation=0.3, translation=0.1, scale=0.0, workspace=WS)
    # rigid (no scale): distances between input points and queries are unchanged
    for b in range(2):
        before = torch.cdist(xyz[b], q[b].reshape(-1, 3))
        after = torch.cdist(batch["xyz"][b], batch["queries"][b].reshape(-1, 3))
        assert torch.allclose(before, after, atol=1e-5)
        assert not torch.allclose(xyz[b], batch["xyz"][b])
    lo, up = torch.tensor(WS.lower), torch.tensor(WS.upper)
    inside = ((batch["queries"] >= lo) & (batch["queries"] <= up)).all(-1)
    assert torch.equal(batch["mask"], inside)


def test_time_budget_sets_steps_and_exports_weights(tmp_path):
    from training.train_semabs import load_config, train

    cfg = load_config(str(ROOT / "training/config/semabs_cpu.yaml"), [
        "model.grid=8", "model.unet_levels=2", "model.unet_f_maps=8", "model.point_hidden=16",
        "data.train_scenes=2", "data.toy={num_queries: 300, points_per_face: 40}", "train.batch_size=1",
        "train.num_input_points=100", "train.num_queries=50", "train.threads=1", "train.max_steps=100000",
        "train.time_budget_s=1.5", "train.warmup_steps=4", "train.export_weights=true", f"out_dir={tmp_path}"])
    s = train(cfg, progress=False)
    assert 5 <= s["step"] < 100000
    with safe_open(str(tmp_path / "weights.safetensors"), framework="pt") as f:
        state = json.loads(f.metadata()["train_state"])
        assert not [k for k in f.keys() if k.startswith("optim.")]
    assert state["step"] == state["max_steps"] == s["step"]
