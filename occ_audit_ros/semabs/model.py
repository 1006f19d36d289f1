"""SemAbs networks: OVSSC completion and the VOOL localisation head (Ha & Song, CoRL 2022, Sec. 3.2-3.4).

Data flow (paper Sec. 3.2-3.4 and App. 6.2; released code ``net.py``), per label (OVSSC) or per description (VOOL):

1. per-point encoder: MLP [x, y, z, r] (4) -> 128 -> 128 -> D (LeakyReLU between layers);
2. scatter into a G^3 grid, max (``decoder_convention="ours"``) or mean (``"reference"``, as the
   released code does) (:func:`.pointcloud.scatter_grid`);
3. f_encode: residual 3D U-Net -> Z in R^{D x G^3};
4. f_decode: trilinear ``grid_sample`` of Z at the query q (align_corners=True, border padding; the
   coordinate mapping follows ``decoder_convention``, see :mod:`.pointcloud`), concatenated with the
   normalised coordinate of q, then Linear(D+3, D) -> LeakyReLU -> Linear(D, 1)
   gives the occupancy logit (OVSSC); with ``relevancy_skip`` (our deviation, off by default) the MLP
   also gets the query's cell relevancy (:func:`cell_relevancy`);
5. VOOL: Z_target and Z_ref from the same encoder are concatenated (2D channels), sampled at q with the
   coordinate, Linear(2D+3, 2D) -> LeakyReLU -> Linear(2D, P) (P = 64); the logit is
   cos(phi_q, e_relation) / 0.07 with one learned P-d embedding per spatial relation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from occ_audit_ros.semabs.pointcloud import Workspace, check_convention, normalise_queries, scatter_grid
from occ_audit_ros.semabs.unet3d import ResidualUNet3D

__all__ = ["RELATIONS", "SemAbsConfig", "PointEncoder", "CompletionEncoder", "sample_grid", "cell_relevancy",
           "ImplicitDecoder", "SemAbsOVSSC", "SemAbsVOOL", "ovssc_argmax", "relation_ids"]

#: VOOL spatial relations (paper Sec. 3.4) and the padding token, in embedding-row order.
RELATIONS: tuple[str, ...] = ("in", "on", "behind", "in front of", "on the left of", "on the right of", "[pad]")


def relation_ids(names: Sequence[str]) -> torch.Tensor:
    """Relation names -> (len,) int64 rows of the relation embedding.

    Raises:
        ValueError: for a name not in :data:`RELATIONS`.
    """
    out = []
    for n in names:
        key = str(n).strip().lower()
        if key not in RELATIONS:
            raise ValueError(f"unknown spatial relation {n!r}; expected one of {RELATIONS[:-1]}")
        out.append(RELATIONS.index(key))
    return torch.tensor(out, dtype=torch.long)


@dataclass
class SemAbsConfig:
    """Architecture and geometry of the SemAbs 3D networks.

    Attributes (paper/code defaults in brackets):
        lower, upper: workspace corners in the workspace frame [m] [(-1, -1, -0.1), (1, 1, 1.9)].
        grid: G lattice nodes per axis [128]; must be divisible by 2^(unet_levels - 1).
        unet_levels [6], unet_f_maps [16], unet_groups [8]: residual U-Net.
        feat_dim: D, per-point encoder output and U-Net in/out channels [16].
        point_hidden: hidden width of the per-point encoder [128].
        concat_xyz: concatenate the normalised query coordinate before the decoder MLP [True].
        decoder_convention: ``"ours"`` [default; our simulator networks were trained with it] or
            ``"reference"`` (the released code and the released models; needed to run an imported
            checkpoint). It sets four behaviours together: scatter mean vs max, unflipped vs flipped
            ``grid_sample`` coordinates, clamped vs unclamped node index, division by G vs G - 1 (table
            in :mod:`.pointcloud`). ``"reference"`` sets ``reference_query_scaling`` to True.
        reference_query_scaling: with ``"ours"``, divide the node index by G instead of G - 1 [False].
            Only one of the four behaviours: alone it does NOT reproduce the released code (use
            ``decoder_convention="reference"``).
        pointing_dim: VOOL pointing embedding size P [64]; temperature: cosine temperature [0.07].
        relevancy_skip: OVSSC only, our deviation [False]: the decoder MLP also receives the
            query's :func:`cell_relevancy` (2 more inputs), a direct path for the raw relevancy that the
            U-Net's smoothing loses on objects of one or two cells. VOOL raises ValueError with it.
        relevancy_skip_scale: both skip inputs are multiplied by this [1.0]. Under AdamW a weight moves
            about ``lr`` per step whatever its input's size, so this sets how far the zero-initialised
            skip weights of a short fine-tune can move the logit (simulated relevancy is ~0.1-0.4).
    """

    lower: tuple[float, float, float] = (-1.0, -1.0, -0.1)
    upper: tuple[float, float, float] = (1.0, 1.0, 1.9)
    grid: int = 128
    unet_levels: int = 6
    unet_f_maps: int = 16
    unet_groups: int = 8
    feat_dim: int = 16
    point_hidden: int = 128
    concat_xyz: bool = True
    reference_query_scaling: bool = False
    decoder_convention: str = "ours"
    pointing_dim: int = 64
    temperature: float = 0.07
    relevancy_skip: bool = False
    relevancy_skip_scale: float = 1.0

    def __post_init__(self) -> None:
        self.lower = tuple(float(v) for v in self.lower)
        self.upper = tuple(float(v) for v in self.upper)
        Workspace(self.lower, self.upper)
        check_convention(self.decoder_convention)
        if self.decoder_convention == "reference":
            self.reference_query_scaling = True
        k = 2 ** (self.unet_levels - 1)
        if self.grid < 2 or self.grid % k:
            raise ValueError(f"grid {self.grid} must be >= 2 and divisible by 2^(unet_levels-1) = {k}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not self.relevancy_skip_scale > 0:
            raise ValueError("relevancy_skip_scale must be > 0")

    @property
    def workspace(self) -> Workspace:
        """The workspace box."""
        return Workspace(self.lower, self.upper)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SemAbsConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SemAbsConfig keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class PointEncoder(nn.Sequential):
    """Per-point MLP [x, y, z, r] -> hidden -> hidden -> D (LeakyReLU between layers; SemAbs App. 6.2).

    Shapes: (..., 4) float (x, y, z in the workspace frame [m], r unitless) -> (..., D) float.
    """

    def __init__(self, hidden: int = 128, out: int = 16) -> None:
        super().__init__(nn.Linear(4, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, out))


class CompletionEncoder(nn.Module):
    """Relevancy cloud -> feature volume Z (per-point encoder, scatter (max, or mean with the
    ``"reference"`` convention), residual 3D U-Net).

    Args:
        config: :class:`SemAbsConfig`.
    """

    def __init__(self, config: SemAbsConfig) -> None:
        super().__init__()
        self.config = config
        self.point_encoder = PointEncoder(config.point_hidden, config.feat_dim)
        self.unet = ResidualUNet3D(config.feat_dim, config.feat_dim, config.unet_f_maps, config.unet_levels,
                                   config.unet_groups)

    def forward(self, xyz: torch.Tensor, relevancy: torch.Tensor) -> torch.Tensor:
        """Encode relevancy clouds that share their points.

        Args:
            xyz: (B, N, 3) float points in the workspace frame [m].
            relevancy: (B, L, N) float relevancy of L labels on those points.

        Returns:
            (B * L, D, G, G, G) float feature volumes, label-major within each scene.

        Raises:
            ValueError: on mismatching shapes.
        """
        if xyz.ndim != 3 or relevancy.ndim != 3 or relevancy.shape[0] != xyz.shape[0] or relevancy.shape[2] != xyz.shape[1]:
            raise ValueError(f"expected xyz (B, N, 3) and relevancy (B, L, N), got {tuple(xyz.shape)}, {tuple(relevancy.shape)}")
        B, L, N = relevancy.shape
        pts = xyz[:, None].expand(B, L, N, 3).reshape(B * L, N, 3)
        feats = self.point_encoder(torch.cat([pts, relevancy.reshape(B * L, N, 1)], dim=-1))
        reduce = "mean" if self.config.decoder_convention == "reference" else "max"
        vol = scatter_grid(pts, feats, self.config.workspace, self.config.grid, reduce)
        return self.unet(vol)


def sample_grid(volume: torch.Tensor, queries: torch.Tensor, workspace: Workspace, concat_xyz: bool = True,
                reference_scaling: bool = False, convention: str = "ours") -> torch.Tensor:
    """Trilinear features of a volume at query points (SemAbs f_decode input).

    Args:
        volume: (B, C, G, G, G) float, axis order (x, y, z) (as produced by the scatter).
        queries: (B, M, 3) float points in the workspace frame [m].
        workspace: bounds of the lattice (node 0 on ``lower``, node G - 1 on ``upper``).
        concat_xyz: append the normalised coordinate of each query (as given to ``grid_sample``, before
            any flip).
        reference_scaling, convention: see :func:`.pointcloud.normalise_queries`. With ``"reference"``
            the coordinates go to ``grid_sample`` unflipped, so a query's x indexes the volume's last
            axis, as in the released code (a transposed lookup its models were trained with).

    Returns:
        (B, M, C [+ 3]) float; outside the workspace the border value is used (padding "border").

    Raises:
        ValueError: for an unknown convention.
    """
    B, C = volume.shape[:2]
    g = normalise_queries(queries, workspace, reference_scaling, volume.shape[-1], convention)
    # grid_sample's last grid axis indexes (W, H, D) = volume dims (4, 3, 2) = (z, y, x).
    grid = (g if convention == "reference" else g.flip(-1)).reshape(B, -1, 1, 1, 3)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)
    out = out.reshape(B, C, -1).transpose(1, 2)
    return torch.cat([out, g], dim=-1) if concat_xyz else out


def cell_relevancy(xyz: torch.Tensor, relevancy: torch.Tensor, queries: torch.Tensor, workspace: Workspace,
                   grid: int) -> torch.Tensor:
    """Per query, the largest relevancy of its label among the input points in the query's cell.

    Cells split the workspace into ``grid``^3 boxes, cell ``floor((p - lower) / (upper - lower) * grid)``
    (clamped; the convention of :func:`.metrics.voxel_max`, so with grid 32 these are the evaluation
    cells). It is the OVSSC baseline's score (:func:`.baselines.relevancy_cloud_scores`) as a network
    input. Our deviation from SemAbs (``SemAbsConfig.relevancy_skip``); carries no gradient.

    Args:
        xyz: (B, N, 3) float input points in the workspace frame [m]; points outside the box are ignored.
        relevancy: (B, L, N) float relevancy per label (unitless).
        queries: (B, L, M, 3) float query points [m].
        workspace: the box; grid: cells per axis.

    Returns:
        (B, L, M, 2) float: [cell relevancy (0 where the cell holds no input point), 1.0 if it holds one].
    """
    B, L, N = relevancy.shape
    lo, up = workspace.tensors(xyz.device, xyz.dtype)

    def cell(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside = ((p >= lo) & (p <= up)).all(-1)
        ijk = ((p - lo) / (up - lo) * grid).floor().clamp(0, grid - 1).long()
        return (ijk[..., 0] * grid + ijk[..., 1]) * grid + ijk[..., 2], inside

    pc, p_in = cell(xyz.detach())                                     # (B, N)
    r = torch.where(p_in[:, None], relevancy.detach(), torch.full_like(relevancy, float("-inf")))
    vox = torch.full((B, L, grid ** 3), float("-inf"), device=r.device, dtype=r.dtype)
    vox = vox.scatter_reduce(2, pc[:, None].expand(B, L, N), r, reduce="amax", include_self=True)
    qc, q_in = cell(queries.detach())                                 # (B, L, M)
    rq = vox.gather(2, qc.reshape(B, L, -1))
    has = torch.isfinite(rq) & q_in.reshape(B, L, -1)
    return torch.stack([torch.where(has, rq, torch.zeros_like(rq)), has.to(rq.dtype)], dim=-1)


class ImplicitDecoder(nn.Sequential):
    """Linear(C [+3] [+extra], C) -> LeakyReLU -> Linear(C, out) (SemAbs "2-layer MLP" decoders).

    ``extra`` inputs (default 0) are appended after the features and the coordinate.
    """

    def __init__(self, channels: int, out: int, concat_xyz: bool = True, extra: int = 0) -> None:
        super().__init__(nn.Linear(channels + 3 * int(concat_xyz) + extra, channels), nn.LeakyReLU(),
                         nn.Linear(channels, out))


class SemAbsOVSSC(nn.Module):
    """Open-vocabulary semantic scene completion network (SemAbs Sec. 3.3), one pass per label.

    Args:
        config: :class:`SemAbsConfig`.
    """

    def __init__(self, config: SemAbsConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = CompletionEncoder(config)
        self.decoder = ImplicitDecoder(config.feat_dim, 1, config.concat_xyz, 2 * int(config.relevancy_skip))

    def encode(self, xyz: torch.Tensor, relevancy: torch.Tensor) -> torch.Tensor:
        """(B, N, 3), (B, L, N) -> (B * L, D, G, G, G) feature volumes (see :class:`CompletionEncoder`)."""
        return self.encoder(xyz, relevancy)

    def decode(self, volume: torch.Tensor, queries: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """(B', D, G, G, G) volumes, (B', M, 3) queries [m] [, (B', M, 2) skip inputs = :func:`cell_relevancy`
        times ``relevancy_skip_scale``] -> (B', M) occupancy logits. Raises ValueError when ``skip`` is
        missing or extra for ``relevancy_skip``."""
        if (skip is not None) != self.config.relevancy_skip:
            raise ValueError(f"relevancy_skip={self.config.relevancy_skip} but skip features "
                             f"{'given' if skip is not None else 'missing'}")
        f = sample_grid(volume, queries, self.config.workspace, self.config.concat_xyz,
                        self.config.reference_query_scaling, self.config.decoder_convention)
        if skip is not None:
            f = torch.cat([f, skip.to(f.dtype)], dim=-1)
        return self.decoder(f).squeeze(-1)

    def forward(self, xyz: torch.Tensor, relevancy: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Per-label occupancy logits.

        Args:
            xyz: (B, N, 3) float input points in the workspace frame [m].
            relevancy: (B, L, N) float relevancy per label (unitless).
            queries: (B, L, M, 3) float query points per label [m] (or (B, M, 3), shared by the labels).

        Returns:
            (B, L, M) float occupancy logits (sigmoid -> probability).
        """
        B, L, _ = relevancy.shape
        if queries.ndim == 3:
            queries = queries[:, None].expand(B, L, *queries.shape[1:])
        vol = self.encode(xyz, relevancy)
        skip = None
        if self.config.relevancy_skip:
            skip = cell_relevancy(xyz, relevancy, queries, self.config.workspace, self.config.grid)
            skip = skip.reshape(B * L, -1, 2) * self.config.relevancy_skip_scale
        return self.decode(vol, queries.reshape(B * L, -1, 3), skip).reshape(B, L, -1)


class SemAbsVOOL(nn.Module):
    """Visually obscured object localisation head (SemAbs Sec. 3.4).

    Args:
        config: :class:`SemAbsConfig` (``pointing_dim``, ``temperature`` are used here).

    Raises:
        ValueError: when ``config.relevancy_skip`` is set (an OVSSC-only option).
    """

    def __init__(self, config: SemAbsConfig) -> None:
        super().__init__()
        if config.relevancy_skip:
            raise ValueError("relevancy_skip is an OVSSC option; the VOOL head has no cell-relevancy input")
        self.config = config
        self.encoder = CompletionEncoder(config)
        self.spatial_decoder = ImplicitDecoder(2 * config.feat_dim, config.pointing_dim, config.concat_xyz)
        self.relation_embeddings = nn.Parameter(torch.randn(len(RELATIONS), config.pointing_dim))

    def forward(self, xyz: torch.Tensor, target_relevancy: torch.Tensor, reference_relevancy: torch.Tensor,
                relations: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Logits of "the target is at q" for descriptions <target, relation, reference>.

        Args:
            xyz: (B, N, 3) float input points [m].
            target_relevancy, reference_relevancy: (B, Q, N) float relevancy of each description's
                target and reference label.
            relations: (B, Q) int64 rows of :data:`RELATIONS`.
            queries: (B, Q, M, 3) float query points [m] (or (B, M, 3) shared).

        Returns:
            (B, Q, M) float logits = cos(phi_q, e_relation) / temperature, in [-1/T, 1/T].
        """
        B, Q, _ = target_relevancy.shape
        if queries.ndim == 3:
            queries = queries[:, None].expand(B, Q, *queries.shape[1:])
        z_t = self.encoder(xyz, target_relevancy)
        z_r = self.encoder(xyz, reference_relevancy)
        vol = torch.cat([z_t, z_r], dim=1)
        f = sample_grid(vol, queries.reshape(B * Q, -1, 3), self.config.workspace, self.config.concat_xyz,
                        self.config.reference_query_scaling, self.config.decoder_convention)
        phi = self.spatial_decoder(f)  # (B*Q, M, P)
        e = self.relation_embeddings[relations.reshape(-1)]  # (B*Q, P)
        cos = F.cosine_similarity(phi, e[:, None, :], dim=-1)
        return (cos / self.config.temperature).reshape(B, Q, -1)


def ovssc_argmax(logits: torch.Tensor, empty_logit: float) -> torch.Tensor:
    """Point-wise argmax over labels with an "empty" cutoff (SemAbs Sec. 3.3).

    Args:
        logits: (L, M) float per-label occupancy logits.
        empty_logit: a point whose largest logit is below this value is empty.

    Returns:
        (M,) int64 label index, -1 for empty.
    """
    best, idx = logits.max(dim=0)
    return torch.where(best >= empty_logit, idx, torch.full_like(idx, -1))
