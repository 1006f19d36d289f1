"""Regular axis-aligned voxel grids and sparse semantic occupancy on them (ROS-free).

Index convention (also the one of ``msg/SemanticVoxelGrid.msg``): voxel ``(ix, iy, iz)`` covers
``[lower + (ix, iy, iz) * voxel_size, lower + (ix + 1, iy + 1, iz + 1) * voxel_size)`` and has the
flat C-order index ``(ix * ny + iy) * nz + iz``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VoxelGridSpec:
    """Geometry of a voxel grid in one frame (``base_link`` for the perception node).

    Attributes:
        lower: (3,) minimum corner [m].
        upper: (3,) maximum corner [m]; ``upper - lower`` must be a multiple of ``voxel_size``
            (within 1e-6 m).
        voxel_size: edge length of one cubic voxel [m].

    Raises:
        ValueError: on a non-positive voxel size, ``upper <= lower`` on any axis, or extents that
            are not whole multiples of the voxel size.
    """

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    voxel_size: float

    def __post_init__(self) -> None:
        lower = np.asarray(self.lower, dtype=np.float64)
        upper = np.asarray(self.upper, dtype=np.float64)
        if lower.shape != (3,) or upper.shape != (3,):
            raise ValueError(f"lower and upper must have 3 elements, got {self.lower}, {self.upper}")
        if not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0 m, got {self.voxel_size}")
        if np.any(upper <= lower):
            raise ValueError(f"upper {self.upper} must exceed lower {self.lower} on every axis")
        cells = (upper - lower) / self.voxel_size
        if np.any(np.abs(cells - np.round(cells)) > 1e-6):
            raise ValueError(
                f"grid extent {tuple(upper - lower)} m is not a multiple of voxel_size {self.voxel_size} m"
            )
        object.__setattr__(self, "lower", tuple(float(v) for v in lower))
        object.__setattr__(self, "upper", tuple(float(v) for v in upper))
        object.__setattr__(self, "voxel_size", float(self.voxel_size))

    @property
    def dims(self) -> tuple[int, int, int]:
        """Number of voxels (nx, ny, nz)."""
        cells = (np.asarray(self.upper) - np.asarray(self.lower)) / self.voxel_size
        return tuple(int(round(c)) for c in cells)  # type: ignore[return-value]

    @property
    def num_voxels(self) -> int:
        """nx * ny * nz."""
        nx, ny, nz = self.dims
        return nx * ny * nz

    def point_to_voxel(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voxel coordinates of points.

        Args:
            points: (N, 3) float, in the grid's frame [m].

        Returns:
            ``(ijk, inside)``: (N, 3) int64 voxel coordinates (meaningless where not inside) and
            (N,) bool, True for finite points in ``[lower, upper)``.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        ijk = np.floor((points - np.asarray(self.lower)) / self.voxel_size)
        finite = np.all(np.isfinite(ijk), axis=1)
        ijk = np.where(finite[:, None], ijk, -1).astype(np.int64)
        inside = finite & np.all((ijk >= 0) & (ijk < np.asarray(self.dims)), axis=1)
        return ijk, inside

    def flat_index(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) int voxel coordinates -> (N,) int64 flat C-order indices."""
        ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
        _, ny, nz = self.dims
        return (ijk[:, 0] * ny + ijk[:, 1]) * nz + ijk[:, 2]

    def unravel(self, flat: np.ndarray) -> np.ndarray:
        """(N,) flat indices -> (N, 3) int64 voxel coordinates."""
        return np.stack(np.unravel_index(np.asarray(flat, dtype=np.int64), self.dims), axis=1)

    def voxel_centers(self, flat: np.ndarray) -> np.ndarray:
        """(N,) flat indices -> (N, 3) float32 voxel centres in the grid's frame [m]."""
        ijk = self.unravel(flat)
        return (np.asarray(self.lower) + (ijk + 0.5) * self.voxel_size).astype(np.float32)


@dataclass
class SemanticVoxels:
    """Sparse semantic occupancy: the occupied voxels of a grid, each with a label and a score.

    Attributes:
        spec: the grid geometry.
        frame_id: TF frame of the grid (REP-103).
        labels: label vocabulary; ``label_ids`` index into it.
        indices: (M,) uint32 flat C-order voxel indices, unique, sorted ascending.
        label_ids: (M,) uint16 winning label per voxel.
        scores: (M,) float32 score of the winning label (relevancy, unitless).
        random_weights: True when produced by randomly initialised model weights.
        model: id or path of the model that produced it.
    """

    spec: VoxelGridSpec
    frame_id: str
    labels: list[str]
    indices: np.ndarray
    label_ids: np.ndarray
    scores: np.ndarray
    random_weights: bool = False
    model: str = ""
    stamp_ns: int = 0

    def centers(self) -> np.ndarray:
        """(M, 3) float32 centres of the occupied voxels in ``frame_id`` [m]."""
        return self.spec.voxel_centers(self.indices)

    def counts_per_label(self) -> dict[str, int]:
        """Number of occupied voxels per label (every label listed, zero included)."""
        counts = np.bincount(self.label_ids.astype(np.int64), minlength=len(self.labels))
        return {label: int(counts[i]) for i, label in enumerate(self.labels)}


def scatter_max(spec: VoxelGridSpec, points: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel, per-label maximum of point scores (SemAbs's scatter with max reduction, paper App. 6.2).

    Args:
        spec: the grid.
        points: (N, 3) float points in the grid's frame [m]; points outside the grid or non-finite
            are ignored.
        scores: (N, K) float32 per-label scores of the points (relevancy, unitless).

    Returns:
        ``(flat, max_scores)``: (M,) int64 sorted unique flat indices of the voxels that hold at
        least one point, and (M, K) float32 maximum score per voxel and label.

    Raises:
        ValueError: when ``points`` and ``scores`` disagree in length.
    """
    import torch

    points = np.asarray(points).reshape(-1, 3)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.shape[0] != points.shape[0]:
        raise ValueError(f"{points.shape[0]} points but {scores.shape[0]} score rows")
    ijk, inside = spec.point_to_voxel(points)
    inside &= np.all(np.isfinite(scores), axis=1)
    flat_all = spec.flat_index(ijk[inside])
    flat, inverse = np.unique(flat_all, return_inverse=True)
    out = torch.full((flat.shape[0], scores.shape[1]), -torch.inf)
    index = torch.from_numpy(inverse.reshape(-1)).long()[:, None].expand(-1, scores.shape[1])
    out.scatter_reduce_(0, index, torch.from_numpy(scores[inside]), reduce="amax", include_self=True)
    return flat.astype(np.int64), out.numpy()


def semantic_voxels_from_points(spec: VoxelGridSpec, points: np.ndarray, scores: np.ndarray, labels: list[str],
                                frame_id: str, **meta) -> SemanticVoxels:
    """Semantic occupancy of the voxels hit by labelled points: per voxel, the label with the highest
    max-pooled score (point-wise argmax over labels, SemAbs Sec. 3.3, without the learned completion).

    Args:
        spec: the grid.
        points: (N, 3) points in ``frame_id`` [m].
        scores: (N, K) per-label scores, K = len(labels).
        labels: the label vocabulary.
        frame_id: TF frame of ``points`` and of the result.
        **meta: ``random_weights``, ``model``, ``stamp_ns`` forwarded to :class:`SemanticVoxels`.

    Raises:
        ValueError: when ``scores`` has a column count other than ``len(labels)``.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape != (len(points), len(labels)):
        raise ValueError(f"scores have shape {scores.shape}, expected ({len(points)}, {len(labels)}) for the labels")
    flat, max_scores = scatter_max(spec, points, scores)
    label_ids = np.argmax(max_scores, axis=1) if len(flat) else np.zeros(0, np.int64)
    best = max_scores[np.arange(len(flat)), label_ids] if len(flat) else np.zeros(0, np.float32)
    return SemanticVoxels(spec=spec, frame_id=frame_id, labels=list(labels), indices=flat.astype(np.uint32),
                          label_ids=label_ids.astype(np.uint16), scores=best.astype(np.float32), **meta)
