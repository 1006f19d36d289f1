"""SemAbs evaluation: voxel IoU at 32^3 with one global logit cutoff (paper Sec. 4; the released code's ``eval.py``).

Protocol: per (view, label) the query predictions and labels are max-pooled into a 32^3 voxelisation of
the workspace (ignored queries excluded, voxels without any query ignored); IoU is binary per
(view, label); the cutoff is swept (reference: logits in [-2.5, -0.1], step 0.1) and the single best
cutoff by mean IoU on the validation split is then applied unchanged to the test splits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from occ_audit_ros.semabs.pointcloud import Workspace

__all__ = ["REFERENCE_CUTOFFS", "REFERENCE_AGGREGATION", "voxel_max", "voxel_iou", "iou_table", "choose_cutoff",
           "reference_mean", "reference_rows", "VOOL_REFERENCE_AGGREGATION", "reference_vool_rows",
           "reference_vool_means"]

#: The reference sweep: logit cutoffs -2.5, -2.4, ..., -0.1.
REFERENCE_CUTOFFS = np.round(np.arange(-2.5, -0.05, 0.1), 6)


def voxel_max(points: np.ndarray, values: np.ndarray, workspace: Workspace, grid: int = 32,
              valid: np.ndarray | None = None) -> np.ndarray:
    """Max-pool point values into a grid^3 cell voxelisation of the workspace.

    Cell (i, j, k) covers ``lower + [i, i+1) * (upper - lower) / grid`` (upper faces included in the
    last cell).

    Args:
        points: (M, 3) float query points [m]; values: (M,) float (logits) or bool (labels);
        valid: (M,) bool, queries to use (all when None); points outside the workspace are ignored.

    Returns:
        (grid^3,) float64, C order (x, y, z), ``-inf`` in cells without any used query.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) != len(p):
        raise ValueError(f"{len(p)} points but {len(v)} values")
    keep = workspace.contains(p) & np.isfinite(v)
    if valid is not None:
        keep &= np.asarray(valid, bool).reshape(-1)
    lo, up = np.asarray(workspace.lower), np.asarray(workspace.upper)
    ijk = np.clip(np.floor((p[keep] - lo) / (up - lo) * grid), 0, grid - 1).astype(np.int64)
    flat = (ijk[:, 0] * grid + ijk[:, 1]) * grid + ijk[:, 2]
    out = np.full(grid ** 3, -np.inf)
    np.maximum.at(out, flat, v[keep])
    return out


def voxel_iou(pred_vox: np.ndarray, gt_vox: np.ndarray, cutoffs: Sequence[float]) -> np.ndarray:
    """Binary IoU of ``pred_vox > cutoff`` against ``gt_vox > 0.5`` over observed cells.

    Args:
        pred_vox: (V,) max-pooled prediction (``-inf`` = no query); gt_vox: (V,) max-pooled labels.
        cutoffs: (C,) cutoffs.

    Returns:
        (C,) float64 IoU in [0, 1]; NaN where prediction and ground truth are both empty.
    """
    seen = np.isfinite(gt_vox)
    gt = gt_vox[seen] > 0.5
    pred = pred_vox[seen][None, :] > np.asarray(cutoffs, dtype=np.float64)[:, None]
    inter = (pred & gt[None]).sum(1)
    union = (pred | gt[None]).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def iou_table(points_list, pred_list, gt_list, workspace: Workspace, cutoffs: Sequence[float], grid: int = 32,
              valid_list=None) -> np.ndarray:
    """IoU of many (view, label) items at every cutoff.

    Args:
        points_list: per item (M_i, 3) query points; pred_list: per item (M_i,) logits;
        gt_list: per item (M_i,) bool occupancy; valid_list: optional per item (M_i,) bool.

    Returns:
        (items, C) float64 IoU (NaN where undefined).
    """
    rows = []
    for i, (p, s, g) in enumerate(zip(points_list, pred_list, gt_list)):
        valid = None if valid_list is None else valid_list[i]
        rows.append(voxel_iou(voxel_max(p, s, workspace, grid, valid), voxel_max(p, g, workspace, grid, valid), cutoffs))
    return np.array(rows).reshape(len(rows), len(cutoffs))


def choose_cutoff(table: np.ndarray, cutoffs: Sequence[float],
                  aggregate: Callable[[np.ndarray], float] | None = None) -> tuple[float, float]:
    """The cutoff with the best mean IoU over items (NaN items skipped).

    Args:
        table: (items, C) IoU from :func:`iou_table`; cutoffs: (C,).
        aggregate: mean of one column (items,) -> float (e.g. :func:`reference_mean`); default: NaN-skipping
            item mean.

    Returns:
        ``(cutoff, mean_iou)``.

    Raises:
        ValueError: when the table has no defined IoU.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        if aggregate is not None:
            means = np.array([aggregate(table[:, j]) for j in range(len(cutoffs))], dtype=np.float64)
        else:
            means = np.nanmean(table, axis=0) if len(table) else np.full(len(cutoffs), np.nan)
    if not np.any(np.isfinite(means)):
        raise ValueError("no defined IoU to choose a cutoff from")
    best = int(np.nanargmax(means))
    return float(np.asarray(cutoffs)[best]), float(means[best])


#: Reference aggregation per split: mean per room, then over rooms; or per label, then over labels.
REFERENCE_AGGREGATION = {"novel_class": "label", "novel_synonym": "label"}


def reference_mean(values: np.ndarray, names: Sequence[str], rooms: Sequence[int], split: str) -> float:
    """SemAbs ``summarize.py`` aggregation of per-item IoUs (paper Sec. 4).

    Args:
        values: (items,) float IoU per (view, label), NaN = undefined (skipped).
        names: per item its label; rooms: per item its room (scene) index.
        split: ``novel_class`` / ``novel_synonym`` average per label first, any other split per room.

    Returns:
        the mean over groups of the mean within each group; NaN when no item is defined.
    """
    return _mean_of_group_means(values, names if REFERENCE_AGGREGATION.get(split, "room") == "label" else rooms)


def _mean_of_group_means(values: Sequence[float], keys: Sequence) -> float:
    """Mean over the groups (items sharing a key) of each group's mean; NaN values skipped, NaN if none left."""
    groups = {}
    for v, k in zip(values, keys):
        if np.isfinite(v):
            groups.setdefault(k, []).append(v)
    return float(np.mean([np.mean(g) for g in groups.values()])) if groups else float("nan")


def reference_rows(items: Sequence[tuple]) -> np.ndarray:
    """OVSSC items the reference protocol scores: the label's object occupies an in-frustum query.

    SemAbs' dataset code scores only labels whose object lies in the in-frustum ground truth and is visible
    in the view's segmentation (on our simulator splits the visible condition adds nothing, checked).

    Args:
        items: ``(name, queries, scores, target)`` with ``target`` (M,) bool over in-frustum queries.

    Returns:
        (items,) bool.
    """
    return np.array([bool(np.any(it[3])) for it in items])


#: Reference VOOL aggregation per split (``summarize.py::summarize_vool``): per relation, mean per room then
#: over rooms; novel class / synonym: plain mean over the relation's items.
VOOL_REFERENCE_AGGREGATION = {"novel_class": "item", "novel_synonym": "item"}


def reference_vool_rows(pairs: Sequence[tuple[str, str]], split: str, synonym_texts: set[str],
                        novel_class_texts: set[str]) -> np.ndarray:
    """VOOL descriptions the reference protocol scores in a split (SemAbs ``summarize.py::summarize_vool``).

    Novel class keeps descriptions whose target or reference names a held-out class; novel synonym keeps
    those whose target or reference is queried by a synonym; every other split drops descriptions that
    name a held-out class (on the simulator's val / novel scene / novel shape splits there are none).

    Args:
        pairs: per description ``(target text, reference text)``.
        split: split name.
        synonym_texts: query texts that are synonyms (not class names).
        novel_class_texts: query texts naming a held-out class.

    Returns:
        (descriptions,) bool.
    """
    def named(texts):
        return np.array([t in texts or r in texts for t, r in pairs], dtype=bool)

    if split == "novel_class":
        return named(novel_class_texts)
    if split == "novel_synonym":
        return named(synonym_texts)
    return ~named(novel_class_texts)


def reference_vool_means(values: np.ndarray, relations: Sequence[str], rooms: Sequence[int],
                         split: str) -> dict:
    """Reference VOOL aggregation of per-description IoUs (SemAbs ``summarize.py::summarize_vool``).

    Args:
        values: (items,) float IoU per (view, description) of the kept rows, NaN = undefined (skipped).
        relations: per item its relation; rooms: per item its room (scene) index.
        split: ``novel_class`` / ``novel_synonym`` take the plain mean per relation, any other split the
            mean per room first, then over rooms.

    Returns:
        ``{"per_name": {relation: mean}, "mean": mean over the relations}``; NaN where nothing is defined.
    """
    by_room = VOOL_REFERENCE_AGGREGATION.get(split, "room") == "room"
    per = {}
    for rel in sorted(set(relations)):
        idx = [i for i, r in enumerate(relations) if r == rel]
        # a plain mean is the mean of one-item groups
        per[rel] = _mean_of_group_means([values[i] for i in idx], [rooms[i] for i in idx] if by_room else idx)
    finite = [v for v in per.values() if np.isfinite(v)]
    return {"per_name": per, "mean": float(np.mean(finite)) if finite else float("nan")}
