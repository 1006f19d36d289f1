"""VISA targets of a whole training split (real tables written by the driving simulator: instance
tokens, prev/next tracks, visibility) and the ``visa:`` switch of the AGO trainer."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from occ_audit_ros import paths

pytest.importorskip("open3d")

TINY = {"samples_per_scene": 2, "lidar": {"azimuth_step_deg": 2.0},
        "world": {"length": 120.0, "buildings_per_side": [1, 2], "trees_per_side": [1, 2], "pedestrians": [2, 3],
                  "vehicles_per_lane": [2, 3], "parked_vehicles": [1, 2], "cones": [1, 2], "barriers": [1, 2]},
        "occ3d": {"dims": [100, 100, 8], "camera_ray_stride": 8}}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from training.sim import generate

    root = tmp_path_factory.mktemp("visa_split")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    out = root / "data"
    assert generate.main(["driving", "--out", str(out), "--scenes", "1", "--seed", "3", "--config",
                          str(root / "tiny.yaml"), "--no-progress"]) == 0
    data = {"dataroot": str(out), "annotations": str(out / "sim_infos.pkl"), "tokens": "all",
            "gt_dir": str(out / "gts"), "voxel_size": 0.8}
    return out, data


def _spec():
    from training.ago.occ_gt import OCC3D_SPEC
    from occ_audit_ros.voxel_grid import VoxelGridSpec

    return VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, 0.8)


def test_split_targets_ground_propagate_and_weight_like_the_tables(split, tmp_path):
    from training.ago.data import _find_gt
    from training.visa.ago_hook import load_targets, load_visa_config, save_targets, split_targets
    from training.visa.propagation import frame_weight, reliability_weight
    from training.visa.tables import open_tables
    from training.visa.taxonomy import K_OBJ, K_OBJ_OCC3D_INDEX

    out, data = split
    vcfg = load_visa_config({"auditor": {"simulated": {"accuracy": 0.7, "seed": 5}}})
    targets, stats = split_targets(vcfg, data, _spec())
    assert stats["audits"] >= 3 and len(targets) == 2
    nusc = open_tables(out, "v1.0-test")
    audits_by_hyp = {}
    rows = 0
    for tok, t in targets.items():
        with np.load(_find_gt(out / "gts", tok)) as z:
            sem = z["semantics"].reshape(-1)
        for r in range(len(t.gt)):
            v = t.voxel_index[r][t.voxel_index[r] >= 0].numpy()
            assert len(v) >= 3
            # grounded voxels carry the GT label of the row's class
            assert np.all(sem[v] == K_OBJ_OCC3D_INDEX[int(t.gt[r])])
            audits_by_hyp.setdefault(int(t.gt[r]), set()).add(int(t.hypothesis[r]))
        rows += len(t.gt)
    assert rows >= 4
    # every grounded row's weight is w_i * rho_{i,t} computed from the tables and its audit
    from training.visa.ago_hook import simulate_split_audits

    audits, _ = simulate_split_audits(nusc, vcfg["auditor"])
    checked = 0
    for tok, t in targets.items():
        anns = [nusc.get("sample_annotation", a) for a in nusc.get("sample", tok)["anns"]]
        for r in range(len(t.gt)):
            n = int((t.voxel_index[r] >= 0).sum())
            cands = [a for a in anns if a["instance_token"] in audits
                     and K_OBJ.index(audits[a["instance_token"]]["gt"]["class"]) == int(t.gt[r])
                     and K_OBJ.index(audits[a["instance_token"]]["class_hypothesis"]) == int(t.hypothesis[r])]
            want = {reliability_weight(audits[a["instance_token"]]) * frame_weight(n, int(a["visibility_token"]))
                    for a in cands}
            assert any(abs(float(t.weight[r]) - w) < 1e-6 for w in want)
            checked += 1
    assert checked == rows
    # one audit per instance, copied along its track: both keyframes' rows of an instance agree
    by_inst = {}
    for tok, t in targets.items():
        for r in range(len(t.gt)):
            by_inst.setdefault((int(t.gt[r]), tuple(t.pi[r].tolist())), []).append(tok)
    assert any(len(set(v)) == 2 for v in by_inst.values())
    # no reliability weighting: w = rho (same rows)
    flat, _ = split_targets(dict(vcfg, weights=dict(vcfg["weights"], reliability=False)), data, _spec(),
                            audits=audits)
    for tok in targets:
        assert torch.equal(flat[tok].voxel_index, targets[tok].voxel_index)
        assert torch.all(flat[tok].weight >= targets[tok].weight) and torch.all(flat[tok].weight > 0)
    # targets file round trip
    save_targets(tmp_path / "t.safetensors", targets, {"accuracy": 0.7})
    back, meta = load_targets(tmp_path / "t.safetensors")
    assert meta == {"accuracy": 0.7} and set(back) == set(targets)
    for tok in targets:
        for f in ("voxel_index", "gt", "hypothesis", "pi", "confusion_set", "attributes", "weight", "frame"):
            assert torch.equal(getattr(back[tok], f), getattr(targets[tok], f))


def test_build_extra_losses_and_the_trainer_switch(split, tmp_path):
    from training import train_ago

    from training.visa.ago_hook import VisaExtraLoss, build_extra_losses

    out, data = split
    cfg = train_ago.load_config(paths.REPO_ROOT / "training" / "config" / "ago_train_sim.yaml", [
        f"data.dataroot={data['dataroot']}", f"data.annotations={data['annotations']}",
        f"data.gt_dir={data['gt_dir']}", "data.image_scale=0.1", "model.cnn_channels=8", "model.cnn_width=8",
        "model.hidden=8", "optim.warmup_steps=1", "optim.steps=2", "optim.batch_size=2", "log_every=1",
        "text_encoder=clip", "clip_model=random-tiny", "noise.count=4", "noise.threshold=1.01",
        "noise.pool_size=null", "device=cpu", f"out_dir={tmp_path / 'run'}"])
    zero = build_extra_losses({"enabled": True, "losses": {"lambda_tax": 0, "lambda_attr": 0, "lambda_graph": 0}}, cfg)
    assert zero == []
    (hook,) = build_extra_losses({"enabled": True, "losses": {"ramp_epochs": 0.0}}, cfg)
    assert isinstance(hook, VisaExtraLoss) and hook.steps_per_epoch == 1  # 2 samples, batch 2
    # a precomputed targets file: same targets, ramp length from its num_samples
    from training.visa.ago_hook import save_targets

    save_targets(tmp_path / "t.safetensors", hook.targets, {"num_samples": 4})
    (from_file,) = build_extra_losses({"enabled": True, "targets": str(tmp_path / "t.safetensors")}, cfg)
    assert from_file.steps_per_epoch == 2 and set(from_file.targets) == set(hook.targets)
    X, Y, Z = 100, 100, 8
    logits = torch.randn(2, X, Y, Z, 18, requires_grad=True)
    terms = hook({"tokens": sorted(hook.targets)}, {"class_logits": logits}, None)
    assert terms["visa_tax"].item() > 0 and math.isfinite(terms["visa_attr"].item())
    sum(terms.values()).backward()
    assert logits.grad.abs().sum() > 0
    # the trainer's own switch: visa.enabled in the config
    cfg["visa"] = {"enabled": True, "losses": {"ramp_epochs": 0.0}}
    r = train_ago.train(cfg, progress=False)
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert r["step"] == 2 and all(row["visa_tax"] > 0 for row in log)
