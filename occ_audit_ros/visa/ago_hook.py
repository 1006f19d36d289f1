"""VISA as an ``extra_losses`` hook of the AGO trainer (``training/train_ago.py``).

``train(cfg, extra_losses=[VisaExtraLoss(...)])``: each step the hook reads the batch's sample
tokens and the model's ``outputs["class_logits"]`` (B, X, Y, Z, C) (Occ3D labels for the closed
vocabulary, so K_obj = columns 1..10), gathers the precomputed :class:`.losses.AuditTargets` of
those samples (voxel indices shifted by ``b·X·Y·Z``) and returns the three λ-weighted, ramped
VISA terms ``visa_tax``, ``visa_attr``, ``visa_graph`` — the trainer adds them to its unchanged
L_grounding + L_occ (+ L_align) and logs them. The model is untouched.

The ramp counts the hook's calls: ``epoch = (start_step + calls) / steps_per_epoch``; pass the
resumed step as ``start_step`` when resuming.
"""

from __future__ import annotations

import dataclasses

import torch

from ..voxel_grid import VoxelGridSpec
from .grounding import keyframe_semantics_from_lidar
from .integration import concat_targets, keyframe_targets
from .losses import AuditTargets, VisaLossConfig, ramp, visa_loss
from .taxonomy import K_OBJ_OCC3D_INDEX


def _shift(t: AuditTargets, offset: int) -> AuditTargets:
    return dataclasses.replace(t, voxel_index=torch.where(t.voxel_index >= 0, t.voxel_index + offset, -1))


class VisaExtraLoss:
    """``fn(batch, outputs, model) -> {name: scalar}`` hook for ``train_ago.train``.

    Args:
        targets_by_token: sample token -> targets of that sample on the trainer's grid, voxel
            indices without batch offset (:func:`keyframe_targets_for_tokens`).
        loss_cfg: ``losses`` section of ``config/visa.yaml`` (or a :class:`VisaLossConfig`).
        steps_per_epoch: optimiser steps per epoch (for the λ ramp).
        start_step: step the run starts (resumes) at.
        seed: seed of the graph-edge subsampling.
        k_obj_index: logits columns of K_obj (default Occ3D 1..10, the closed vocabulary).

    Raises:
        ValueError: for ``steps_per_epoch < 1``.
    """

    def __init__(self, targets_by_token: dict[str, AuditTargets], loss_cfg=None, steps_per_epoch: int = 1,
                 start_step: int = 0, seed: int = 0, k_obj_index=K_OBJ_OCC3D_INDEX) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.targets = targets_by_token
        self.cfg = loss_cfg if isinstance(loss_cfg, VisaLossConfig) else VisaLossConfig.from_dict(loss_cfg)
        self.steps_per_epoch = int(steps_per_epoch)
        self.step = int(start_step)
        self.generator = torch.Generator().manual_seed(seed)
        self.k_obj_index = tuple(k_obj_index)

    def __call__(self, batch: dict, outputs: dict, model=None) -> dict[str, torch.Tensor]:
        """The weighted VISA terms of one training step (0 when no sample of the batch is audited)."""
        logits = outputs["class_logits"]  # (B, X, Y, Z, C)
        B, X, Y, Z, _ = logits.shape
        parts = [_shift(self.targets[tok], b * X * Y * Z) for b, tok in enumerate(batch["tokens"])
                 if tok in self.targets and len(self.targets[tok].gt)]
        k = ramp(self.step / self.steps_per_epoch, self.cfg.ramp_epochs)
        self.step += 1
        if not parts:
            zero = logits.sum() * 0.0
            return {"visa_tax": zero, "visa_attr": zero, "visa_graph": zero}
        targets = concat_targets(parts).to(logits.device)
        out = visa_loss(logits.permute(0, 4, 1, 2, 3), targets, self.cfg, epoch=None,
                        generator=self.generator, k_obj_index=self.k_obj_index)
        return {"visa_tax": k * self.cfg.lambda_tax * out["tax"],
                "visa_attr": k * self.cfg.lambda_attr * out["attr"],
                "visa_graph": k * self.cfg.lambda_graph * out["graph"]}


def keyframe_targets_for_tokens(audits: dict[str, dict], spec: VoxelGridSpec, dataroot=None, annotations=None,
                                tokens=None, weights: dict | None = None, grounding: dict | None = None):
    """Targets of the AGO trainer's samples (same loader arguments as its ``data`` section).

    GT voxels come from :func:`.grounding.keyframe_semantics_from_lidar` on ``spec`` (the labels
    and frame of the AGO GT builder).

    Returns:
        (sample token -> :class:`AuditTargets`, sample token -> stats).
    """
    from ..nuscenes_io import load_keyframe

    weights, grounding = weights or {}, grounding or {}
    out, stats = {}, {}
    for tok in (tokens or [None]):
        kf = load_keyframe(dataroot, annotations, sample_token=tok)
        sem, _, _ = keyframe_semantics_from_lidar(kf, spec)
        t, s = keyframe_targets(kf, sem, spec, audits, margin=grounding.get("margin_m", 0.2),
                                min_voxels=grounding.get("min_voxels", 3),
                                tau_q=weights.get("tau_q", 0.5), tau_r=weights.get("tau_r", 0.5),
                                agreement_downweight=weights.get("agreement_downweight", False),
                                full_voxels=grounding.get("full_weight_voxels", 20))
        out[kf.sample_token], stats[kf.sample_token] = t, s
    return out, stats


__all__ = ["VisaExtraLoss", "keyframe_targets_for_tokens"]
