"""Occ3D-style GT occupancy of one nuScenes keyframe from its LiDAR sweep and 3D boxes.

Follows the Occ3D label recipe (Occ3D README) on what one real keyframe offers: a voxel with
a LiDAR return gets that return's class (semantic voting = majority per voxel); voxels traversed by
a LiDAR ray are free; the rest are unobserved (255). Classes: returns inside a GT box take the box's
class (the 10 detection classes share Occ3D's names; boxes labelled ``other`` -> ``others``); all
remaining returns are ``others`` (no lidarseg labels here, so road, vegetation, buildings are all
``others`` in this GT — it checks geometry and objects, not stuff classes). ``mask_camera``:
voxels on camera rays (through a pixel grid) up to and including the first occupied voxel (Occ3D's
camera visibility). Differences from Occ3D: a single sweep (no multi-frame aggregation), no mesh
reconstruction, no lidarseg stuff classes.

Frame: the grid is in ``base_link`` at the LiDAR timestamp (the boxes' frame); cameras are moved
into it through ``map`` (ego-motion compensated, as :func:`nuscenes_io.lidar_points_in_camera`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occ_audit_ros.atomic import atomic_path
from occ_audit_ros.geometry import invert_transform, transform_points
from occ_audit_ros.voxel_grid import VoxelGridSpec
from occ_audit_ros.ago.classes import FREE_LABEL, IGNORE_LABEL, OCC3D_CLASSES

__all__ = ["OCC3D_SPEC", "OccupancyGT", "march_rays", "occupancy_from_points", "camera_visibility",
           "points_in_boxes", "keyframe_occupancy_gt"]

#: Occ3D-nuScenes grid: 200 x 200 x 16, 0.4 m, [-40, -40, -1, 40, 40, 5.4] m.
OCC3D_SPEC = VoxelGridSpec(lower=(-40.0, -40.0, -1.0), upper=(40.0, 40.0, 5.4), voxel_size=0.4)
#: Ego-vehicle returns removed before labelling: box in base_link [m] (nuScenes Renault Zoe, margin).
EGO_BOX = ((-1.2, -1.1, -0.5), (3.8, 1.1, 2.2))


@dataclass
class OccupancyGT:
    """Dense labelled grid in Occ3D's ``labels.npz`` layout.

    Attributes:
        spec: grid geometry (frame ``base_link`` at the LiDAR timestamp).
        semantics: (X, Y, Z) uint8: 0-16 Occ3D class, 17 free, 255 unobserved.
        mask_lidar: (X, Y, Z) uint8 1 where observed by LiDAR (occupied or traversed).
        mask_camera: (X, Y, Z) uint8 1 where visible in a camera.
    """

    spec: VoxelGridSpec
    semantics: np.ndarray
    mask_lidar: np.ndarray
    mask_camera: np.ndarray

    def save(self, path) -> None:
        """Write ``semantics``, ``mask_lidar``, ``mask_camera`` (+ grid) to an ``.npz`` atomically."""
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, semantics=self.semantics, mask_lidar=self.mask_lidar,
                                mask_camera=self.mask_camera, lower=np.array(self.spec.lower),
                                upper=np.array(self.spec.upper), voxel_size=np.array(self.spec.voxel_size))

    def counts(self) -> dict[str, int]:
        """Voxels per label name (classes, ``free``, ``unobserved``)."""
        c = np.bincount(self.semantics.ravel(), minlength=256)
        out = {n: int(c[i]) for i, n in enumerate(OCC3D_CLASSES)}
        out["free"], out["unobserved"] = int(c[FREE_LABEL]), int(c[IGNORE_LABEL])
        return out


def march_rays(spec: VoxelGridSpec, origins, dirs, lengths, step: float | None = None,
               max_samples: int = 4_000_000):
    """Sample rays at regular steps and yield the voxels they pass, chunk by chunk.

    Args:
        spec: grid.
        origins: (R, 3) ray origins [m, grid frame].
        dirs: (R, 3) unit directions.
        lengths: (R,) ray lengths [m] (samples at ``(k + 0.5) * step < length``).
        step: sample spacing [m], default ``voxel_size / 2``.
        max_samples: samples per chunk (memory bound).

    Yields:
        ``(ray_ids, sample_k, flat, inside)`` per chunk: (r, S) int64 ray index, step index, flat
        voxel index (garbage where not inside) and bool ``inside`` (in the grid and before the ray's end).
    """
    o = np.asarray(origins, np.float64).reshape(-1, 3)
    d = np.asarray(dirs, np.float64).reshape(-1, 3)
    L = np.asarray(lengths, np.float64).reshape(-1)
    step = spec.voxel_size / 2 if step is None else float(step)
    n_steps = int(np.ceil(L.max() / step)) if len(L) else 0
    if n_steps == 0:
        return
    t = (np.arange(n_steps) + 0.5) * step
    chunk = max(1, max_samples // n_steps)
    dims = np.asarray(spec.dims)
    lower = np.asarray(spec.lower)
    for s in range(0, len(o), chunk):
        sl = slice(s, s + chunk)
        pts = o[sl, None, :] + d[sl, None, :] * t[None, :, None]
        ijk = np.floor((pts - lower) / spec.voxel_size).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < dims), axis=2) & (t[None, :] < L[sl, None])
        flat = (ijk[..., 0] * dims[1] + ijk[..., 1]) * dims[2] + ijk[..., 2]
        rid = np.broadcast_to(np.arange(s, s + pts.shape[0])[:, None], flat.shape)
        k = np.broadcast_to(np.arange(n_steps)[None, :], flat.shape)
        yield rid, k, flat, inside


def _clip_length(spec: VoxelGridSpec, origins, lengths) -> np.ndarray:
    """Cap ray lengths at the farthest grid corner's distance from the origin (beyond it, no voxel)."""
    corners = np.array([[x, y, z] for x in (spec.lower[0], spec.upper[0]) for y in (spec.lower[1], spec.upper[1])
                        for z in (spec.lower[2], spec.upper[2])])
    far = np.linalg.norm(corners[None] - np.asarray(origins).reshape(-1, 1, 3), axis=2).max(1)
    return np.minimum(lengths, far)


def occupancy_from_points(spec: VoxelGridSpec, points, labels, origin) -> tuple[np.ndarray, np.ndarray]:
    """Labelled occupancy from labelled returns: semantic voting per voxel + free along rays.

    Args:
        spec: grid.
        points: (N, 3) returns [m, grid frame].
        labels: (N,) int class id (0-16) per return.
        origin: (3,) sensor origin [m, grid frame] (ray start).

    Returns:
        ``(semantics, mask_lidar)``: (X, Y, Z) uint8 labels (class, 17 free, 255 unobserved) and uint8
        observed mask.
    """
    points = np.asarray(points, np.float64).reshape(-1, 3)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    n = spec.num_voxels
    sem = np.full(n, IGNORE_LABEL, np.uint8)
    vec = points - np.asarray(origin, np.float64)
    rng = np.linalg.norm(vec, axis=1)
    ok = rng > 1e-6
    dirs = vec[ok] / rng[ok, None]
    for _, _, flat, inside in march_rays(spec, np.broadcast_to(origin, (ok.sum(), 3)), dirs,
                                         _clip_length(spec, np.asarray(origin)[None], rng[ok])):
        sem[flat[inside]] = FREE_LABEL
    ijk, inside = spec.point_to_voxel(points)
    flat = spec.flat_index(ijk[inside])
    votes = np.zeros((n, len(OCC3D_CLASSES)), np.int32) if n * 17 < 50_000_000 else None
    if votes is not None:
        np.add.at(votes, (flat, labels[inside]), 1)
        occ = np.flatnonzero(votes.sum(1))
        sem[occ] = votes[occ].argmax(1)
    else:  # huge grids: pair counts by unique (voxel, label), keep the majority label per voxel
        key = flat * 32 + labels[inside]
        uk, cnt = np.unique(key, return_counts=True)
        order = np.lexsort((-cnt, uk // 32))
        v, lab = uk[order] // 32, uk[order] % 32
        first = np.r_[True, v[1:] != v[:-1]]
        sem[v[first]] = lab[first]
    mask_lidar = (sem != IGNORE_LABEL).astype(np.uint8)
    return sem.reshape(spec.dims), mask_lidar.reshape(spec.dims)


def camera_visibility(spec: VoxelGridSpec, occupied, cameras, pixel_stride: int = 8,
                      max_range: float = 80.0) -> np.ndarray:
    """Occ3D camera visibility mask by ray casting through a pixel grid.

    Args:
        spec: grid.
        occupied: (X, Y, Z) bool occupied voxels (rays stop at the first one, which is visible).
        cameras: iterable of ``(K (3, 3), T_grid_cam (4, 4), width, height)``.
        pixel_stride: one ray every ``pixel_stride`` pixels in u and v (8 px ~ one 0.4 m voxel at
            60 m for nuScenes' 1266 px focal length).
        max_range: ray length [m].

    Returns:
        (X, Y, Z) uint8 mask.
    """
    occ = np.asarray(occupied, bool).reshape(-1)
    vis = np.zeros(spec.num_voxels, bool)
    for K, T, w, h in cameras:
        u, v = np.meshgrid(np.arange(0, w, pixel_stride) + 0.5 * pixel_stride - 0.5,
                           np.arange(0, h, pixel_stride) + 0.5 * pixel_stride - 0.5)
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
        rays = pix @ np.linalg.inv(K).T @ np.asarray(T)[:3, :3].T
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        origin = np.asarray(T)[:3, 3]
        L = _clip_length(spec, origin[None], np.full(len(rays), max_range))
        for _, k, flat, inside in march_rays(spec, np.broadcast_to(origin, rays.shape), rays, L):
            hit = inside & occ[np.where(inside, flat, 0)]
            first = np.where(hit.any(1), hit.argmax(1), hit.shape[1])
            seen = inside & (k <= first[:, None])
            vis[flat[seen]] = True
    return vis.reshape(spec.dims).astype(np.uint8)


def points_in_boxes(points, boxes) -> np.ndarray:
    """Index of the box containing each point (-1 for none; the last containing box wins).

    Args:
        points: (N, 3) [m] in the boxes' frame.
        boxes: :class:`nuscenes_io.GTBox` list (``center``, ``size`` l/w/h, ``rotation`` in that frame).

    Returns:
        (N,) int64.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    out = np.full(len(p), -1, np.int64)
    for i, b in enumerate(boxes):
        local = (p - b.center) @ np.asarray(b.rotation)
        inside = np.all(np.abs(local) <= np.asarray(b.size) / 2, axis=1)
        out[inside] = i
    return out


def keyframe_occupancy_gt(keyframe, spec: VoxelGridSpec = OCC3D_SPEC, pixel_stride: int = 8) -> OccupancyGT:
    """GT occupancy of a loaded nuScenes keyframe (LiDAR + 3D boxes), see the module docstring.

    Args:
        keyframe: :class:`nuscenes_io.Keyframe` with ``boxes`` (may be empty: then all ``others``).
        spec: grid in ``base_link`` at the LiDAR timestamp (default Occ3D's).
        pixel_stride: camera ray spacing for ``mask_camera``.

    Returns:
        :class:`OccupancyGT`.
    """
    lidar = keyframe.lidar
    pts = transform_points(lidar.T_base_lidar, lidar.points[:, :3])
    lo, hi = np.asarray(EGO_BOX[0]), np.asarray(EGO_BOX[1])
    pts = pts[~np.all((pts > lo) & (pts < hi), axis=1)]
    box_idx = points_in_boxes(pts, keyframe.boxes)
    box_cls = np.array([OCC3D_CLASSES.index(b.category) if b.category in OCC3D_CLASSES else 0
                        for b in keyframe.boxes] + [0], np.int64)
    labels = box_cls[box_idx]  # index -1 -> the trailing 0 (others)
    sem, mask_lidar = occupancy_from_points(spec, pts, labels, lidar.T_base_lidar[:3, 3])
    T_base_map = invert_transform(lidar.T_map_base)
    cams = [(c.K, T_base_map @ c.T_map_cam, c.width, c.height) for c in keyframe.cameras.values()]
    occupied = (sem != FREE_LABEL) & (sem != IGNORE_LABEL)
    mask_camera = camera_visibility(spec, occupied, cams, pixel_stride)
    return OccupancyGT(spec, sem, mask_lidar, mask_camera)
