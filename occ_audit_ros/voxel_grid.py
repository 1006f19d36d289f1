"""Regular axis-aligned voxel grids and sparse semantic occupancy on them (ROS-free).

Index convention (also the one of ``msg/SemanticVoxelGrid.msg``): voxel ``(ix, iy, iz)`` covers
``[lower + (ix, iy, iz) * voxel_size, lower + (ix + 1, iy + 1, iz + 1) * voxel_size)`` and has the
flat C-order index ``(ix * ny + iy) * nz + iz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

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
