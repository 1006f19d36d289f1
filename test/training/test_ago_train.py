"""train_ago: a few steps in-process with checkpoint + resume, and torchrun DDP with 2 CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

from training import train_ago

from occ_audit_ros.ago.checkpoint import latest_checkpoint, load_checkpoint, read_metadata  # noqa: E402

SMALL = ["data.voxel_size=3.2", "data.image_scale=0.05", "data.gt_pixel_stride=48", "model.cnn_channels=8",
         "model.cnn_width=8", "model.hidden=8", "optim.warmup_steps=1", "checkpoint_every=2", "log_every=1"]


def _cfg(tmp_path, extra=()):
    return train_ago.load_config(REPO / "training" / "config" / "ago_train.yaml",
                                 SMALL + [f"out_dir={tmp_path}", f"data.gt_dir={tmp_path / 'gt'}"] + list(extra))


def test_train_resume_and_extra_loss(tmp_path):
    cfg = _cfg(tmp_path, ["optim.steps=3", "text_encoder=clip", "clip_model=random-tiny", "align.enabled=true",
                          "noise.count=4", "noise.threshold=1.01"])
    seen = []

    def extra(batch, out, model):
        seen.append(out["class_logits"].shape)
        return {"visa_dummy": out["class_logits"].float().pow(2).mean() * 0.0}

    r = train_ago.train(cfg, extra_losses=[extra], progress=False)
    assert r["step"] == 3 and set(r["losses"]) == {"grounding", "occ", "align", "visa_dummy", "total"}
    assert seen[0] == (1, 25, 25, 2, 18)  # Occ3D labels 0-17 per voxel
    ck = latest_checkpoint(tmp_path)
    assert ck.name == "ckpt-000003" and (ck / "train_state.safetensors").is_file()
    meta = read_metadata(ck)
    assert meta["step"] == 3 and list(meta["vocabulary"])[4] == "car" and meta["embed_dim"] == 32
    # resume to 5 steps: continues at 3, the optimizer state comes back
    cfg["optim"]["steps"] = 5
    r2 = train_ago.train(cfg, progress=False)
    steps = [json.loads(l)["step"] for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert r2["step"] == 5 and steps == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-000004", "ckpt-000005"]
    _, _, _, _, _, _, _, model = train_ago.build_everything(cfg)
    opt = torch.optim.AdamW(model.parameters())
    load_checkpoint(latest_checkpoint(tmp_path), model, opt)
    assert opt.state_dict()["state"][0]["step"].item() == 5
    # the node's interface on the real keyframe, with a vocabulary queried at run time
    from occ_audit_ros.ago.infer import AgoPredictor
    from occ_audit_ros.nuscenes_io import load_keyframe

    pred = AgoPredictor.from_checkpoint(tmp_path)
    assert pred.bank.names[4] == "car" and pred.random_weights
    pred.set_vocabulary(["car", "fire hydrant", "shopping cart"])
    res = pred.predict_keyframe(load_keyframe())
    assert res.labels.shape == (25, 25, 2) and res.probs.shape == (25, 25, 2, 4)
    assert res.voxels.labels == ["car", "fire hydrant", "shopping cart"] and res.voxels.frame_id == "base_link"
    assert (res.voxels.label_ids < 3).all() and len(res.voxels.indices) == (res.labels != 3).sum()
    with pytest.raises(ValueError, match="must match"):
        pred.predict([np.zeros((9, 16, 3), np.uint8)], [], [])
    # evaluation CLI: predict with the Occ3D vocabulary as text, then the tables
    from training.ago import eval as ago_eval

    assert ago_eval.main(["predict", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "pred")]) == 0
    gt_files = list((tmp_path / "gt").glob("*.npz"))
    assert len(gt_files) == 1 and (tmp_path / "pred" / gt_files[0].name).is_file()
    assert ago_eval.main(["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                          "--open-world", "zeroshot"]) == 0
    with pytest.raises(ValueError, match="align.enabled"):
        train_ago.train(_cfg(tmp_path / "x", ["align.enabled=true"]), progress=False)


def test_torchrun_ddp_two_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train_ago", "--set", *SMALL, f"out_dir={tmp_path}",
           f"data.gt_dir={tmp_path / 'gt'}", "optim.steps=2", "text_encoder=clip", "clip_model=random-tiny",
           "noise.count=4", "noise.threshold=1.01"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
    assert result["step"] == 2 and latest_checkpoint(tmp_path).name == "ckpt-000002"
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2  # rank 0 logs only


def test_visa_hook_from_config(tmp_path):
    """``visa.enabled`` selects the VISA hook lazily; absent / disabled gives no extra terms."""
    assert train_ago.extra_losses_from_config({}) == []
    assert train_ago.extra_losses_from_config({"visa": {"enabled": False}}) == []
    with pytest.raises(ValueError):
        train_ago.extra_losses_from_config({"visa": "yes"})
    try:
        from training.visa.ago_hook import build_extra_losses  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="build_extra_losses"):
            train_ago.extra_losses_from_config({"visa": {"enabled": True}})


def test_linear_head_oracle_align_and_samples_file(tmp_path):
    """The closed-set linear baseline and L_align against simulated VLM targets train through the
    same trainer; samples stored with save_samples_file train without the nuScenes loader."""
    from training.ago.data import load_samples, load_samples_file, save_samples_file
    from occ_audit_ros.ago.head import LinearHead
    from occ_audit_ros.voxel_grid import VoxelGridSpec
    from training.ago.occ_gt import OCC3D_SPEC

    cfg = _cfg(tmp_path / "lin", ["optim.steps=1", "vocabulary=open_world_pretrain", "model.head=linear",
                                  "model.adapter=false", "noise.enabled=false"])
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, 3.2)
    samples = load_samples(spec=spec, image_scale=0.05, gt_dir=tmp_path / "gt", pixel_stride=48)
    f = save_samples_file(tmp_path / "s.safetensors", samples)
    back = load_samples_file(f, spec)
    assert torch.allclose(back[0].images, samples[0].images, atol=1e-6) and torch.equal(back[0].semantics, samples[0].semantics)
    assert torch.equal(back[0].geom.grid, samples[0].geom.grid) and torch.equal(back[0].mask_camera, samples[0].mask_camera)
    cfg["data"]["samples_file"] = str(f)
    r = train_ago.train(cfg, progress=False)
    assert r["step"] == 1 and set(r["losses"]) == {"grounding", "occ", "total"} and r["device"] in ("cpu", "cuda:0")
    from occ_audit_ros.ago.prompts import encode_vocabulary

    _, text, vocab, bank, _, _, _, model = train_ago.build_everything(cfg)
    assert isinstance(model.head, LinearHead) and model.head.linear.out_features == len(vocab) + 1 == 6
    assert model.head(torch.zeros(3, bank.emb.shape[1]), bank)["logits"].shape == (3, 6)
    with pytest.raises(ValueError, match="cannot score"):
        model.head(torch.zeros(3, bank.emb.shape[1]), encode_vocabulary(text, ["car", "tree"]))
    cfg2 = _cfg(tmp_path / "orc", ["optim.steps=1", "vocabulary=open_world_pretrain", "align.enabled=true",
                                   "align.source=oracle", "noise.count=4", f"data.samples_file={f}"])
    r2 = train_ago.train(cfg2, progress=False)
    assert set(r2["losses"]) == {"grounding", "occ", "align", "total"} and 0.0 < r2["losses"]["align"] < 2.0
    # wall-clock budget: stops at once, still checkpoints
    cfg3 = _cfg(tmp_path / "wall", ["optim.steps=50", "optim.max_wall_s=1e-9", f"data.samples_file={f}", "noise.count=4"])
    r3 = train_ago.train(cfg3, progress=False)
    assert r3["stopped_early"] and r3["step"] == 0 and latest_checkpoint(tmp_path / "wall").name == "ckpt-000000"


def test_random_text_control_and_fixed_temperature(tmp_path):
    """The diagnostic text encoder is deterministic, unit-norm and structure-free; a fixed
    temperature leaves the head's scale out of the optimiser."""
    enc = train_ago.RandomTextEncoder(64)
    e = enc.encode(["car", "car", "sidewalk", "terrain"])
    assert e.shape == (4, 64) and torch.allclose(e.norm(dim=1), torch.ones(4))
    assert torch.equal(e[0], e[1]) and abs(float(e[2] @ e[3])) < 0.5
    with pytest.raises(ValueError):
        enc.encode([""])
    cfg = _cfg(tmp_path, ["text_encoder=random", "model.learn_logit_scale=false", "random_text_dim=48"])
    _, text, _, bank, _, _, _, model = train_ago.build_everything(cfg)
    assert text.name == "random-unit:48" and bank.emb.shape[1] == 48 and text.cache_file is None
    assert not model.head.log_scale.requires_grad and abs(float(model.head.log_scale.exp()) - 1 / 0.07) < 1e-3
