"""SemAbs evaluation (voxel IoU, cutoff choice), baselines, and the inference path on the real ARKit frame."""

import numpy as np
import pytest
import torch

from training.semabs.baselines import relation_direction, relevancy_cloud_scores, shifted_reference_scores
from training.semabs.metrics import (REFERENCE_CUTOFFS, choose_cutoff, iou_table, reference_mean, reference_rows,
                                          reference_vool_means, reference_vool_rows, voxel_iou, voxel_max)
from occ_audit_ros.semabs.pointcloud import Workspace, relevancy_point_cloud

WS = Workspace((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_reference_cutoffs():
    assert len(REFERENCE_CUTOFFS) == 25 and REFERENCE_CUTOFFS[0] == -2.5 and REFERENCE_CUTOFFS[-1] == -0.1


def test_voxel_max_against_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.1, 1.1, (500, 3))
    vals = rng.normal(size=500)
    valid = rng.random(500) < 0.8
    vox = voxel_max(pts, vals, WS, 4, valid)
    ref = np.full((4, 4, 4), -np.inf)
    for p, v, ok in zip(pts, vals, valid):
        if ok and np.all((p >= 0) & (p <= 1)):
            i, j, k = np.minimum((p * 4).astype(int), 3)
            ref[i, j, k] = max(ref[i, j, k], v)
    np.testing.assert_array_equal(vox, ref.reshape(-1))


def test_voxel_iou_counts():
    gt = np.array([1.0, 1.0, 0.0, 0.0, -np.inf])
    pred = np.array([0.5, -1.0, 0.2, -2.0, 9.0])  # the last cell has no query: ignored
    # cutoff 0: pred {0, 2}, gt {0, 1} -> 1 / 3 ; cutoff -1.5: pred {0, 1, 2}, gt {0, 1} -> 2 / 3
    np.testing.assert_allclose(voxel_iou(pred, gt, [0.0, -1.5, 10.0]), [1 / 3, 2 / 3, 0.0])
    assert np.isnan(voxel_iou(np.array([-5.0]), np.array([0.0]), [0.0])[0])  # both empty: undefined


def test_cutoff_chosen_on_validation():
    rng = np.random.default_rng(1)
    pts = [rng.uniform(0, 1, (2000, 3)) for _ in range(3)]
    gts = [p[:, 0] < 0.5 for p in pts]
    preds = [np.where(g, -0.8, -1.6) + rng.normal(0, 0.05, len(g)) for g in gts]  # a clean split near -1.2
    table = iou_table(pts, preds, gts, WS, REFERENCE_CUTOFFS, grid=8)
    cut, iou = choose_cutoff(table, REFERENCE_CUTOFFS)
    assert -1.5 <= cut <= -0.9 and iou == pytest.approx(1.0)
    with pytest.raises(ValueError):
        choose_cutoff(np.full((2, 3), np.nan), [0, 1, 2])


def test_reference_protocol_items_and_aggregation():
    """SemAbs summarize.py: items whose label occupies an in-frustum query; mean per room (novel scene) or
    per label (novel class / synonym) first, NaN items skipped."""
    q = np.zeros((3, 3))
    items = [("cup", q, None, np.array([False, True, False])), ("wall", q, None, np.zeros(3, bool)),
             ("cup", q, None, np.array([True, True, False])), ("table", q, None, np.ones(3, bool))]
    np.testing.assert_array_equal(reference_rows(items), [True, False, True, True])
    vals = np.array([0.2, 0.5, np.nan, 0.8, 0.1])
    names = ["cup", "table", "cup", "cup", "lamp"]
    rooms = [0, 0, 1, 1, 2]
    # rooms: (0.2 + 0.5) / 2, 0.8, 0.1 -> mean; labels: cup (0.2 + 0.8) / 2, table 0.5, lamp 0.1 -> mean
    assert reference_mean(vals, names, rooms, "novel_scene") == pytest.approx((0.35 + 0.8 + 0.1) / 3)
    assert reference_mean(vals, names, rooms, "novel_class") == pytest.approx((0.5 + 0.5 + 0.1) / 3)
    assert reference_mean(vals, names, rooms, "novel_synonym") == pytest.approx((0.5 + 0.5 + 0.1) / 3)
    assert np.isnan(reference_mean(np.full(2, np.nan), ["a", "b"], [0, 1], "val"))
    # the cutoff choice follows the aggregation: the item mean prefers column 0 (0.6 vs 0.4), rooms column 1
    table = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    rooms = [0, 0, 0, 1, 2]
    assert choose_cutoff(table, [-1.0, -2.0]) == (-1.0, pytest.approx(0.6))
    assert choose_cutoff(table, [-1.0, -2.0], lambda c: reference_mean(c, names, rooms, "novel_scene")) == \
        (-2.0, pytest.approx(2 / 3))


def test_reference_vool_protocol_rows_and_aggregation():
    """SemAbs summarize_vool: novel class / synonym keep descriptions naming a held-out class / a synonym
    (target or reference) and take the plain mean per relation; other splits drop held-out classes and
    average per room first; the split value is the mean over relations."""
    pairs = [("coffee cup", "table"), ("mug", "shelf"), ("apple", "bowl"), ("apple", "tv"), ("tv", "couch")]
    synonyms, novel = {"coffee cup", "tv", "couch"}, {"mug", "coffee cup"}
    np.testing.assert_array_equal(reference_vool_rows(pairs, "novel_synonym", synonyms, novel),
                                  [True, False, False, True, True])
    np.testing.assert_array_equal(reference_vool_rows(pairs, "novel_class", synonyms, novel),
                                  [True, True, False, False, False])
    np.testing.assert_array_equal(reference_vool_rows(pairs, "novel_scene", synonyms, novel),
                                  [False, False, True, True, True])
    vals = np.array([0.2, 0.4, 0.9, np.nan, 0.3, 0.5])
    rels = ["in", "in", "in", "in", "on", "on"]
    rooms = [0, 0, 1, 1, 0, 2]
    # rooms: in -> (0.3 + 0.9) / 2, on -> (0.3 + 0.5) / 2; items: in -> 1.5 / 3, on -> 0.4
    got = reference_vool_means(vals, rels, rooms, "novel_scene")
    assert got["per_name"] == {"in": pytest.approx(0.6), "on": pytest.approx(0.4)}
    assert got["mean"] == pytest.approx(0.5)
    got = reference_vool_means(vals, rels, rooms, "novel_synonym")
    assert got["per_name"] == {"in": pytest.approx(0.5), "on": pytest.approx(0.4)}
    assert got["mean"] == pytest.approx(0.45)
    got = reference_vool_means(np.array([np.nan, 0.2]), ["in", "on"], [0, 0], "val")
    assert np.isnan(got["per_name"]["in"]) and got["mean"] == pytest.approx(0.2)


def test_baselines():
    xyz = np.array([[0.1, 0.1, 0.1], [0.6, 0.6, 0.6]])
    rel = np.array([2.0, -1.0])
    q = np.array([[0.12, 0.1, 0.1], [0.9, 0.9, 0.9], [5.0, 0.0, 0.0]])
    np.testing.assert_array_equal(relevancy_cloud_scores(xyz, rel, q, WS, grid=4), [2.0, -np.inf, -np.inf])
    # camera at the origin looking along +x (optical z = world x, optical x = world -y)
    T = np.eye(4)
    T[:3, :3] = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    np.testing.assert_allclose(relation_direction("behind", T), [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(relation_direction("on the left of", T), [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(relation_direction("on", T), [0, 0, 1])
    with pytest.raises(ValueError):
        relation_direction("under", T)
    s = shifted_reference_scores(xyz[:1], rel[:1], "behind", T, np.array([[0.38, 0.1, 0.1], [0.1, 0.1, 0.1]]), WS,
                                 shift=0.3, grid=4)
    np.testing.assert_array_equal(s, [2.0, -np.inf])  # the reference moved one cell away from the camera


@pytest.fixture(scope="module")
def arkit():
    from training.semabs.demo import load_arkit_scene

    return load_arkit_scene()


def test_arkit_cloud_matches_independent_backprojection(arkit):
    depth, K, T = arkit["depth"], arkit["cam_intr"], arkit["cam_extr"]
    assert arkit["rgb"].shape[:2] == depth.shape
    xyz, r = relevancy_point_cloud(np.ones((1,) + depth.shape, np.float32), depth, K, T)
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    cam = np.stack([(u - K[0, 2]) * depth / K[0, 0], (v - K[1, 2]) * depth / K[1, 1], depth], -1).reshape(-1, 3)
    world = cam @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(xyz, world, atol=1e-4)
    assert np.all(r == 1)
    assert Workspace().contains(xyz).mean() > 0.5  # the frame was authored for the SemAbs workspace


def test_arkit_inference_path_random_weights(arkit, tiny_clip):
    """Random CLIP + random 3D networks on the real frame: shapes, frames and ranges only."""
    from occ_audit_ros.relevancy import RelevancyConfig, RelevancyExtractor
    from occ_audit_ros.semabs.inference import SemAbsPredictor
    from occ_audit_ros.semabs.model import SemAbsConfig, SemAbsOVSSC, SemAbsVOOL

    torch.manual_seed(0)
    cfg = SemAbsConfig(grid=16, unet_levels=3, unet_f_maps=8, point_hidden=32)
    ext = RelevancyExtractor(tiny_clip, RelevancyConfig(prompt_template="a photograph of a {} in a home."))
    pred = SemAbsPredictor(ext, SemAbsOVSSC(cfg), SemAbsVOOL(cfg), num_points=3000, empty_logit=0.0,
                           random_weights=True)
    labels = list(arkit["ovssc_obj_classes"])[:4]
    ov = pred.ovssc(arkit["rgb"], arkit["depth"], arkit["cam_intr"], arkit["cam_extr"], labels, grid=8)
    assert ov.logits.shape == (4, 512) and ov.queries.shape == (512, 3) and ov.random_weights
    assert Workspace().contains(ov.queries).all()
    assert set(np.unique(ov.label_ids)) <= {-1, 0, 1, 2, 3}
    np.testing.assert_array_equal(ov.label_ids >= 0, ov.logits.max(0) >= 0.0)
    target, relation, reference = arkit["descriptions"][1]
    vo = pred.vool(arkit["rgb"], arkit["depth"], arkit["cam_intr"], arkit["cam_extr"], target, relation, reference,
                   context_labels=labels, grid=8)
    assert vo.logits.shape == (512,) and np.all(np.abs(vo.logits) <= 1 / 0.07 + 1e-4)
    with pytest.raises(ValueError):
        pred.vool(arkit["rgb"], arkit["depth"], arkit["cam_intr"], arkit["cam_extr"], target, "under", reference)


def test_precomputed_relevancy_maps_equal_a_fresh_clip_pass(arkit, tiny_clip):
    """Maps computed once for the label set give the same OVSSC and VOOL logits as the predictor's own
    CLIP pass (rows reordered to the call's label order); another label set is refused."""
    from occ_audit_ros.relevancy import RelevancyConfig, RelevancyExtractor
    from occ_audit_ros.semabs.inference import SemAbsPredictor
    from occ_audit_ros.semabs.model import SemAbsConfig, SemAbsOVSSC, SemAbsVOOL

    torch.manual_seed(0)
    cfg = SemAbsConfig(grid=16, unet_levels=3, unet_f_maps=8, point_hidden=32)
    ext = RelevancyExtractor(tiny_clip, RelevancyConfig(prompt_template="a photograph of a {} in a home."))
    pred = SemAbsPredictor(ext, SemAbsOVSSC(cfg), SemAbsVOOL(cfg), num_points=3000, random_weights=True)
    view = (arkit["rgb"], arkit["depth"], arkit["cam_intr"], arkit["cam_extr"])
    labels = list(arkit["ovssc_obj_classes"])[:4]
    maps = ext(arkit["rgb"], labels)
    fresh = pred.ovssc(*view, labels, grid=8)
    given = pred.ovssc(*view, labels, grid=8, relevancy_maps=maps)
    np.testing.assert_array_equal(given.logits, fresh.logits)
    target, reference = labels[2], labels[0]        # rows 2 and 0 move to the front in vool's label order
    fresh_v = pred.vool(*view, target, "on", reference, context_labels=labels, grid=8)
    given_v = pred.vool(*view, target, "on", reference, context_labels=labels, grid=8, relevancy_maps=maps,
                        map_labels=labels)
    np.testing.assert_allclose(given_v.logits, fresh_v.logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="label set"):
        pred.vool(*view, "teddy bear", "on", reference, context_labels=labels, grid=8, relevancy_maps=maps,
                  map_labels=labels)
    with pytest.raises(ValueError, match=r"\(L, h, w\)"):
        pred.ovssc(*view, labels, grid=8, relevancy_maps=maps[:2])
