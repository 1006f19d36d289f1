"""VISA as an extra_losses hook of the AGO trainer: unit check on AGO-shaped outputs, and the real
training/train_ago.py run on the keyframe with the hook."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from occ_audit_ros import paths
from training.visa.ago_hook import VisaExtraLoss, keyframe_targets_for_tokens
from training.visa.integration import concat_targets
from training.visa.losses import AuditTargets, VisaLossConfig, visa_loss, vlm_distribution
from occ_audit_ros.voxel_grid import VoxelGridSpec


def _targets(vox, gt=3):
    a = {"class_hypothesis": "car", "confidence": 0.9, "confusions": [{"class": "truck", "score": 0.05}]}
    R = len(vox)
    return AuditTargets(torch.tensor(vox), torch.full((R,), gt), torch.full((R,), 3),
                        torch.tensor(np.array([vlm_distribution(a)] * R), dtype=torch.float32),
                        torch.zeros(R, 10, dtype=torch.bool), torch.zeros(R, 10), torch.ones(R, 10),
                        torch.full((R,), 0.7), torch.zeros(R, dtype=torch.int64))


def test_hook_matches_the_loss_on_channels_last_ago_logits_with_batch_offsets_and_ramp():
    X, Y, Z, C = 4, 3, 2, 18
    logits = torch.randn(2, X, Y, Z, C, dtype=torch.float64)
    tA, tB = _targets([[0, 1, 2], [5, 6, -1]]), _targets([[3, 4, 7]], gt=9)
    hook = VisaExtraLoss({"A": tA, "B": tB}, {"ramp_epochs": 2.0}, steps_per_epoch=2)
    batch = {"tokens": ["B", "A"]}
    cfg = VisaLossConfig()
    # batch item 1 = sample A: voxel indices shifted by X*Y*Z and its own graph frame
    shifted = dataclasses.replace(tA, voxel_index=torch.where(tA.voxel_index >= 0, tA.voxel_index + X * Y * Z, -1),
                                  frame=tA.frame + 1)
    ref = visa_loss(logits.permute(0, 4, 1, 2, 3).contiguous(), concat_targets([tB, shifted]).to(dtype=torch.float64))
    for step, k in enumerate([0.0, 0.25, 0.5, 0.75, 1.0, 1.0]):  # epoch = step / 2, ramp over 2 epochs
        out = hook(batch, {"class_logits": logits}, None)
        assert set(out) == {"visa_tax", "visa_attr", "visa_graph"}
        assert out["visa_tax"].item() == pytest.approx(k * cfg.lambda_tax * ref["tax"].item(), rel=1e-6)
        assert out["visa_attr"].item() == pytest.approx(k * cfg.lambda_attr * ref["attr"].item(), rel=1e-6)
        assert out["visa_graph"].item() == pytest.approx(k * cfg.lambda_graph * ref["graph"].item(), rel=1e-6, abs=1e-12)
    none = hook({"tokens": ["unaudited", "other"]}, {"class_logits": logits.requires_grad_(True)}, None)
    assert all(v.item() == 0.0 for v in none.values())
    with pytest.raises(ValueError, match="steps_per_epoch"):
        VisaExtraLoss({}, steps_per_epoch=0)


def test_real_ago_trainer_runs_with_the_visa_hook(tmp_path):
    from training import train_ago

    from training.visa.generate import main as generate
    from training.visa.store import read_store

    assert generate(["--out", str(tmp_path / "audits"), "--no-progress"]) == 0
    audits = read_store(tmp_path / "audits" / "audits.jsonl")
    spec = VoxelGridSpec((-40.0, -40.0, -1.0), (40.0, 40.0, 5.4), 1.6)  # small grid for CPU tests
    targets, stats = keyframe_targets_for_tokens(audits, spec)
    (tok, st), = stats.items()
    assert st["rows"] >= 1  # at 1.6 m only the largest objects keep >= 3 voxels
    cfg = train_ago.load_config(paths.REPO_ROOT / "training" / "config" / "ago_train.yaml", [
        "data.voxel_size=1.6", "data.image_scale=0.05", "data.gt_pixel_stride=48", "model.cnn_channels=8",
        "model.cnn_width=8", "model.hidden=8", "optim.warmup_steps=1", "optim.steps=1", "log_every=1",
        "text_encoder=clip", "clip_model=random-tiny", "noise.count=4", "noise.threshold=1.01",
        f"out_dir={tmp_path / 'run'}", f"data.gt_dir={tmp_path / 'gt'}"])
    hook = VisaExtraLoss(targets, {"ramp_epochs": 0.0})
    r = train_ago.train(cfg, extra_losses=[hook], progress=False)
    log = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert r["step"] == 1 and log["visa_tax"] > 0 and log["visa_attr"] > 0
    assert log["total"] == pytest.approx(sum(v for k, v in log.items() if k not in ("step", "lr", "total")), rel=1e-5)


def test_hook_edges_equal_graph_edges_of_the_batch_with_subsampling_and_cache():
    X, Y, Z, C = 6, 6, 4, 18
    logits = torch.randn(2, X, Y, Z, C, dtype=torch.float64)

    def many(n, seed):  # n rows of one frame, all "car": n(n-1)/2 positive candidate edges
        return _targets([list(np.random.default_rng(seed).choice(X * Y * Z, 3, replace=False)) for _ in range(n)])

    big, small = many(30, 1), many(5, 2)  # 435 candidate edges (> 256: drawn each step), 10 (cached)
    cfg = VisaLossConfig(ramp_epochs=0.0)
    for order in (["big", "small"], ["small", "big"], ["big", "big"]):
        hook = VisaExtraLoss({"big": big, "small": small}, cfg, seed=7)
        ref_gen = torch.Generator().manual_seed(7)
        parts = []
        for b, tok in enumerate(order):
            t = {"big": big, "small": small}[tok]
            parts.append(dataclasses.replace(t, voxel_index=torch.where(t.voxel_index >= 0, t.voxel_index + b * X * Y * Z, -1),
                                             frame=t.frame + b))
        for _ in range(2):  # two steps: the generator advances identically
            out = hook({"tokens": order}, {"class_logits": logits}, None)
            ref = visa_loss(logits.permute(0, 4, 1, 2, 3), concat_targets(parts).to(dtype=torch.float64), cfg,
                            generator=ref_gen)
            assert out["visa_graph"].item() == pytest.approx(cfg.lambda_graph * ref["graph"].item(), rel=1e-9)
            assert out["visa_tax"].item() == pytest.approx(cfg.lambda_tax * ref["tax"].item(), rel=1e-9)


def test_object_mass_variant_scores_the_object_probability_itself():
    """object_mass: L_tax on unrenormalised K_obj probabilities; equal to the design's L_tax when all
    the mass is on K_obj, larger when stuff / free take mass; L_attr and L_graph unchanged."""
    X, Y, Z, C = 4, 3, 2, 18
    t = {"A": _targets([[0, 1, 2], [5, 6, -1]])}
    logits = torch.randn(1, X, Y, Z, C, dtype=torch.float64)
    on_obj = logits.clone()
    on_obj[..., [0] + list(range(11, 18))] = -1e4  # no mass outside K_obj (columns 1..10)
    kw = dict(loss_cfg={"ramp_epochs": 0.0})
    for lg, same in ((on_obj, True), (logits, False)):
        ref = VisaExtraLoss(t, **kw)({"tokens": ["A"]}, {"class_logits": lg}, None)
        om = VisaExtraLoss(t, object_mass=True, **kw)({"tokens": ["A"]}, {"class_logits": lg}, None)
        assert om["visa_attr"].item() == pytest.approx(ref["visa_attr"].item())
        assert om["visa_graph"].item() == pytest.approx(ref["visa_graph"].item(), abs=1e-12)
        if same:
            assert om["visa_tax"].item() == pytest.approx(ref["visa_tax"].item(), rel=1e-6)
        else:
            assert om["visa_tax"].item() > ref["visa_tax"].item()
