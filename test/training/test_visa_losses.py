"""VISA losses: hand-computed values, zero weight -> zero loss and gradient, gradcheck (float64)."""

import math

import numpy as np
import pytest
import torch

from training.visa.losses import (AuditTargets, VisaLossConfig, attribute_loss,
                                       attribute_scores, graph_edges, graph_loss,
                                       pooled_probabilities, ramp, taxonomy_loss, visa_loss,
                                       vlm_distribution)
from training.visa.taxonomy import ATTRIBUTES, K_OBJ

C = 18  # Occ3D classes incl. free; K_obj = columns 1..10
TRUCK_AUDIT = {"class_hypothesis": "truck", "confidence": 0.8,
               "confusions": [{"class": "trailer", "score": 0.12}, {"class": "bus", "score": 0.05}]}
TRUCK_U = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1]  # the visa.md §4 example attributes


def _targets(rows, voxel_index, frame=None):
    """rows: list of (gt, audit, u (A,) with None = masked, weight)."""
    R = len(rows)
    cs = torch.zeros(R, len(K_OBJ), dtype=torch.bool)
    for r, (_, a, _, _) in enumerate(rows):
        for c in a["confusions"]:
            cs[r, K_OBJ.index(c["class"])] = True
    return AuditTargets(
        voxel_index=torch.as_tensor(voxel_index, dtype=torch.int64),
        gt=torch.tensor([K_OBJ.index(g) for g, _, _, _ in rows]),
        hypothesis=torch.tensor([K_OBJ.index(a["class_hypothesis"]) for _, a, _, _ in rows]),
        pi=torch.tensor(np.array([vlm_distribution(a) for _, a, _, _ in rows]), dtype=torch.float32),
        confusion_set=cs,
        attributes=torch.tensor([[float(v or 0) for v in u] for _, _, u, _ in rows]),
        attribute_mask=torch.tensor([[float(v is not None) for v in u] for _, _, u, _ in rows]),
        weight=torch.tensor([w for _, _, _, w in rows], dtype=torch.float32),
        frame=torch.as_tensor(frame if frame is not None else [0] * R, dtype=torch.int64))


def test_vlm_distribution_hand_values():
    pi = vlm_distribution(TRUCK_AUDIT)
    expect = np.full(10, 0.003)  # 1 - 0.8 - 0.12 - 0.05 = 0.03 spread over 10 classes
    expect[K_OBJ.index("truck")] += 0.8
    expect[K_OBJ.index("trailer")] += 0.12
    expect[K_OBJ.index("bus")] += 0.05
    np.testing.assert_allclose(pi, expect, atol=1e-12)


def test_pooling_ignores_padding_and_non_object_classes():
    logits = torch.zeros(3, C)
    logits[0, 4] = math.log(9.0)  # voxel 0: car has 9x the mass of each other class
    logits[1, 0] = 5.0             # 'others' mass is dropped by the K_obj restriction
    p = pooled_probabilities(logits, torch.tensor([[0, 1, -1], [-1, -1, -1]]))
    # Pool first, then restrict: voxel 0 has car 9/26 and 1/26 elsewhere; voxel 1 has
    # a = 1 / (e^5 + 17) on every K_obj class. K_obj mass of the mean: (18/26 + 10 a) / 2.
    car = K_OBJ.index("car")
    a = 1 / (math.exp(5.0) + 17)
    expect = np.full(10, (1 / 26 + a) / (18 / 26 + 10 * a))
    expect[car] = (9 / 26 + a) / (18 / 26 + 10 * a)
    np.testing.assert_allclose(p[0].numpy(), expect, rtol=1e-6)
    np.testing.assert_allclose(p[1].numpy(), np.full(10, 0.1), rtol=1e-6)  # no voxels -> uniform
    with pytest.raises(ValueError, match="voxel index"):
        pooled_probabilities(logits, torch.tensor([[3]]))
    # The 5-D grid form indexes the same voxels as its flattened (N, C) form.
    grid = torch.randn(2, C, 3, 2, 4)
    flat = grid.permute(0, 2, 3, 4, 1).reshape(-1, C)
    idx = torch.tensor([[0, 5, 23, 47], [30, 31, -1, -1]])
    torch.testing.assert_close(pooled_probabilities(grid, idx), pooled_probabilities(flat, idx), rtol=0, atol=0)


def test_taxonomy_and_attribute_losses_hand_computed_at_uniform_prediction():
    logits = torch.zeros(4, C)  # p̄ = 0.1 on every K_obj class
    tg = _targets([("truck", TRUCK_AUDIT, TRUCK_U, 1.0)], [[0, 1, 2, 3]])
    pbar = pooled_probabilities(logits, tg.voxel_index)
    # t = 0.7 onehot(truck) + 0.3 π; Σ t = 1 so the class term is log 10.
    # Parents: vehicle (5 classes) T = 0.7 + 0.3 (0.8 + 0.12 + 0.05 + 5·0.003) = 0.9955, P = 0.5;
    # two_wheeler T = 0.3·0.006 = 0.0018, P = 0.2; human T = 0.0009, P = 0.1; static T = 0.0018, P = 0.2.
    parent = 0.9955 * math.log(0.5) + 0.0018 * math.log(0.2) + 0.0009 * math.log(0.1) + 0.0018 * math.log(0.2)
    expect_tax = math.log(10) - 0.5 * parent
    assert taxonomy_loss(pbar, tg).item() == pytest.approx(expect_tax, rel=1e-5)
    # û = 0.1 · (classes having each attribute): large 4, two_wheeler 2, person 1, static 2,
    # cabin 3, cargo 2, towed 1, construction 1, tall 4, wheeled 7.
    u_hat = [0.4, 0.2, 0.1, 0.2, 0.3, 0.2, 0.1, 0.1, 0.4, 0.7]
    np.testing.assert_allclose(attribute_scores(pbar)[0].numpy(), u_hat, rtol=1e-5)
    bce = [-math.log(h) if u else -math.log(1 - h) for u, h in zip(TRUCK_U, u_hat)]
    assert attribute_loss(pbar, tg).item() == pytest.approx(sum(bce) / 10, rel=1e-5)
    # Masked attributes: only the observed ones count, averaged over their number.
    u_masked = [None if a in ("person", "wheeled") else v for a, v in zip(ATTRIBUTES, TRUCK_U)]
    tg2 = _targets([("truck", TRUCK_AUDIT, u_masked, 1.0)], [[0, 1, 2, 3]])
    keep = [b for a, b in zip(ATTRIBUTES, bce) if a not in ("person", "wheeled")]
    assert attribute_loss(pbar, tg2).item() == pytest.approx(sum(keep) / 8, rel=1e-5)
    # Weighted mean over rows: (1/N) Σ w_r loss_r.
    car = {"class_hypothesis": "car", "confidence": 1.0, "confusions": []}
    tg3 = _targets([("truck", TRUCK_AUDIT, TRUCK_U, 0.25), ("car", car, [0] * 10, 0.75)], [[0, 1], [2, 3]])
    car_tax = math.log(10) - 0.5 * math.log(0.5)  # t = onehot(car): vehicle T = 1
    assert taxonomy_loss(pooled_probabilities(logits, tg3.voxel_index), tg3).item() == pytest.approx(
        0.25 * expect_tax + 0.75 * car_tax, rel=1e-5)


def test_graph_edges_and_loss_hand_computed():
    ped = {"class_hypothesis": "pedestrian", "confidence": 0.9, "confusions": []}
    car = {"class_hypothesis": "car", "confidence": 0.9, "confusions": [{"class": "truck", "score": 0.05}]}
    truck = {"class_hypothesis": "truck", "confidence": 0.9, "confusions": []}
    bus = {"class_hypothesis": "bus", "confidence": 0.9, "confusions": []}
    u_ped = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    u_car = [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    u_truck = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1]
    u_bus = [1, 0, 0, 0, 1, 0, 0, 0, 1, 1]
    rows = [("pedestrian", ped, u_ped, 1.0), ("car", car, u_car, 0.25), ("truck", truck, u_truck, 1.0),
            ("bus", bus, u_bus, 0.64), ("car", car, u_car, 1.0)]
    vox = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, -1]]  # row 4: 2 voxels -> no node
    tg = _targets(rows, vox, frame=[0, 0, 0, 0, 0])
    e = graph_edges(tg)
    got = {(int(i), int(j)): bool(p) for i, j, p in zip(e.i, e.j, e.positive)}
    # ped–car J=0, parents differ -> E−; ped–truck, ped–bus likewise E−.
    # car–truck: same parent, truck ∈ C_car -> E+ (J = 2/5 otherwise neither).
    # car–bus: same parent, not compatible, J = 2/4 -> no edge. truck–bus: J = 4/5 -> E+.
    assert got == {(0, 1): False, (0, 2): False, (0, 3): False, (1, 2): True, (2, 3): True}
    # Hand-made û: cosines chosen by construction.
    u_hat = torch.zeros(5, 10)
    u_hat[0, 0] = 1.0                     # ped
    u_hat[1, 0] = u_hat[1, 1] = 1.0       # car: cos(ped, car) = 1/√2
    u_hat[2, 1] = 1.0                     # truck: cos(ped, truck) = 0, cos(car, truck) = 1/√2
    u_hat[3, 1] = 1.0; u_hat[3, 2] = 1.0  # bus: cos(truck, bus) = 1/√2, cos(ped, bus) = 0
    w = tg.weight
    s = 1 / math.sqrt(2)
    om = {k: math.sqrt(float(w[k[0]] * w[k[1]])) for k in got}  # ω(0,1) = 0.5, ω(1,2) = 0.5, ω(2,3) = 0.8
    pos = (om[(1, 2)] * (1 - s) + om[(2, 3)] * (1 - s)) / (om[(1, 2)] + om[(2, 3)])
    neg = (om[(0, 1)] * max(0, s - 0.3) + om[(0, 2)] * 0 + om[(0, 3)] * 0) / (om[(0, 1)] + om[(0, 2)] + om[(0, 3)])
    assert graph_loss(u_hat, w, e).item() == pytest.approx(pos + neg, rel=1e-6)
    # Different frames never share an edge; a cap subsamples per frame.
    tg_split = _targets(rows, vox, frame=[0, 1, 0, 1, 0])
    e2 = graph_edges(tg_split)
    assert all(int(tg_split.frame[i]) == int(tg_split.frame[j]) for i, j in zip(e2.i, e2.j))
    e3 = graph_edges(tg, max_edges_per_frame=2, generator=torch.Generator().manual_seed(0))
    assert len(e3.i) == 2 and {(int(i), int(j)) for i, j in zip(e3.i, e3.j)} <= set(got)


def _random_problem(dtype=torch.float64, seed=0, weight_scale=1.0, n_classes=C):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(17, n_classes, generator=g, dtype=dtype)
    audits = [("truck", TRUCK_AUDIT, TRUCK_U, 0.9),
              ("car", {"class_hypothesis": "car", "confidence": 0.7, "confusions": [{"class": "truck", "score": 0.2}]},
               [0, 0, 0, 0, 1, 0, 0, 0, 0, None], 0.6),
              ("pedestrian", {"class_hypothesis": "pedestrian", "confidence": 0.95, "confusions": []},
               [0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 0.8),
              ("barrier", {"class_hypothesis": "traffic_cone", "confidence": 0.6,
                           "confusions": [{"class": "barrier", "score": 0.3}]},
               [0, 0, 0, 1, 0, 0, 0, 0, 0, 0], 0.3)]
    audits = [(a, b, c, d * weight_scale) for a, b, c, d in audits]
    vox = [[0, 1, 2, 3, 4], [5, 6, 7, -1, -1], [8, 9, 10, 11, -1], [12, 13, 14, 15, 16]]
    return logits, _targets(audits, vox)


def test_zero_weight_gives_zero_loss_and_zero_gradient():
    logits, tg = _random_problem(weight_scale=0.0)
    logits.requires_grad_(True)
    out = visa_loss(logits, tg.to(dtype=torch.float64))
    for k in ("total", "tax", "attr", "graph"):
        assert out[k].item() == 0.0
    out["total"].backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0
    # λ = 0 (or epoch 0 of the ramp) with non-zero weights: zero total and zero gradient too.
    logits2, tg2 = _random_problem()
    logits2.requires_grad_(True)
    out2 = visa_loss(logits2, tg2.to(dtype=torch.float64), epoch=0.0)
    assert out2["total"].item() == 0.0 and out2["tax"].item() > 0
    out2["total"].backward()
    assert torch.count_nonzero(logits2.grad) == 0
    cfg0 = VisaLossConfig(lambda_tax=0.0, lambda_attr=0.0, lambda_graph=0.0)
    logits3, tg3 = _random_problem()
    logits3.requires_grad_(True)
    visa_loss(logits3, tg3.to(dtype=torch.float64), cfg0)["total"].backward()
    assert torch.count_nonzero(logits3.grad) == 0


def test_other_label_orders_via_k_obj_index():
    logits, tg = _random_problem()
    tg = tg.to(dtype=torch.float64)
    perm = torch.randperm(C, generator=torch.Generator().manual_seed(3))
    # Column j of the permuted logits is original class perm[j]; K_obj class k sits where perm == k+1.
    cols = [int(torch.nonzero(perm == k).item()) for k in range(1, 11)]
    a = visa_loss(logits, tg)
    b = visa_loss(logits[:, perm], tg, k_obj_index=cols)
    for k in ("tax", "attr", "graph"):
        assert b[k].item() == pytest.approx(a[k].item(), rel=1e-12)


def test_ramp_and_total_combination():
    assert [ramp(e) for e in (0.0, 0.5, 1.0, 2.0, 5.0)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    logits, tg = _random_problem()
    tg = tg.to(dtype=torch.float64)
    out = visa_loss(logits, tg, epoch=1.0)
    expect = 0.5 * (0.5 * out["tax"] + 0.2 * out["attr"] + 0.1 * out["graph"])
    assert out["total"].item() == pytest.approx(expect.item(), rel=1e-12)
    assert out["graph"].item() > 0 and out["attr"].item() > 0


@pytest.mark.parametrize("term", ["tax", "attr", "graph", "total"])
def test_gradients_match_finite_differences_float64(term):
    # 17 voxels x 12 classes (others, the 10 K_obj classes, one stuff class). The total is checked
    # input by input (full mode); the single terms with gradcheck's fast mode (random directions).
    logits, tg = _random_problem(seed=1, n_classes=12)
    tg = tg.to(dtype=torch.float64)
    edges = graph_edges(tg)
    assert len(edges.i) >= 3 and edges.positive.any() and (~edges.positive).any()
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: visa_loss(z, tg, edges=edges)[term], (logits,),
                                    eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=term != "total")
