"""Occ3D-nuScenes semantic occupancy metrics from one confusion matrix per split.

Protocol (Occ3D README; ``occ_metrics.py`` ``Metric_mIoU``): a (18, 18) confusion
matrix (rows = GT, columns = prediction, labels 0-16 semantic + 17 free) is summed over **all**
evaluated frames, counting only voxels inside ``mask_camera``; per class
``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; mIoU = mean over classes 0-16 (free is in the matrix, so
free-vs-object errors count, but not in the mean). A class with an empty union (never in GT nor
predicted) has IoU NaN and is left out of means (``np.nanmean``, as ``Metric_mIoU``).
Variants: mIoU* (AGO Table 1: 15 classes, others and other_flat excluded), object / rare-class mIoU
(design choice, docs/visa.md §2), known / unknown / all mIoU of the AGO open-world protocol (AGO Table 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occ_audit_ros.ago.classes import FREE_LABEL, IGNORE_LABEL, ClassConfig

__all__ = ["OccConfusion", "iou_per_class", "mean_iou", "merge_confusion", "geometric_iou",
           "occ3d_table", "open_world_table"]

NUM_LABELS = FREE_LABEL + 1  # 18


class OccConfusion:
    """Accumulates the (18, 18) int64 GT x prediction confusion matrix of a split.

    Usage: ``conf = OccConfusion(); for f in frames: conf.update(pred, gt, mask_camera)``.
    """

    def __init__(self, num_labels: int = NUM_LABELS):
        """Args: num_labels: labels 0..num_labels-1 (18 for Occ3D: 0-16 semantic, 17 free)."""
        self.num_labels = int(num_labels)
        self.matrix = np.zeros((self.num_labels, self.num_labels), dtype=np.int64)
        self.frames = 0

    def update(self, pred, gt, mask=None) -> None:
        """Add one frame.

        Args:
            pred: (X, Y, Z) (or any shape) integer predicted labels in ``[0, num_labels)``.
            gt: same shape, integer GT labels in ``[0, num_labels)``; 255 = unobserved (skipped).
            mask: same shape, bool/0-1 camera visibility mask (Occ3D ``mask_camera``); None = all.

        Raises:
            ValueError: shape mismatch, or labels out of range (GT other than 255, any prediction).
        """
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} != GT shape {gt.shape}")
        keep = gt != IGNORE_LABEL
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != gt.shape:
                raise ValueError(f"mask shape {mask.shape} != GT shape {gt.shape}")
            keep &= mask.astype(bool)
        g = gt[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        n = self.num_labels
        if g.size and (g.min() < 0 or g.max() >= n):
            raise ValueError(f"GT labels must be in [0, {n}) or {IGNORE_LABEL}, got {g.min()}..{g.max()}")
        if p.size and (p.min() < 0 or p.max() >= n):
            raise ValueError(f"predicted labels must be in [0, {n}), got {p.min()}..{p.max()}")
        self.matrix += np.bincount(g * n + p, minlength=n * n).reshape(n, n)
        self.frames += 1

    def merge(self, other: "OccConfusion") -> None:
        """Add another accumulator's counts (e.g. from another process)."""
        self.matrix += other.matrix
        self.frames += other.frames


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """IoU of every label from a confusion matrix.

    Args:
        matrix: (L, L) counts, rows GT, columns prediction.

    Returns:
        (L,) float64 ``TP / (TP + FP + FN)``, NaN where the union is empty.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(matrix: np.ndarray, class_ids) -> float:
    """Mean IoU (fraction in [0, 1]) over ``class_ids``, NaN classes left out (NaN if all are)."""
    iou = iou_per_class(matrix)[list(class_ids)]
    return float(np.nanmean(iou)) if np.any(np.isfinite(iou)) else float("nan")


def geometric_iou(matrix: np.ndarray, free_label: int = FREE_LABEL) -> float:
    """Occupied-vs-free IoU (AGO "IoU"): every non-free label counts as occupied."""
    m = np.asarray(matrix, dtype=np.float64)
    occ = np.ones(len(m), dtype=bool)
    occ[free_label] = False
    tp = m[np.ix_(occ, occ)].sum()
    fp = m[np.ix_(~occ, occ)].sum()
    fn = m[np.ix_(occ, ~occ)].sum()
    return float(tp / (tp + fp + fn)) if tp + fp + fn > 0 else float("nan")


def merge_confusion(matrix: np.ndarray, groups: dict[int, tuple[int, ...]]) -> np.ndarray:
    """Confusion matrix with each group of labels merged into one label (rows and columns summed).

    Used for the open-world pre-training stage, where supercategories are evaluated as one class.

    Args:
        matrix: (L, L) counts.
        groups: new label -> member labels; the new label must be one of its members (the
            others' rows/columns become zero, so their IoU is NaN and they drop out of means).

    Returns:
        (L, L) int64.

    Raises:
        ValueError: if a group's label is not among its members or a label is in two groups.
    """
    m = np.asarray(matrix).astype(np.int64).copy()
    seen: set[int] = set()
    for target, members in groups.items():
        members = tuple(members)
        if target not in members:
            raise ValueError(f"group label {target} must be one of its members {members}")
        if seen & set(members):
            raise ValueError(f"labels {seen & set(members)} are in two groups")
        seen |= set(members)
        others = [i for i in members if i != target]
        m[target, :] += m[others, :].sum(0)
        m[others, :] = 0
        m[:, target] += m[:, others].sum(1)
        m[:, others] = 0
    return m


@dataclass
class Table:
    """A printable result table: rows of (name, value in %)."""

    title: str
    rows: list

    def format(self) -> str:
        """Fixed-width text table (values in %, NaN printed as ``-``)."""
        w = max([len(r[0]) for r in self.rows] + [10])
        lines = [self.title, "-" * (w + 10)]
        for name, val in self.rows:
            lines.append(f"{name:<{w}}  {'-' if not np.isfinite(val) else f'{val:7.2f}'}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """name -> value (%)."""
        return {k: v for k, v in self.rows}


def occ3d_table(matrix: np.ndarray, cfg: ClassConfig) -> Table:
    """Closed-world Occ3D table: per-class IoU, mIoU (17), mIoU* (15), object, rare, geometric IoU.

    Args:
        matrix: (18, 18) split confusion matrix.
        cfg: class lists (:func:`classes.load_class_config`).

    Returns:
        :class:`Table` with values in %.
    """
    iou = iou_per_class(matrix) * 100
    rows = [(name, float(iou[i])) for i, name in enumerate(cfg.classes)]
    rows += [
        ("mIoU (17)", mean_iou(matrix, cfg.all_classes) * 100),
        ("mIoU* (15)", mean_iou(matrix, cfg.miou_star) * 100),
        ("object mIoU", mean_iou(matrix, cfg.object_classes) * 100),
        ("rare mIoU", mean_iou(matrix, cfg.rare_classes) * 100),
        ("geometric IoU", geometric_iou(matrix, cfg.free_label) * 100),
    ]
    return Table("Occ3D (mask_camera, one confusion over the split; IoU %)", rows)


def open_world_table(matrix: np.ndarray, cfg: ClassConfig, stage: str) -> Table:
    """Known / unknown / all mIoU of the AGO open-world protocol (AGO §4.1, Table 2; split reconstructed from the published means).

    Args:
        matrix: (18, 18) confusion matrix with **fine** Occ3D labels (predictions of a model whose
            vocabulary was expanded to the fine names, or, for ``"pretrain"``, any labels: member
            classes of a supercategory are merged into it here).
        cfg: class lists.
        stage: ``"pretrain"`` — supercategories merged; known = fine known + supercategories
            (5), unknown = fully unknown classes (5); all = the 10. ``"zeroshot"`` / ``"fewshot"``
            — fine labels; known = fine known classes (3), unknown = supercategory members (7) +
            fully unknown (5); all = the 15 evaluated classes.

    Returns:
        :class:`Table` (values in %) with rows known / unknown / all mIoU.

    Raises:
        ValueError: unknown stage.
    """
    if stage == "pretrain":
        groups = {members[0]: members for members in cfg.ow_super.values()}
        m = merge_confusion(matrix, groups)
        known = tuple(cfg.ow_known) + tuple(groups)
        unknown = tuple(cfg.ow_unknown)
    elif stage in ("zeroshot", "fewshot"):
        m = np.asarray(matrix)
        known = tuple(cfg.ow_known)
        unknown = tuple(cfg.ow_split_classes) + tuple(cfg.ow_unknown)
    else:
        raise ValueError(f"stage must be pretrain, zeroshot or fewshot, got {stage!r}")
    rows = [("known mIoU", mean_iou(m, known) * 100),
            ("unknown mIoU", mean_iou(m, unknown) * 100),
            ("all mIoU", mean_iou(m, known + unknown) * 100)]
    return Table(f"open world, {stage} (known {len(known)}, unknown {len(unknown)}; IoU %)", rows)
