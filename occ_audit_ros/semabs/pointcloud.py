"""Relevancy point clouds and their scatter into the SemAbs feature grid (ROS-free).

Semantic Abstraction (Ha & Song, CoRL 2022) Sec. 3.2 and App. 6.2: every depth pixel is lifted to a
3D point in the workspace frame and carries the relevancy r of each queried label, giving a 4-D cloud
{(x, y, z, r)}; N points are sampled uniformly from the in-bounds ones, encoded per point and
scattered into a G^3 grid.

Grid convention (the reference code's ``VirtualGrid``): the grid is a lattice of G nodes per axis with
node i at ``lower + i * (upper - lower) / (G - 1)``, so node 0 sits on ``lower`` and node G - 1 on
``upper``; this is the lattice that ``grid_sample(..., align_corners=True)`` interpolates. A point is
scattered to node ``floor((p - lower) * (G - 1) / (upper - lower))`` (clamped to [0, G - 1]).

Decoder conventions (:data:`DECODER_CONVENTIONS`, ``SemAbsConfig.decoder_convention``). The paper says
"max" (App. 6.2), but the released code (real-stanford/semantic-abstraction, ``net.py``) differs from it
and from our networks in four ways, all of which change the logits:

============================  ===========================================  =====================================
behaviour                     ``"reference"`` (released code, its models)   ``"ours"`` (our simulator networks)
============================  ===========================================  =====================================
point -> node reduction       mean (``VirtualGrid`` defaults to ``"mean"``  max
                              and ``SemAbs3D`` never passes ``"max"`` on)
``grid_sample`` coordinates   (x, y, z) unflipped, so a query's x indexes   flipped to (z, y, x): x indexes
                              the volume's last (z) axis                    the volume's x axis
fractional node index         clamped to [0, G - 1] (the clamped value is   not clamped (border padding only)
                              also the coordinate given to the decoder)
index -> [-1, 1]              divided by G                                  divided by G - 1
============================  ===========================================  =====================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from occ_audit_ros.geometry import backproject_depth, transform_points

__all__ = ["DECODER_CONVENTIONS", "Workspace", "relevancy_point_cloud", "sample_points", "grid_indices",
           "scatter_max_grid", "scatter_grid", "normalise_queries", "lattice_points", "frustum_mask"]

#: Names of the decoder conventions (see the module docstring).
DECODER_CONVENTIONS: tuple[str, ...] = ("ours", "reference")


def check_convention(convention: str) -> str:
    """Return ``convention`` when it names a :data:`DECODER_CONVENTIONS` entry.

    Raises:
        ValueError: for another name.
    """
    if convention not in DECODER_CONVENTIONS:
        raise ValueError(f"unknown decoder convention {convention!r}; expected one of {DECODER_CONVENTIONS}")
    return convention


@dataclass(frozen=True)
class Workspace:
    """Axis-aligned workspace box in the workspace frame (z up) [m].

    SemAbs default (paper App. 6.2): lower (-1, -1, -0.1), upper (1, 1, 1.9).

    Raises:
        ValueError: when ``upper <= lower`` on any axis or a corner does not have 3 finite values.
    """

    lower: tuple[float, float, float] = (-1.0, -1.0, -0.1)
    upper: tuple[float, float, float] = (1.0, 1.0, 1.9)

    def __post_init__(self) -> None:
        lo = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        up = np.asarray(self.upper, dtype=np.float64).reshape(-1)
        if lo.shape != (3,) or up.shape != (3,) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(up))):
            raise ValueError(f"workspace corners must be 3 finite values, got {self.lower}, {self.upper}")
        if np.any(up <= lo):
            raise ValueError(f"workspace upper {self.upper} must exceed lower {self.lower} on every axis")
        object.__setattr__(self, "lower", tuple(float(v) for v in lo))
        object.__setattr__(self, "upper", tuple(float(v) for v in up))

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) points [m] -> (N,) bool, True inside the closed box [lower, upper]."""
        p = np.asarray(points).reshape(-1, 3)
        return np.all((p >= np.asarray(self.lower)) & (p <= np.asarray(self.upper)), axis=1)

    def tensors(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(3,) lower and (3,) upper corners as tensors."""
        return (torch.tensor(self.lower, device=device, dtype=dtype), torch.tensor(self.upper, device=device, dtype=dtype))


def relevancy_point_cloud(relevancy: np.ndarray, depth: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray,
                          workspace: Workspace | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Back-project relevancy maps with depth into the workspace frame (SemAbs Sec. 3.2).

    The maps are resized bilinearly (half-pixel centres) to the depth resolution, every valid depth
    pixel is lifted with ``K`` into the camera optical frame (x right, y down, z forward) and moved into
    the workspace frame with ``T_ws_cam``; points outside ``workspace`` are dropped (when given).

    Args:
        relevancy: (L, h, w) float relevancy per label (unitless, after mean subtraction and x50) or
            (h, w) for one label.
        depth: (H, W) float depth along the optical axis [m]; NaN, inf and <= 0 mean no data.
        K: (3, 3) intrinsics of the depth image [px].
        T_ws_cam: (4, 4) pose of the camera optical frame in the workspace frame (``p_ws = T @ p_cam``).
        workspace: optional bounds; points outside are dropped.

    Returns:
        ``xyz`` (P, 3) float32 in the workspace frame [m] and ``r`` (L, P) float32 relevancy.

    Raises:
        ValueError: on inconsistent shapes.
    """
    rel = np.asarray(relevancy, dtype=np.float32)
    if rel.ndim == 2:
        rel = rel[None]
    depth = np.asarray(depth)
    if rel.ndim != 3 or depth.ndim != 2:
        raise ValueError(f"relevancy must be (L, h, w) and depth (H, W), got {rel.shape} and {depth.shape}")
    if np.asarray(K).shape != (3, 3) or np.asarray(T_ws_cam).shape != (4, 4):
        raise ValueError("K must be (3, 3) and T_ws_cam (4, 4)")
    H, W = depth.shape
    if rel.shape[1:] != (H, W):
        rel = F.interpolate(torch.from_numpy(rel)[None], size=(H, W), mode="bilinear",
                            align_corners=False)[0].numpy()
    pts_cam, uv = backproject_depth(depth, K)
    xyz = transform_points(T_ws_cam, pts_cam).astype(np.float32)
    r = rel[:, uv[:, 1], uv[:, 0]]
    if workspace is not None:
        keep = workspace.contains(xyz)
        xyz, r = xyz[keep], r[:, keep]
    return np.ascontiguousarray(xyz), np.ascontiguousarray(r, dtype=np.float32)


def sample_points(xyz: np.ndarray, r: np.ndarray, num_points: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly sample ``num_points`` points of a relevancy cloud (SemAbs App. 6.2: N = 80,000).

    Without replacement when the cloud has at least ``num_points`` points, with replacement otherwise
    (duplicates do not change a max-scatter).

    Args:
        xyz: (P, 3) float points [m]; r: (L, P) relevancy; num_points: N >= 1; rng: numpy generator.

    Returns:
        (N, 3) float32 points and (L, N) float32 relevancy.

    Raises:
        ValueError: on an empty cloud or a non-positive N.
    """
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    r = np.asarray(r, dtype=np.float32)
    if r.ndim == 1:
        r = r[None]
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if len(xyz) == 0:
        raise ValueError("the relevancy cloud is empty (no valid depth inside the workspace)")
    if r.shape[1] != len(xyz):
        raise ValueError(f"{len(xyz)} points but relevancy of shape {r.shape}")
    idx = rng.choice(len(xyz), size=num_points, replace=len(xyz) < num_points)
    return xyz[idx], r[:, idx]


def grid_indices(xyz: torch.Tensor, workspace: Workspace, grid: int) -> torch.Tensor:
    """Lattice node of each point (the reference's ``VirtualGrid`` convention, see module docstring).

    Args:
        xyz: (..., 3) float points in the workspace frame [m].
        workspace: the bounds; grid: G nodes per axis.

    Returns:
        (..., 3) int64 node indices in [0, G - 1] (points outside are clamped onto the border).
    """
    lo, up = workspace.tensors(xyz.device, xyz.dtype)
    idx = torch.floor((xyz - lo) * ((grid - 1) / (up - lo)))
    return idx.clamp_(0, grid - 1).long()


def scatter_max_grid(xyz: torch.Tensor, features: torch.Tensor, workspace: Workspace, grid: int) -> torch.Tensor:
    """Scatter point features into a dense grid with a max reduction (SemAbs App. 6.2).

    Args:
        xyz: (B, N, 3) float points in the workspace frame [m].
        features: (B, N, C) float per-point features.
        workspace: bounds; grid: G nodes per axis.

    Returns:
        (B, C, G, G, G) float grid, axis order (x, y, z); nodes that receive no point hold 0 (as
        ``torch_scatter.scatter``). Differentiable w.r.t. ``features`` (gradient flows to the maximal
        point of each node). The released reference code reduces with a mean instead (see the module
        docstring and :func:`scatter_grid`).

    Raises:
        ValueError: on mismatching shapes.
    """
    return scatter_grid(xyz, features, workspace, grid, "max")


def scatter_grid(xyz: torch.Tensor, features: torch.Tensor, workspace: Workspace, grid: int,
                 reduce: str = "max") -> torch.Tensor:
    """Scatter point features into a dense G^3 grid with a max or mean reduction.

    ``"mean"`` is the released reference code's reduction (``torch_scatter.scatter(..., reduce="mean")``:
    the mean of the points of a node, 0 where no point falls); ``"max"`` is :func:`scatter_max_grid`.

    Args:
        xyz: (B, N, 3) float points in the workspace frame [m].
        features: (B, N, C) float per-point features.
        workspace: bounds; grid: G nodes per axis; reduce: ``"max"`` or ``"mean"``.

    Returns:
        (B, C, G, G, G) float grid, axis order (x, y, z); empty nodes hold 0. Differentiable w.r.t.
        ``features``.

    Raises:
        ValueError: on mismatching shapes or another ``reduce``.
    """
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    if xyz.ndim != 3 or xyz.shape[-1] != 3 or features.ndim != 3 or features.shape[:2] != xyz.shape[:2]:
        raise ValueError(f"expected xyz (B, N, 3) and features (B, N, C), got {tuple(xyz.shape)}, {tuple(features.shape)}")
    B, N, C = features.shape
    idx = grid_indices(xyz, workspace, grid)
    flat = (idx[..., 0] * grid + idx[..., 1]) * grid + idx[..., 2]  # (B, N)
    out = features.new_zeros(B, grid ** 3, C)
    out = out.scatter_reduce(1, flat[..., None].expand(B, N, C), features, reduce="amax" if reduce == "max" else "mean",
                             include_self=False)
    return out.permute(0, 2, 1).reshape(B, C, grid, grid, grid)


def normalise_queries(xyz: torch.Tensor, workspace: Workspace, reference_scaling: bool = False,
                      grid: int | None = None, convention: str = "ours") -> torch.Tensor:
    """Workspace points -> ``grid_sample`` coordinates (align_corners=True lattice).

    Args:
        xyz: (..., 3) float points [m], axis order (x, y, z).
        workspace: bounds.
        reference_scaling: ``"ours"`` convention only: divide the fractional node index by G instead
            of G - 1 (so ``upper`` maps to 1 - 2/G rather than 1), one of the four behaviours of the
            ``"reference"`` convention; needs ``grid``.
        grid: G nodes per axis (needed by ``reference_scaling`` and the ``"reference"`` convention).
        convention: ``"ours"`` or ``"reference"`` (module docstring): the released code computes the
            fractional node index ``(p - lower) * (G - 1) / (upper - lower)``, clamps it to [0, G - 1]
            and maps it with ``2 * index / G - 1`` (``ImplicitVolumetricDecoder``).

    Returns:
        (..., 3) float coordinates, (x, y, z) order. ``"ours"``: -1 at ``lower`` and +1 at ``upper``
        (unbounded outside); ``"reference"``: in [-1, 1 - 2/G].

    Raises:
        ValueError: for an unknown convention or a missing ``grid``.
    """
    check_convention(convention)
    lo, up = workspace.tensors(xyz.device, xyz.dtype)
    if convention == "reference":
        if grid is None:
            raise ValueError("the reference convention needs the grid size")
        idx = (xyz + (-lo)) * ((grid - 1) / (up - lo))
        return 2.0 * (idx.clamp(0, grid - 1) / grid) - 1.0
    frac = (xyz - lo) / (up - lo)
    if reference_scaling:
        if grid is None:
            raise ValueError("reference_scaling needs the grid size")
        frac = frac * ((grid - 1) / grid)
    return 2.0 * frac - 1.0


def lattice_points(workspace: Workspace, grid: int) -> np.ndarray:
    """(G^3, 3) float32 centres of the cells of a G^3 voxelisation of the workspace, C order (x, y, z).

    Used as dense query points (e.g. the 32^3 evaluation grid or the node's published grid).
    """
    lo, up = np.asarray(workspace.lower), np.asarray(workspace.upper)
    axes = [lo[i] + (np.arange(grid) + 0.5) * (up[i] - lo[i]) / grid for i in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return g.reshape(-1, 3).astype(np.float32)


def frustum_mask(points: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """(N,) bool: workspace points that project inside the image with positive depth.

    SemAbs training ignores query points outside the camera frustum (paper App. 6.4; the released training loss masks them).

    Args:
        points: (N, 3) in the workspace frame [m]; K: (3, 3); T_ws_cam: (4, 4) camera pose;
        image_size: (H, W) [px].
    """
    from occ_audit_ros.geometry import invert_transform, project_points

    pc = transform_points(invert_transform(T_ws_cam), np.asarray(points).reshape(-1, 3))
    uv, z = project_points(K, pc)
    H, W = image_size
    with np.errstate(invalid="ignore"):
        inside = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] < W - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < H - 0.5)
    return inside
