"""Occ3D evaluator on hand-made grids whose IoUs are worked out by hand in the comments."""

import re

import numpy as np
import pytest

from occ_audit_ros.ago.classes import load_class_config
from training.ago.metrics import (OccConfusion, geometric_iou, iou_per_class, mean_iou,
                                       merge_confusion, occ3d_table, open_world_table)
from training.ago import eval as ago_eval

CAR, BUS, PED, OTHERS, FREE = 4, 3, 7, 0, 17


@pytest.fixture(scope="module")
def cfg():
    return load_class_config()


def _frames():
    # frame 1: car TP1 FN1(pred free) FP1(on free); free TP1 FP1 FN1
    f1 = (np.array([CAR, CAR, FREE, FREE]), np.array([CAR, FREE, FREE, CAR]), None)
    # frame 2: ped TP1 FN1 (pred car); car TP1 FP1; the 255 voxel is unobserved and skipped
    f2 = (np.array([PED, PED, CAR, 255]), np.array([PED, CAR, CAR, CAR]), None)
    return [f1, f2]


def test_one_confusion_over_split_not_mean_of_frames(cfg):
    conf = OccConfusion()
    for gt, pred, mask in _frames():
        conf.update(pred, gt, mask)
    iou = iou_per_class(conf.matrix)
    # car over the split: TP 2, FP 2, FN 1 -> 2/5; ped: TP 1, FN 1 -> 1/2; free 1/3
    assert iou[CAR] == pytest.approx(2 / 5)
    assert iou[PED] == pytest.approx(1 / 2)
    assert iou[FREE] == pytest.approx(1 / 3)
    assert np.isnan(iou[BUS])  # never in GT nor predicted
    assert mean_iou(conf.matrix, cfg.all_classes) == pytest.approx((0.4 + 0.5) / 2)
    # the per-frame average would be ((1/3) + (1/2 + 1/2) / 2) / 2 = 0.4167, not 0.45
    assert conf.matrix.sum() == 7 and conf.frames == 2


def test_camera_mask_and_star_and_geometric(cfg):
    conf = OccConfusion()
    for gt, pred, mask in _frames():
        conf.update(pred, gt, mask)
    # others predicted right, plus a wrong bus voxel hidden by the camera mask
    conf.update(np.array([OTHERS, FREE]), np.array([OTHERS, BUS]), np.array([1, 0]))
    t = occ3d_table(conf.matrix, cfg).as_dict()
    assert t["others"] == pytest.approx(100.0)
    assert t["mIoU (17)"] == pytest.approx(100 * (1 + 0.4 + 0.5) / 3)
    assert t["mIoU* (15)"] == pytest.approx(100 * 0.45)  # others excluded
    assert t["object mIoU"] == pytest.approx(100 * 0.45)  # car, ped
    # occupied = every non-free label: TP 5 (car/ped/others on car/ped/others), FP 1, FN 1
    assert geometric_iou(conf.matrix) == pytest.approx(5 / 7)
    assert np.isnan(t["bus"])  # the only bus voxel is outside mask_camera


def test_open_world_stages(cfg):
    conf = OccConfusion()
    conf.update(np.array([BUS, BUS, PED]), np.array([CAR, BUS, PED]))
    pre = open_world_table(conf.matrix, cfg, "pretrain").as_dict()
    # car and bus merge into "vehicle": 2 TP -> 1.0; ped 1.0; no unknown class present
    assert pre["known mIoU"] == pytest.approx(100.0)
    assert np.isnan(pre["unknown mIoU"])
    zs = open_world_table(conf.matrix, cfg, "zeroshot").as_dict()
    # fine labels: ped 1 (known); car 0, bus 1/2 (split supercategory -> unknown)
    assert zs["known mIoU"] == pytest.approx(100.0)
    assert zs["unknown mIoU"] == pytest.approx(25.0)
    assert zs["all mIoU"] == pytest.approx(50.0)
    assert set(cfg.ow_known) | set(cfg.ow_split_classes) | set(cfg.ow_unknown) == set(cfg.ow_evaluated)


def test_merge_and_bad_input():
    m = np.arange(9).reshape(3, 3)
    merged = merge_confusion(m, {0: (0, 1)})
    assert merged[0, 0] == 0 + 1 + 3 + 4 and merged.sum() == m.sum() and merged[1].sum() == 0
    conf = OccConfusion()
    with pytest.raises(ValueError, match="shape"):
        conf.update(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="predicted labels"):
        conf.update(np.array([18]), np.array([0]))


def test_cli_prints_tables(tmp_path, capsys, cfg):
    (tmp_path / "gt" / "a").mkdir(parents=True)
    (tmp_path / "pred" / "a").mkdir(parents=True)
    for i, (gt, pred, _) in enumerate(_frames()):
        np.savez(tmp_path / "gt" / "a" / f"{i}.npz", semantics=gt.astype(np.uint8),
                 mask_camera=np.ones_like(gt, dtype=np.uint8))
        np.savez(tmp_path / "pred" / "a" / f"{i}.npz", semantics=pred.astype(np.uint8))
    assert ago_eval.main(["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                          "--open-world", "zeroshot"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"mIoU \(17\) +45.00", out) and "2 frames, 7 evaluated voxels" in out and "unknown mIoU" in out
    (tmp_path / "gt" / "a" / "2.npz").write_bytes((tmp_path / "gt" / "a" / "0.npz").read_bytes())
    assert ago_eval.main(["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]) == 2
    assert "not found" in capsys.readouterr().err
