"""Training/evaluation batches from SemAbs samples (format: :mod:`.toy` docstring).

OVSSC (paper App. 6.4 and the released code): per scene N input points sampled uniformly, K labels (padded with a mask
when the scene has fewer), M query points per label drawn uniformly from the valid queries.
VOOL: per scene Q descriptions (padded with the "[pad]" relation and a mask), M queries per
description drawn with positives and negatives equally likely (``balance_spatial_sampling``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from occ_audit_ros.semabs.model import RELATIONS
from occ_audit_ros.semabs.pointcloud import sample_points

__all__ = ["num_queried_labels", "ovssc_batch", "vool_batch"]


def num_queried_labels(sample: dict) -> int:
    """Size of a sample's OVSSC label set: its first ``num_relevancy_labels`` labels (all labels when the key
    is absent; hidden VOOL targets appended after them are not queried labels)."""
    return int(sample.get("num_relevancy_labels", len(sample["labels"])))


def _queries(valid: np.ndarray, occ: np.ndarray, m: int, rng, balanced: bool,
             positive_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``m`` query indices; also return each draw's importance weight p_uniform / p_drawn.

    The weight makes a weighted mean over the draws an unbiased estimate of the mean over uniform
    draws from the valid queries (1 everywhere when the draws are uniform).
    """
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        raise ValueError("a sample has no valid query point")
    if balanced or positive_fraction > 0.0:
        pos = idx[occ[idx]]
        rest = idx[~occ[idx]] if balanced else idx
        if len(pos) and len(rest):
            f = 0.5 if balanced else positive_fraction
            take_pos = rng.random(m) < f
            qi = np.where(take_pos, rng.choice(pos, m), rng.choice(rest, m))
            V, P, R = len(idx), len(pos), len(rest)
            # probability of drawing index x: f / P (if occupied) + (1 - f) / R (if x is in ``rest``)
            p_occ = f / P + ((1.0 - f) / R if not balanced else 0.0)
            p_empty = (1.0 - f) / R
            w = np.where(occ[qi], (1.0 / V) / p_occ, (1.0 / V) / p_empty)
            return qi, w.astype(np.float32)
    return rng.choice(idx, m, replace=len(idx) < m), np.ones(m, np.float32)


def ovssc_batch(samples: Sequence[dict], rng: np.random.Generator, num_points: int, labels_per_scene: int,
                num_queries: int, balanced: bool = False, positive_fraction: float = 0.0,
                importance_weighted: bool = False) -> dict[str, torch.Tensor]:
    """Stack OVSSC inputs and targets.

    Labels are drawn from each sample's queried label set: its first ``num_relevancy_labels`` labels
    (all labels when the key is absent). ``balanced=False`` (the paper's OVSSC default) draws queries
    uniformly from the valid ones; ``balanced=True`` draws occupied and empty queries with equal
    probability per label, as VOOL does (``balance_spatial_sampling``), so that a label's prior
    occupancy (0.01 % of the lattice for a cup, 10 % for a floor) no longer shifts its logits.
    ``positive_fraction`` = f > 0 (with ``balanced=False``) draws each query from the label's occupied
    ones with probability f, else uniformly from all valid ones: every label's training prior is at
    least f, while large structures keep (almost) the uniform sampling. Both are our deviations
    (measured in docs/semabs.md). ``importance_weighted=True`` adds ``weight`` = p_uniform / p_drawn
    per query: the weighted loss then has the uniform sampling's expectation (same optimum and logit
    calibration) with many more occupied queries of small objects per step (stratified sampling for
    lower gradient variance; our deviation).

    Raises:
        ValueError: a sample without any valid query.

    Returns:
        ``xyz`` (B, N, 3) float32 [m]; ``relevancy`` (B, K, N) float32; ``queries`` (B, K, M, 3) float32 [m];
        ``target`` (B, K, M) float32 in {0, 1}; ``mask`` (B, K, M) bool (padding labels are False);
        with ``importance_weighted``: ``weight`` (B, K, M) float32 (0 on padding labels).
    """
    xs, rs, qs, ts, ms, ws = [], [], [], [], [], []
    for s in samples:
        L = num_queried_labels(s)
        chosen = rng.choice(L, min(L, labels_per_scene), replace=False)
        xyz, rel = sample_points(s["xyz"], s["relevancy"][chosen], num_points, rng)
        r = np.zeros((labels_per_scene, num_points), np.float32)
        q = np.zeros((labels_per_scene, num_queries, 3), np.float32)
        t = np.zeros((labels_per_scene, num_queries), np.float32)
        m = np.zeros((labels_per_scene, num_queries), bool)
        w = np.zeros((labels_per_scene, num_queries), np.float32)
        for k, lab in enumerate(chosen):
            r[k] = rel[k]
            qi, w[k] = _queries(s["valid"], s["occupancy"][lab], num_queries, rng, balanced, positive_fraction)
            q[k], t[k], m[k] = s["queries"][qi], s["occupancy"][lab][qi], True
        xs.append(xyz), rs.append(r), qs.append(q), ts.append(t), ms.append(m), ws.append(w)
    out = {"xyz": torch.from_numpy(np.stack(xs)), "relevancy": torch.from_numpy(np.stack(rs)),
           "queries": torch.from_numpy(np.stack(qs)), "target": torch.from_numpy(np.stack(ts)),
           "mask": torch.from_numpy(np.stack(ms))}
    if importance_weighted:
        out["weight"] = torch.from_numpy(np.stack(ws))
    return out


def vool_batch(samples: Sequence[dict], rng: np.random.Generator, num_points: int, descs_per_scene: int,
               num_queries: int, balanced: bool = True, balance_relations: bool = False) -> dict[str, torch.Tensor]:
    """Stack VOOL inputs and targets.

    A scene with more than ``descs_per_scene`` descriptions gives a subset drawn without replacement:
    uniformly, or with ``balance_relations=True`` with probability proportional to 1 / (number of the
    scene's descriptions with the same relation), so that every relation present in the scene is about
    equally likely (the reference code's ``balance_spatial_relations``, on by default there; paper App. 6.4
    Sec. 4). Queries: positives and negatives equally likely (``balanced``, ``balance_spatial_sampling``).

    Returns:
        ``xyz`` (B, N, 3); ``target_relevancy``, ``reference_relevancy`` (B, Q, N) float32;
        ``relations`` (B, Q) int64; ``queries`` (B, Q, M, 3); ``target`` (B, Q, M) float32;
        ``mask`` (B, Q, M) bool.
    """
    out = {k: [] for k in ("xyz", "target_relevancy", "reference_relevancy", "relations", "queries", "target", "mask")}
    pad = RELATIONS.index("[pad]")
    for s in samples:
        D = len(s["descriptions"])
        if balance_relations and D > descs_per_scene:
            names = [d[1] for d in s["descriptions"]]
            p = np.array([1.0 / names.count(n) for n in names])
            chosen = rng.choice(D, descs_per_scene, replace=False, p=p / p.sum())
        else:
            chosen = rng.choice(D, min(D, descs_per_scene), replace=False) if D else np.zeros(0, int)
        xyz, rel = sample_points(s["xyz"], s["relevancy"], num_points, rng)
        tr = np.zeros((descs_per_scene, num_points), np.float32)
        rr = np.zeros_like(tr)
        rel_ids = np.full(descs_per_scene, pad, np.int64)
        q = np.zeros((descs_per_scene, num_queries, 3), np.float32)
        t = np.zeros((descs_per_scene, num_queries), np.float32)
        m = np.zeros((descs_per_scene, num_queries), bool)
        for k, d in enumerate(chosen):
            ti, relation, ri = s["descriptions"][d]
            tr[k], rr[k], rel_ids[k] = rel[ti], rel[ri], RELATIONS.index(relation)
            occ = s["vool_occupancy"][d]
            qi, _ = _queries(s["valid"], occ, num_queries, rng, balanced)
            q[k], t[k], m[k] = s["queries"][qi], occ[qi], True
        for key, val in zip(out, (xyz, tr, rr, rel_ids, q, t, m)):
            out[key].append(val)
    return {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}
