"""Grounding audits to voxels: matched voxels V_{i,t} of each instance (docs/visa.md §5, DC).

``V_{i,t} = {v : centre(v) ∈ b_{i,t} ⊕ margin and y_v = y_i} \\ {v inside ≥ 2 (dilated) boxes}``,
skipped (empty) when ``|V_{i,t}| < min_voxels``. The box must be in the grid's frame (Occ3D /
OccWorld: ego ``base_link`` at the LiDAR timestamp, the frame of
:class:`occ_audit_ros.nuscenes_io.GTBox` ``center``/``rotation``). ``y_v`` is the GT grid's Occ3D
label (``OCC3D_CLASSES`` index), ``y_i`` the box's K_obj class mapped to that index.

:func:`pad_voxel_index` turns the per-instance voxel lists into the padded index tensor the
losses (:mod:`.losses`) take.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from occ_audit_ros.voxel_grid import VoxelGridSpec
from training.visa.taxonomy import OCC3D_CLASSES, category_to_class


@dataclass
class InstanceBox:
    """A 3D box in the grid's frame.

    Attributes:
        center: (3,) float64 m. size: (3,) float64 length/width/height, m.
        rotation: (3, 3) float64, columns = box axes (heading, left, up) in the grid frame.
        category: nuScenes category or detection class name (mapped with ``category_to_class``).
    """

    center: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    category: str

    @classmethod
    def from_gtbox(cls, box) -> "InstanceBox":
        """From a :class:`occ_audit_ros.nuscenes_io.GTBox` (``base_link`` at the LiDAR time)."""
        return cls(np.asarray(box.center, float), np.asarray(box.size, float),
                   np.asarray(box.rotation, float), box.category)


@dataclass
class Grounding:
    """Matched voxels of one box.

    Attributes:
        voxels: (n,) int64 flat C-order indices into the grid (empty when skipped).
        n_in_box: voxels whose centre is in the dilated box.
        n_class: of those, voxels with the box's GT class.
        n_ambiguous: of those, voxels also inside another dilated box (dropped).
        skipped: True when outside K_obj or fewer than ``min_voxels`` remain.
    """

    voxels: np.ndarray
    n_in_box: int
    n_class: int
    n_ambiguous: int
    skipped: bool


def _voxels_in_box(spec: VoxelGridSpec, box: InstanceBox, margin: float) -> np.ndarray:
    """Flat indices of the voxels whose centre is in ``box`` dilated by ``margin`` (m)."""
    half = box.size / 2.0 + margin
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    corners = box.center + (signs * half) @ box.rotation.T
    lower, vs = np.asarray(spec.lower), spec.voxel_size
    dims = np.asarray(spec.dims)
    lo = np.clip(np.floor((corners.min(0) - lower) / vs - 0.5).astype(int), 0, dims)
    hi = np.clip(np.ceil((corners.max(0) - lower) / vs - 0.5).astype(int) + 1, 0, dims)
    if np.any(hi <= lo):
        return np.zeros(0, np.int64)
    ijk = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1).reshape(-1, 3)
    centres = lower + (ijk + 0.5) * vs
    local = (centres - box.center) @ box.rotation
    inside = np.all(np.abs(local) <= half, axis=1)
    return spec.flat_index(ijk[inside]).astype(np.int64)


def ground_boxes(spec: VoxelGridSpec, semantics: np.ndarray, boxes: list[InstanceBox],
                 margin: float = 0.2, min_voxels: int = 3) -> list[Grounding]:
    """Matched voxels V_{i,t} of every box of one frame.

    Args:
        spec: the grid (frame of the boxes).
        semantics: (X, Y, Z) integer GT labels, Occ3D indices (17 free, 255 unobserved allowed).
        boxes: all annotated boxes of the frame (every box counts for ambiguity, also those
            outside K_obj).
        margin: dilation of each box, m (0.2).
        min_voxels: boxes with fewer matched voxels are skipped (3).

    Returns:
        One :class:`Grounding` per box, in order.

    Raises:
        ValueError: when ``semantics`` does not have the grid's shape.
    """
    sem = np.asarray(semantics)
    if sem.shape != tuple(spec.dims):
        raise ValueError(f"semantics shape {sem.shape} != grid dims {spec.dims}")
    flat = sem.reshape(-1)
    in_box = [_voxels_in_box(spec, b, margin) for b in boxes]
    count = np.bincount(np.concatenate(in_box) if in_box else np.zeros(0, np.int64),
                        minlength=flat.size)
    out = []
    for b, vox in zip(boxes, in_box):
        cls = category_to_class(b.category)
        if cls is None:
            out.append(Grounding(np.zeros(0, np.int64), len(vox), 0, 0, True))
            continue
        same = vox[flat[vox] == OCC3D_CLASSES.index(cls)]
        amb = count[same] >= 2
        kept = np.sort(same[~amb])
        skipped = len(kept) < min_voxels
        out.append(Grounding(kept if not skipped else np.zeros(0, np.int64), len(vox), len(same),
                             int(amb.sum()), skipped))
    return out


def pad_voxel_index(voxel_lists: list[np.ndarray], offsets=None) -> torch.Tensor:
    """Padded (R, V_max) int64 tensor of voxel indices, −1 = padding.

    Args:
        voxel_lists: R arrays of flat voxel indices (one per (instance, frame) row).
        offsets: optional (R,) ints added to each row (e.g. ``b · X·Y·Z`` for batch item b, so the
            indices address the flattened logits (B·X·Y·Z, C)).

    Returns:
        (R, V_max) torch.int64 (V_max ≥ 1).
    """
    R = len(voxel_lists)
    vmax = max([1] + [len(v) for v in voxel_lists])
    out = torch.full((R, vmax), -1, dtype=torch.int64)
    for r, v in enumerate(voxel_lists):
        if len(v):
            off = 0 if offsets is None else int(offsets[r])
            out[r, : len(v)] = torch.as_tensor(np.asarray(v, np.int64) + off)
    return out


def keyframe_semantics_from_lidar(keyframe, spec: VoxelGridSpec):
    """Occupied GT voxels of a keyframe from its LiDAR returns and 3D boxes (semantic part of the
    Occ3D recipe, Occ3D README): a return inside a box takes the box's class (K_obj
    index in ``OCC3D_CLASSES``; boxes outside K_obj -> ``others``), other returns are ``others``;
    each voxel takes the majority class of its returns; voxels without a return are ``free`` (17).
    No ray casting or camera mask (grounding does not need them; the AGO GT builder
    ``training.ago.occ_gt`` adds them with the same labels and frame).

    Args:
        keyframe: :class:`occ_audit_ros.nuscenes_io.Keyframe`.
        spec: grid in ``base_link`` at the LiDAR timestamp.

    Returns:
        ``(semantics (X, Y, Z) uint8, point_voxel (M,) int64 flat voxel of each in-grid return,
        point_box (M,) int64 box index of that return or −1)``.
    """
    from occ_audit_ros.geometry import transform_points

    pts = transform_points(keyframe.lidar.T_base_lidar, keyframe.lidar.points[:, :3])
    box_of = np.full(len(pts), -1, np.int64)
    for i, b in enumerate(keyframe.boxes):
        local = (pts - b.center) @ np.asarray(b.rotation)
        box_of[np.all(np.abs(local) <= np.asarray(b.size) / 2, axis=1)] = i
    cls = [category_to_class(b.category) for b in keyframe.boxes]
    box_label = np.array([OCC3D_CLASSES.index(c) if c else 0 for c in cls] + [0], np.int64)
    labels = box_label[box_of]
    ijk, ok = spec.point_to_voxel(pts)
    flat = spec.flat_index(ijk[ok]).astype(np.int64)
    labels, box_of = labels[ok], box_of[ok]
    votes = np.zeros((spec.num_voxels, 17), np.int32)
    np.add.at(votes, (flat, labels), 1)
    sem = np.full(spec.num_voxels, 17, np.uint8)
    occ = votes.sum(1) > 0
    sem[occ] = votes[occ].argmax(1)
    return sem.reshape(spec.dims), flat, box_of
