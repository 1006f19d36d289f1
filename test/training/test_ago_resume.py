"""train_ago resume is reproducible: a run stopped and resumed (batch sampling, noise prompts, oracle
alignment targets, torch and Python RNGs restored from the checkpoint) ends with the same weights and
the same logged losses as an uninterrupted run; a resume after a kill does not repeat log steps and
removes the temporary files the killed save left."""

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import train_ago
from occ_audit_ros.ago.checkpoint import latest_checkpoint, read_train_state

REPO = Path(__file__).resolve().parents[2]
SMALL = ["data.voxel_size=3.2", "data.image_scale=0.05", "data.gt_pixel_stride=48", "model.cnn_channels=8",
         "model.cnn_width=8", "model.hidden=8", "optim.warmup_steps=1", "log_every=1",
         "vocabulary=open_world_pretrain", "noise.count=4", "align.enabled=true", "align.source=oracle"]


@pytest.fixture(scope="module")
def samples_file(tmp_path_factory):
    from training.ago.data import load_samples, save_samples_file
    from training.ago.occ_gt import OCC3D_SPEC
    from occ_audit_ros.voxel_grid import VoxelGridSpec

    d = tmp_path_factory.mktemp("samples")
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, 3.2)
    return save_samples_file(d / "s.safetensors",
                             load_samples(spec=spec, image_scale=0.05, gt_dir=d / "gt", pixel_stride=48))


def _cfg(out, samples_file, *extra):
    return train_ago.load_config(REPO / "training" / "config" / "ago_train.yaml",
                                 SMALL + [f"out_dir={out}", f"data.samples_file={samples_file}", *extra])


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _weights(out):
    return load_file(str(latest_checkpoint(out) / "model.safetensors"))


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path, samples_file):
    """Before: the resumed run's batch, noise and alignment RNGs restarted from the seed."""
    full = tmp_path / "full"
    train_ago.train(_cfg(full, samples_file, "optim.steps=6", "checkpoint_every=3"), progress=False)
    parts = tmp_path / "parts"
    r = train_ago.train(_cfg(parts, samples_file, "optim.steps=6", "checkpoint_every=3", "optim.stop_step=3"),
                        progress=False)
    assert r["stopped_early"] and r["step"] == 3
    state = read_train_state(latest_checkpoint(parts))["rng"]
    assert {"batch", "noise", "align", "torch", "python"} <= set(state) and state["noise"] and state["align"]
    random.seed(12345)
    torch.manual_seed(999)  # the resumed run must not depend on what ran before it in this process
    r = train_ago.train(_cfg(parts, samples_file, "optim.steps=6", "checkpoint_every=3"), progress=False)
    assert r["step"] == 6
    assert [e["step"] for e in _log(parts)] == [1, 2, 3, 4, 5, 6]
    assert _log(parts) == _log(full)
    a, b = _weights(full), _weights(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_a_kill_repeats_no_log_step_and_removes_temporaries(tmp_path, samples_file):
    out = tmp_path / "run"
    train_ago.train(_cfg(out, samples_file, "optim.steps=4", "checkpoint_every=3"), progress=False)
    # as a kill after step 4's log line but before its checkpoint was complete
    shutil.rmtree(out / "ckpt-000004")
    (out / "latest").write_text("ckpt-000003\n")
    (out / ".ckpt-tmp-killed").mkdir()
    (out / ".ckpt-tmp-killed" / "model.safetensors").write_bytes(b"partial")
    (out / ".latest-killed").write_text("ckpt-0000")
    assert [e["step"] for e in _log(out)] == [1, 2, 3, 4]
    train_ago.train(_cfg(out, samples_file, "optim.steps=5", "checkpoint_every=3"), progress=False)
    assert [e["step"] for e in _log(out)] == [1, 2, 3, 4, 5]
    assert not list(out.glob(".ckpt-tmp-*")) and not list(out.glob(".latest-*"))
