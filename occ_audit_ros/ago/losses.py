"""AGO training losses (AGO §3.2, Eq. 5-8): grounding CE + Lovasz-softmax, binary occupancy,
adaptive alignment.

Category-logit layout used everywhere in :mod:`occ_audit_ros.ago`: ``(N, K + 1 + M)`` with the K
vocabulary categories first, **free at index K**, then M noise categories (negatives: never a
target). For the Occ3D closed-world vocabulary K = 17, so Occ3D labels 0-17 are targets as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["lovasz_grad", "lovasz_softmax", "grounding_loss", "occupancy_loss", "alignment_loss"]


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman et al.,
    CVPR 2018, Alg. 1).

    Args:
        gt_sorted: (P,) float 0/1 foreground indicator, sorted by decreasing error.

    Returns:
        (P,) float weights ``Delta_J({1..i}) - Delta_J({1..i-1})``.
    """
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, classes: str = "present",
                   ignore_index: int | None = None) -> torch.Tensor:
    """Lovasz-softmax loss (Berman et al. 2018, Eq. 12), as in TPVFormer's grounding loss.

    Args:
        probs: (N, C) float class probabilities (softmax output).
        labels: (N,) int64 targets in [0, C) (or ``ignore_index``).
        classes: ``"present"`` — average over classes present in ``labels``; ``"all"`` — over
            all C classes (a class absent from the labels then scores its false positives).
        ignore_index: label to drop.

    Returns:
        scalar float loss (0 when no voxel remains).

    Raises:
        ValueError: shape mismatch or unknown ``classes``.
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (N, C) and labels (N,), got {tuple(probs.shape)}, {tuple(labels.shape)}")
    if classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
    if ignore_index is not None:
        keep = labels != ignore_index
        probs, labels = probs[keep], labels[keep]
    if probs.numel() == 0:
        return probs.sum() * 0.0
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).to(probs.dtype)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


def grounding_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """L_grounding = CE(S_sem, O_pl) + Lovasz(softmax S_sem, O_pl) (AGO §3.2, TPVFormer).

    Args:
        logits: (N, K + 1 + M) category logits (layout in the module docstring).
        target: (N,) int64 in [0, K] (K = free) or ``ignore_index``.
    """
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    if not torch.isfinite(ce):  # every voxel ignored
        ce = logits.sum() * 0.0
    return ce + lovasz_softmax(logits.softmax(-1), target, ignore_index=ignore_index)


def occupancy_loss(logits: torch.Tensor, target: torch.Tensor, free_index: int,
                   ignore_index: int = 255) -> torch.Tensor:
    """Binary occupancy loss L_occ (AGO Eq. 5): two-way logits ``[S_free, max_{k != free} S_k]``
    (index 0 = free, 1 = occupied; order is ours), CE against ``target != free``.

    Args:
        logits: (N, K + 1 + M) category logits; every non-free column (noise included) competes
            for "occupied".
        target: (N,) int64 labels, ``free_index`` = free.
        free_index: K.
    """
    keep = target != ignore_index
    if keep.sum() == 0:
        return logits.sum() * 0.0
    lg, tg = logits[keep], target[keep]
    others = torch.cat([lg[:, :free_index], lg[:, free_index + 1:]], dim=1)
    binary = torch.stack([lg[:, free_index], others.max(dim=1).values], dim=1)
    return F.cross_entropy(binary, (tg != free_index).long())


def alignment_loss(adapted: torch.Tensor, image_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Adaptive alignment loss L_align (AGO Eq. 7): mean of ``1 - cos(F_hat_v, E_v)`` over visible
    non-empty voxels.

    Args:
        adapted: (N, C) adapter outputs F_hat.
        image_emb: (N, C) lifted VLM image embeddings E^{3D}.
        mask: (N,) bool, V_vis.

    Returns:
        scalar (0 when the mask is empty).
    """
    if adapted.shape != image_emb.shape or mask.shape != adapted.shape[:1]:
        raise ValueError(f"shapes {tuple(adapted.shape)}, {tuple(image_emb.shape)}, {tuple(mask.shape)} disagree")
    if mask.sum() == 0:
        return adapted.sum() * 0.0
    cos = F.cosine_similarity(adapted[mask], image_emb[mask], dim=-1)
    return (1.0 - cos).mean()
