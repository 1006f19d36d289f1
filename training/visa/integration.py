"""Bridge from offline audits to a training step of any occupancy model (docs/visa.md §8).

- :func:`flatten_logits` — ``[B, C, X, Y, Z]`` (or channels-last) logits -> ``(N, C)`` rows in
  the order :func:`keyframe_targets` indexes (flat C-order voxel index + ``b · X·Y·Z``); the
  losses also take the 5-D grid directly and index it in place (no copy).
- :func:`keyframe_targets` — audit store records + one keyframe's boxes and GT grid ->
  :class:`.losses.AuditTargets` (grounding, propagation weights, padded voxel assignment).
- :func:`tables_targets` — the same for a whole split with real tables: every box matched to its
  ``sample_annotation`` (:func:`annotation_rows_of_keyframe`), each instance's audit propagated
  along its prev/next track with the annotation's visibility bin in ρ (docs/visa.md §5, §6).
- :class:`VisaTerm` — the configured, ramped VISA loss: ``loss = l_occ + term(logits, targets,
  epoch)["total"]``.

VISA never wraps or modifies the model: it reads the logits the trainer already has, so the
model's forward, parameters and exported checkpoint are the same with or without it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from occ_audit_ros.voxel_grid import VoxelGridSpec
from training.visa.crops import keyframe_instance_token
from training.visa.grounding import InstanceBox, ground_boxes
from training.visa.losses import AuditTargets, VisaLossConfig, build_targets, visa_loss
from training.visa.propagation import propagate


def flatten_logits(logits: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, C, X, Y, Z) (or (B, X, Y, Z, C) with ``channels_last``) -> (B·X·Y·Z, C), a view when possible.

    Raises:
        ValueError: unless the input is 5-D.
    """
    if logits.ndim != 5:
        raise ValueError(f"logits must be 5-D [B, C, X, Y, Z], got {tuple(logits.shape)}")
    if not channels_last:
        logits = logits.permute(0, 2, 3, 4, 1)
    return logits.reshape(-1, logits.shape[-1])


def keyframe_targets(keyframe, semantics: np.ndarray, spec: VoxelGridSpec, audits: dict[str, dict],
                     batch_index: int = 0, frame_id: int = 0, margin: float = 0.2, min_voxels: int = 3,
                     tau_q: float = 0.5, tau_r: float = 0.5, agreement_downweight: bool = False,
                     full_voxels: int = 20) -> tuple[AuditTargets, dict]:
    """AuditTargets of one keyframe (batch item ``batch_index`` of a batch on grid ``spec``).

    Args:
        keyframe: :class:`occ_audit_ros.nuscenes_io.Keyframe` (boxes in ``base_link``).
        semantics: (X, Y, Z) Occ3D-label GT grid of the keyframe in ``base_link``.
        spec: the grid.
        audits: instance token -> ``visa-audit/1`` record (e.g. ``store.read_store(...)``).

    Returns:
        (targets, stats) with stats ``{"boxes", "audited", "grounded", "rows"}``; rows = audited
        instances with ≥ ``min_voxels`` matched voxels.
    """
    boxes = [InstanceBox.from_gtbox(b) for b in keyframe.boxes]
    groundings = ground_boxes(spec, semantics, boxes, margin, min_voxels)
    anns, vox = [], {}
    for b, g in zip(keyframe.boxes, groundings):
        tok = keyframe_instance_token(keyframe, b)
        if g.skipped or tok not in audits:
            continue
        anns.append({"token": tok, "instance_token": tok, "sample_token": keyframe.sample_token,
                     "prev": "", "next": ""})
        vox[tok] = g.voxels
    frames = propagate(audits, anns, {t: len(v) for t, v in vox.items()}, tau_q, tau_r,
                       agreement_downweight, full_voxels)
    offset = batch_index * spec.num_voxels
    targets = build_targets(frames, [vox[f.annotation_token] for f in frames], [frame_id] * len(frames),
                            [offset] * len(frames))
    stats = {"boxes": len(boxes), "audited": sum(keyframe_instance_token(keyframe, b) in audits for b in keyframe.boxes),
             "grounded": sum(not g.skipped for g in groundings), "rows": len(frames)}
    return targets, stats


def annotation_rows_of_keyframe(nusc, keyframe, atol_m: float = 1e-3) -> list[dict]:
    """The ``sample_annotation`` rows of a keyframe's boxes, in box order.

    ``GTBox.index`` is the position in the info pickle's ``instances`` list, which the nuScenes
    export (and the driving simulator's) writes in the order of ``sample["anns"]``; the match is
    checked on the box centres in ``map``.

    Raises:
        ValueError: when the counts differ or a centre is more than ``atol_m`` metres off.
    """
    anns = nusc.get("sample", keyframe.sample_token)["anns"]
    if len(anns) != len(keyframe.boxes):
        raise ValueError(f"sample {keyframe.sample_token}: {len(anns)} annotations vs {len(keyframe.boxes)} boxes")
    rows = []
    for box in keyframe.boxes:
        row = nusc.get("sample_annotation", anns[box.index])
        err = float(np.abs(np.asarray(row["translation"], float) - np.asarray(box.center_map, float)).max())
        if err > atol_m:
            raise ValueError(f"sample {keyframe.sample_token}: box {box.index} is {err:.3f} m from annotation "
                             f"{row['token']} (box order differs from sample['anns'])")
        rows.append(row)
    return rows


def tables_targets(nusc, keyframes, audits: dict[str, dict], spec: VoxelGridSpec, margin: float = 0.2,
                   min_voxels: int = 3, tau_q: float = 0.5, tau_r: float = 0.5,
                   agreement_downweight: bool = False, full_voxels: int = 20,
                   reliability: bool = True) -> tuple[dict[str, AuditTargets], dict[str, dict]]:
    """Per-sample targets of a nuScenes-format split with real instance tokens and tracks (§5, §6).

    Each keyframe's boxes are grounded on its GT grid, every instance's audit is propagated to all
    annotations of its track (``sample_annotation`` prev/next, :func:`.propagation.propagate`, with
    the annotation's visibility bin in ρ), and the grounded (instance, frame) rows of each sample
    become its :class:`AuditTargets` (voxel indices without batch offset, frame id 0).

    Args:
        nusc: ``NuScenes`` handle of the split's tables (:func:`.tables.open_tables`).
        keyframes: iterable of ``(keyframe, semantics)``: a loaded
            :class:`occ_audit_ros.nuscenes_io.Keyframe` (boxes in ``base_link``) and its (X, Y, Z)
            Occ3D-label GT grid on ``spec``.
        audits: instance token -> ``visa-audit/1`` record.
        reliability: False drops the reliability weight (the "no reliability weighting" ablation):
            w_{i,t} = ρ_{i,t} for every audit, no q·r factor and no τ_q / τ_r gates.

    Returns:
        (sample token -> targets, sample token -> stats ``{"boxes", "grounded", "rows", "weight"}``).

    Raises:
        ValueError: from :func:`annotation_rows_of_keyframe` or the track checks of propagation.
    """
    vox, sample_of, stats = {}, {}, {}
    for kf, sem in keyframes:
        rows = annotation_rows_of_keyframe(nusc, kf)
        groundings = ground_boxes(spec, np.asarray(sem), [InstanceBox.from_gtbox(b) for b in kf.boxes],
                                  margin, min_voxels)
        n = 0
        for row, g in zip(rows, groundings):
            if not g.skipped:
                vox[row["token"]] = g.voxels
                n += 1
        sample_of[kf.sample_token] = []
        stats[kf.sample_token] = {"boxes": len(rows), "grounded": n}
    frames = propagate(audits, nusc.sample_annotation, {t: len(v) for t, v in vox.items()}, tau_q, tau_r,
                       agreement_downweight, full_voxels)
    for f in frames:
        if f.annotation_token in vox and f.sample_token in sample_of:
            if not reliability:
                f = dataclasses.replace(f, weight=f.rho)
            sample_of[f.sample_token].append(f)
    out = {}
    for tok, fr in sample_of.items():
        out[tok] = build_targets(fr, [vox[f.annotation_token] for f in fr], [0] * len(fr))
        stats[tok].update(rows=len(fr), weight=float(sum(f.weight for f in fr)))
    return out, stats


def concat_targets(parts: list[AuditTargets]) -> AuditTargets:
    """Concatenate per-sample targets of a batch (voxel indices must already carry batch offsets)."""
    vmax = max(p.voxel_index.shape[1] for p in parts)
    padded = [torch.nn.functional.pad(p.voxel_index, (0, vmax - p.voxel_index.shape[1]), value=-1) for p in parts]
    return AuditTargets(torch.cat(padded), *(torch.cat([getattr(p, n) for p in parts]) for n in
                        ("gt", "hypothesis", "pi", "confusion_set", "attributes", "attribute_mask", "weight", "frame")))


class VisaTerm:
    """The VISA training term: λ-weighted, ramped sum of the three losses (docs/visa.md §7).

    Args:
        config: the ``losses`` section of ``training/config/visa.yaml`` (or a :class:`VisaLossConfig`).
        seed: seed of the graph-edge subsampling generator.
        k_obj_index: logits columns of the 10 K_obj classes (default Occ3D ids 1..10).
    """

    def __init__(self, config: dict | VisaLossConfig | None = None, seed: int = 0,
                 k_obj_index=None) -> None:
        from training.visa.taxonomy import K_OBJ_OCC3D_INDEX

        self.cfg = config if isinstance(config, VisaLossConfig) else VisaLossConfig.from_dict(config)
        self.generator = torch.Generator().manual_seed(seed)
        self.k_obj_index = tuple(k_obj_index) if k_obj_index is not None else K_OBJ_OCC3D_INDEX
        if len(self.k_obj_index) != 10:
            raise ValueError(f"k_obj_index needs the 10 K_obj columns, got {self.k_obj_index}")

    def __call__(self, logits: torch.Tensor, targets: AuditTargets, epoch: float | None) -> dict:
        """VISA terms for 5-D logits [B, C, X, Y, Z] (indexed in place) or flattened (N, C);
        see :func:`.losses.visa_loss`."""
        return visa_loss(logits, targets.to(logits.device), self.cfg, epoch, generator=self.generator,
                         k_obj_index=self.k_obj_index)
