"""SemAbs inference: RGB-D + labels -> per-label 3D occupancy (OVSSC) and hidden-object queries (VOOL).

This is the interface a ROS node calls (ROS-free). Frames: the caller gives the camera pose
``T_ws_cam`` of the optical frame in the *workspace frame* (z up, origin and scale matching the
training workspace, SemAbs App. 6.2) and query points in that frame; results are in that frame.
The relevancy of all labels of one call is computed jointly (mean over the label set subtracted,
x50; SemAbs Sec. 3.1), so pass the scene's candidate vocabulary, never a single label.

Two protocols (``SemAbsPredictor(protocol=...)``):

* ``"ours"`` [default]: N points sampled once per call (without replacement when the cloud is large
  enough), one network pass for all labels and queries, default queries at the cell centres of a
  ``grid``^3 voxelisation, the checkpoint card's cutoff.
* ``"reference"``: the released inference script (real-stanford/semantic-abstraction ``visualize.py``):
  every depth pixel is lifted (zero depth included, as the released ``get_pointcloud``) and the points in
  the closed workspace box kept; N points are drawn with replacement by ``np.random.RandomState(seed)``
  (the released code seeds numpy's global generator with the training seed), redrawn for every label /
  description and every chunk of 2^20 queries, each chunk a full network pass; default queries are the
  ``sampling_shape``^3 lattice including the bounds (240^3); OVSSC: a query is empty when every logit is
  below the cutoff (-3.0 for the released model), and on the default lattice the query's voxel is carved
  when it is outside the camera frustum or in front of the observed surface (single-frame TSDF > 0,
  truncation 5 voxels, :func:`reference_tsdf_free`); VOOL: ``VOOLResult.keep`` marks the queries within
  0.15 of the largest logit. Relevancy comes from the caller: use :func:`reference_relevancy_config`
  and query the union of the scene's OVSSC classes, targets and references (``context_labels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from occ_audit_ros.semabs.checkpoint import load_checkpoint
from occ_audit_ros.semabs.model import SemAbsOVSSC, SemAbsVOOL, ovssc_argmax, relation_ids
from occ_audit_ros.semabs.pointcloud import Workspace, lattice_points, relevancy_point_cloud, sample_points

__all__ = ["OVSSCResult", "VOOLResult", "SemAbsPredictor", "PROTOCOLS", "reference_relevancy_config",
           "reference_lattice", "reference_point_cloud", "reference_frustum_mask", "reference_tsdf_free"]

#: Inference protocols of :class:`SemAbsPredictor` (module docstring).
PROTOCOLS: tuple[str, ...] = ("ours", "reference")
#: Prompt of the released inference script.
REFERENCE_PROMPT = "a photograph of a {} in a home."
#: Queries per network pass of the released inference script.
REFERENCE_CHUNK = 2 ** 20
#: VOOL: the released script keeps the queries within this margin of the largest logit.
REFERENCE_VOOL_MARGIN = 0.15


def reference_relevancy_config(crop_resize: str = "torch", **overrides):
    """The relevancy settings of the released inference script: preset ``semabs_reference`` (its tiling,
    flips, 5 jitter copies, float16 accumulation), prompt ``"a photograph of a {} in a home."``, x50,
    mean over the queried set subtracted.

    Args:
        crop_resize: ``"torch"`` (faster) or ``"pil"`` (the released preprocessing, for exact parity).
        overrides: further :class:`~occ_audit_ros.relevancy.RelevancyConfig` fields.

    Returns:
        :class:`~occ_audit_ros.relevancy.RelevancyConfig`.
    """
    from occ_audit_ros.relevancy import RelevancyConfig

    return RelevancyConfig.from_preset("semabs_reference", prompt_template=REFERENCE_PROMPT,
                                       crop_resize=crop_resize, **overrides)


def reference_lattice(workspace: Workspace, shape: int = 240) -> np.ndarray:
    """(shape^3, 3) float32 lattice including the bounds, C order (x, y, z): node i at
    ``lower + i * (upper - lower) / (shape - 1)`` computed in float32 as the released ``get_sample_points``."""
    idx = np.stack(np.meshgrid(*[np.arange(shape, dtype=np.float32)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    lo = np.asarray(workspace.lower, np.float32)
    scale = (np.asarray(workspace.upper, np.float32) - lo) / np.float32(shape - 1)
    return (idx * scale + lo).astype(np.float32)


def reference_point_cloud(relevancy: np.ndarray, depth: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray,
                          workspace: Workspace) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel lifted as the released ``get_pointcloud`` (zero depth included: those land on the
    camera centre), kept when inside the closed workspace box; NaN / inf depth are dropped.

    Args:
        relevancy: (L, h, w) float maps (resized bilinearly to the depth resolution when they differ);
        depth: (H, W) [m]; K: (3, 3); T_ws_cam: (4, 4) camera pose in the workspace frame.

    Returns:
        (P, 3) float32 points [m, workspace frame] and (L, P) float32 relevancy.

    Raises:
        ValueError: on inconsistent shapes.
    """
    rel = np.asarray(relevancy, np.float32)
    rel = rel[None] if rel.ndim == 2 else rel
    depth = np.asarray(depth, np.float64)
    if rel.ndim != 3 or depth.ndim != 2 or np.asarray(K).shape != (3, 3) or np.asarray(T_ws_cam).shape != (4, 4):
        raise ValueError(f"expected relevancy (L, h, w), depth (H, W), K (3, 3), T (4, 4); got {rel.shape}, {depth.shape}")
    H, W = depth.shape
    if rel.shape[1:] != (H, W):
        import torch.nn.functional as F

        rel = F.interpolate(torch.from_numpy(rel)[None], size=(H, W), mode="bilinear", align_corners=False)[0].numpy()
    K = np.asarray(K, np.float64)
    T = np.asarray(T_ws_cam, np.float64)
    u, v = np.meshgrid(np.linspace(0, W - 1, W), np.linspace(0, H - 1, H))
    cam = np.stack([(u - K[0, 2]) * (depth / K[0, 0]), (v - K[1, 2]) * (depth / K[1, 1]), depth], -1).reshape(-1, 3)
    xyz = (T[:3, :3] @ cam.T + T[:3, 3:4]).T.astype(np.float32)
    lo, up = np.asarray(workspace.lower), np.asarray(workspace.upper)
    with np.errstate(invalid="ignore"):
        keep = np.all((xyz >= lo) & (xyz <= up), axis=1)
    return np.ascontiguousarray(xyz[keep]), np.ascontiguousarray(rel.reshape(len(rel), -1)[:, keep])


def reference_frustum_mask(points: np.ndarray, depth_shape: Sequence[int], K: np.ndarray,
                           T_ws_cam: np.ndarray) -> np.ndarray:
    """(N,) bool: points whose projection lies in [0, W) x [0, H) with positive depth (the released
    ``check_pts_in_frustum``; pixel x = fx * X / Z + cx, not rounded)."""
    T = np.linalg.inv(np.asarray(T_ws_cam, np.float64))
    p = np.asarray(points, np.float64).reshape(-1, 3)
    cam = (T[:3, :3] @ p.T + T[:3, 3:4]).T
    K = np.asarray(K, np.float64)
    H, W = depth_shape
    with np.errstate(divide="ignore", invalid="ignore"):
        px = K[0, 0] / cam[:, 2] * cam[:, 0] + K[0, 2]
        py = K[1, 1] / cam[:, 2] * cam[:, 1] + K[1, 2]
        return (px >= 0) & (px < W) & (py >= 0) & (py < H) & (cam[:, 2] > 0)


def reference_tsdf_free(depth: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray, workspace: Workspace,
                        shape: int = 240, chunk: int = REFERENCE_CHUNK) -> np.ndarray:
    """(shape^3,) bool: voxels a single-frame TSDF marks free (TSDF > 0), as the released script.

    TSDF fusion of one frame (Curless & Levoy 1996; the released ``fusion.TSDFVolume``): voxel size
    ``(upper_x - lower_x) / shape``, voxel i at ``lower + i * size`` (not the query lattice's spacing;
    the released script pairs the two volumes by index), projected to the rounded pixel; a voxel with
    depth d > 0 at its pixel and ``d - z >= -5 size`` gets ``clip((d - z) / (5 size), -1, 1)``, the
    others keep -1.

    Raises:
        ValueError: when the TSDF volume would not have shape^3 voxels (a non-cubic workspace).
    """
    lo = np.asarray(workspace.lower, np.float64)
    up = np.asarray(workspace.upper, np.float64)
    size = float((up[0] - lo[0]) / shape)
    dims = np.ceil((up - lo) / size).astype(int)
    if tuple(dims) != (shape,) * 3:
        raise ValueError(f"the reference TSDF volume would have {tuple(dims)} voxels, not {shape}^3: the released "
                         "carving needs a cubic workspace")
    trunc = 5 * size
    depth = np.nan_to_num(np.asarray(depth, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    H, W = depth.shape
    K32 = np.asarray(K, np.float32)
    Tinv = np.linalg.inv(np.asarray(T_ws_cam, np.float64))
    origin = lo.astype(np.float32)
    out = np.zeros(shape ** 3, dtype=bool)
    for start in range(0, shape ** 3, chunk):
        flat = np.arange(start, min(start + chunk, shape ** 3))
        ijk = np.stack(np.unravel_index(flat, (shape,) * 3), axis=-1).astype(np.float32)
        pts = origin + np.float32(size) * ijk
        cam = (Tinv @ np.hstack([pts, np.ones((len(pts), 1), np.float32)]).T).T[:, :3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            px = np.round(cam[:, 0] * K32[0, 0] / z + K32[0, 2])
            py = np.round(cam[:, 1] * K32[1, 1] / z + K32[1, 2])
        valid = (px >= 0) & (px < W) & (py >= 0) & (py < H) & (z > 0)
        d = np.zeros(len(pts))
        d[valid] = depth[py[valid].astype(np.int64), px[valid].astype(np.int64)]
        diff = d - z
        obs = (d > 0) & (diff >= -trunc)
        out[flat] = obs & (np.clip(diff / trunc, -1.0, 1.0) > 0)
    return out

RelevancyFn = Callable[[np.ndarray, Sequence[str]], np.ndarray]


@dataclass
class OVSSCResult:
    """Per-label occupancy at query points (workspace frame).

    Attributes:
        labels: L labels; queries: (M, 3) float32 [m]; logits: (L, M) float32;
        label_ids: (M,) int64 argmax label, -1 where every logit is below ``empty_logit``;
        empty_logit: the cutoff used; random_weights: True if CLIP or the 3D network is random.
    """

    labels: list[str]
    queries: np.ndarray
    logits: np.ndarray
    label_ids: np.ndarray
    empty_logit: float
    random_weights: bool

    @property
    def probabilities(self) -> np.ndarray:
        """(L, M) float32 sigmoid of the logits."""
        return (1.0 / (1.0 + np.exp(-self.logits))).astype(np.float32)


@dataclass
class VOOLResult:
    """Where the (possibly hidden) target may be: logits at query points (workspace frame).

    Attributes:
        target, relation, reference: the description; queries: (M, 3) float32 [m];
        logits: (M,) float32 = cos / temperature; random_weights: as in :class:`OVSSCResult`;
        keep: ``"reference"`` protocol only, (M,) bool queries within 0.15 of the largest logit (the
        released script's output point set), else None.
    """

    target: str
    relation: str
    reference: str
    queries: np.ndarray
    logits: np.ndarray
    random_weights: bool
    keep: np.ndarray | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """(M,) float32 sigmoid of the logits."""
        return (1.0 / (1.0 + np.exp(-self.logits))).astype(np.float32)


class SemAbsPredictor:
    """Runs the SemAbs 3D networks on one RGB-D view.

    Args:
        relevancy: callable ``(image (H, W, 3) uint8, labels) -> (L, h, w)`` relevancy, e.g. an
            :class:`occ_audit_ros.relevancy.RelevancyExtractor`.
        ovssc_model / vool_model: networks (either may be None).
        num_points: N input points sampled from the cloud (SemAbs: 80,000).
        empty_logit: OVSSC "empty" cutoff (the validation-chosen cutoff of the checkpoint's card).
        random_weights: mark results as coming from random weights.
        seed: seed of the point sampling (``"reference"``: of ``np.random.RandomState``, the released
            script's training seed, 0).
        protocol: ``"ours"`` or ``"reference"`` (module docstring).
        sampling_shape: ``"reference"`` default lattice side (240); chunk: queries per pass (2^20).

    Raises:
        ValueError: without a network or for an unknown protocol.
    """

    def __init__(self, relevancy: RelevancyFn, ovssc_model: SemAbsOVSSC | None = None,
                 vool_model: SemAbsVOOL | None = None, num_points: int = 80000, empty_logit: float = 0.0,
                 random_weights: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                 protocol: str = "ours", sampling_shape: int = 240, chunk: int = REFERENCE_CHUNK) -> None:
        if ovssc_model is None and vool_model is None:
            raise ValueError("SemAbsPredictor needs at least one of ovssc_model, vool_model")
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        if sampling_shape < 2 or chunk < 1:
            raise ValueError("sampling_shape must be >= 2 and chunk >= 1")
        self.protocol = protocol
        self.sampling_shape = int(sampling_shape)
        self.chunk = int(chunk)
        self.relevancy = relevancy
        self.device = torch.device(device)
        self.ovssc_model = None if ovssc_model is None else ovssc_model.eval().to(self.device)
        self.vool_model = None if vool_model is None else vool_model.eval().to(self.device)
        self.num_points = int(num_points)
        self.empty_logit = float(empty_logit)
        self.random_weights = bool(random_weights)
        self.seed = seed
        cfg = (self.ovssc_model or self.vool_model).config
        self.workspace: Workspace = cfg.workspace

    @classmethod
    def from_checkpoints(cls, relevancy: RelevancyFn, ovssc_path=None, vool_path=None, **kwargs) -> "SemAbsPredictor":
        """Load networks from safetensors checkpoints (:mod:`.checkpoint`); ``empty_logit`` defaults to
        the OVSSC card's ``cutoff`` and ``num_points`` to the cards' ``num_input_points`` (the point count
        the networks were trained and evaluated with) when present.

        Raises:
            FileNotFoundError / ValueError: from :func:`load_checkpoint`; ValueError on a task mismatch.
        """
        ovssc = vool = None
        if ovssc_path:
            ovssc, task, _, _, card = load_checkpoint(ovssc_path)
            if task != "ovssc":
                raise ValueError(f"{ovssc_path} holds a {task} network, not ovssc")
            kwargs.setdefault("empty_logit", float(card.get("cutoff", 0.0)))
            if "num_input_points" in card:
                kwargs.setdefault("num_points", int(card["num_input_points"]))
        if vool_path:
            vool, task, _, _, vcard = load_checkpoint(vool_path)
            if task != "vool":
                raise ValueError(f"{vool_path} holds a {task} network, not vool")
            if "num_input_points" in vcard:
                kwargs.setdefault("num_points", int(vcard["num_input_points"]))
        return cls(relevancy, ovssc, vool, **kwargs)

    def relevancy_cloud(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray,
                        labels: Sequence[str], relevancy_maps: np.ndarray | None = None,
                        map_labels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Relevancy cloud before sampling: (P, 3) float32 points [m] and (L, P) float32 relevancy of
        ``labels`` (lifted as the protocol says). Arguments and errors as :meth:`cloud`."""
        labels = list(labels)
        if relevancy_maps is None:
            rel = np.asarray(self.relevancy(rgb, labels), dtype=np.float32)
        else:
            have = list(labels if map_labels is None else map_labels)
            maps = np.asarray(relevancy_maps, dtype=np.float32)
            if maps.ndim != 3 or len(maps) != len(have):
                raise ValueError(f"relevancy_maps must be (L, h, w) with L = {len(have)} labels, got {maps.shape}")
            if sorted(have) != sorted(labels):
                raise ValueError(f"relevancy_maps were computed for the label set {have}, but this call needs "
                                 f"{labels} (mean subtraction depends on the whole set)")
            rel = maps[[have.index(lab) for lab in labels]]
        if self.protocol == "reference":
            xyz, r = reference_point_cloud(rel, depth, K, T_ws_cam, self.workspace)
        else:
            xyz, r = relevancy_point_cloud(rel, depth, K, T_ws_cam, self.workspace)
        if len(xyz) == 0:
            raise ValueError("the relevancy cloud is empty (no valid depth inside the workspace)")
        return xyz, r

    def cloud(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray,
              labels: Sequence[str], relevancy_maps: np.ndarray | None = None,
              map_labels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sampled relevancy cloud: (N, 3) float32 points [m, workspace frame] and (L, N) float32 relevancy
        (``"ours"`` protocol; the ``"reference"`` protocol redraws per label and chunk instead).

        Args:
            relevancy_maps: (L', h, w) float32 maps already computed for the label set ``map_labels``
                (default ``labels``) on this ``rgb``; skips the CLIP pass. The rows are reordered to
                ``labels``. Mean subtraction makes a map depend on the whole label set, so the two sets
                must be equal.

        Raises:
            ValueError: when no valid depth pixel falls inside the workspace, or when ``relevancy_maps``
                do not match the label set.
        """
        xyz, r = self.relevancy_cloud(rgb, depth, K, T_ws_cam, labels, relevancy_maps, map_labels)
        return sample_points(xyz, r, self.num_points, np.random.default_rng(self.seed))

    def _reference_logits(self, run, xyz: np.ndarray, rows: Sequence[np.ndarray], q: np.ndarray,
                          rng: np.random.RandomState) -> np.ndarray:
        """Released-script passes: per chunk of queries, fresh N points with replacement, one pass.

        ``run(x (1, N, 3), [ (1, 1, N) per row ], q (1, m, 3)) -> (m,)``; returns (M,) float32."""
        out = np.empty(len(q), np.float32)
        for j in range(0, len(q), self.chunk):
            idx = rng.choice(len(xyz), size=self.num_points)
            x = torch.from_numpy(xyz[idx])[None].to(self.device)
            rs = [torch.from_numpy(np.ascontiguousarray(r[idx]))[None, None].to(self.device) for r in rows]
            qq = torch.from_numpy(q[j:j + self.chunk])[None].to(self.device)
            out[j:j + self.chunk] = run(x, rs, qq).float().cpu().numpy().reshape(-1)
        return out

    @torch.no_grad()
    def ovssc(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray, labels: Sequence[str],
              queries: np.ndarray | None = None, grid: int = 32,
              relevancy_maps: np.ndarray | None = None, context_labels: Sequence[str] = (),
              map_labels: Sequence[str] | None = None) -> OVSSCResult:
        """Per-label occupancy and argmax scene (SemAbs Sec. 3.3).

        Args:
            rgb: (H, W, 3) uint8; depth: (H', W') float [m]; K: (3, 3) depth intrinsics;
            T_ws_cam: (4, 4) camera pose in the workspace frame; labels: L >= 2 labels queried jointly;
            queries: (M, 3) float points [m, workspace frame]; default: centres of a grid^3 voxelisation
                (``"reference"`` protocol: the ``sampling_shape``^3 lattice including the bounds).
            relevancy_maps: maps already computed on ``rgb`` for ``map_labels`` (default ``labels``),
                which must equal ``labels`` + ``context_labels`` (see :meth:`cloud`).
            context_labels: further labels in the relevancy's mean subtraction only (the released script
                queries the union of OVSSC classes and VOOL targets / references).

        Returns:
            :class:`OVSSCResult`; with the ``"reference"`` protocol on the default lattice, ``label_ids``
            is -1 also outside the camera frustum and where the single-frame TSDF is > 0.

        Raises:
            RuntimeError: without an OVSSC network; ValueError: on bad inputs.
        """
        if self.ovssc_model is None:
            raise RuntimeError("no OVSSC network loaded")
        labels = list(labels)
        if self.protocol == "reference":
            return self._ovssc_reference(rgb, depth, K, T_ws_cam, labels, queries, relevancy_maps, context_labels,
                                         map_labels)
        if context_labels or map_labels is not None:
            joint = labels + [c for c in context_labels if c not in labels]
            xyz, r = self.cloud(rgb, depth, K, T_ws_cam, joint, relevancy_maps, map_labels)
            r = np.ascontiguousarray(r[:len(labels)])
            relevancy_maps = None
        q = lattice_points(self.workspace, grid) if queries is None else np.asarray(queries, np.float32).reshape(-1, 3)
        if not (context_labels or map_labels is not None):
            xyz, r = self.cloud(rgb, depth, K, T_ws_cam, labels, relevancy_maps)
        logits = self.ovssc_model(torch.from_numpy(xyz)[None].to(self.device), torch.from_numpy(r)[None].to(self.device),
                                  torch.from_numpy(q)[None].to(self.device))[0]
        ids = ovssc_argmax(logits, self.empty_logit)
        return OVSSCResult(labels, q, logits.cpu().numpy(), ids.cpu().numpy(), self.empty_logit, self.random_weights)

    def _ovssc_reference(self, rgb, depth, K, T_ws_cam, labels, queries, relevancy_maps, context_labels,
                         map_labels) -> OVSSCResult:
        joint = labels + [c for c in context_labels if c not in labels]
        xyz, r = self.relevancy_cloud(rgb, depth, K, T_ws_cam, joint, relevancy_maps, map_labels)
        lattice = queries is None
        q = (reference_lattice(self.workspace, self.sampling_shape) if lattice
             else np.asarray(queries, np.float32).reshape(-1, 3))
        rng = np.random.RandomState(self.seed)
        model = self.ovssc_model

        def run(x, rs, qq):
            return model(x, rs[0], qq)[0, 0]

        logits = np.stack([self._reference_logits(run, xyz, [r[i]], q, rng) for i in range(len(labels))])
        ids = ovssc_argmax(torch.from_numpy(logits), self.empty_logit).numpy()
        carve = ~reference_frustum_mask(q, np.asarray(depth).shape, K, T_ws_cam)
        if lattice:
            carve |= reference_tsdf_free(depth, K, T_ws_cam, self.workspace, self.sampling_shape)
        ids[carve] = -1
        return OVSSCResult(labels, q, logits, ids, self.empty_logit, self.random_weights)

    @torch.no_grad()
    def vool(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray, target: str, relation: str,
             reference: str, context_labels: Sequence[str] = (), queries: np.ndarray | None = None,
             grid: int = 32, relevancy_maps: np.ndarray | None = None,
             map_labels: Sequence[str] | None = None) -> VOOLResult:
        """Hidden-object query <target, relation, reference> (SemAbs Sec. 3.4).

        Args:
            context_labels: further labels queried jointly with target and reference (mean subtraction
                needs a label set; SemAbs uses the scene vocabulary).
            relevancy_maps, map_labels: maps already computed on ``rgb`` for the label set
                ``map_labels``, which must equal {target, reference} + context (see :meth:`cloud`).
            Other arguments as in :meth:`ovssc`.

        Raises:
            RuntimeError: without a VOOL network; ValueError: unknown relation or bad inputs.
        """
        if self.vool_model is None:
            raise RuntimeError("no VOOL network loaded")
        rel_id = relation_ids([relation])
        labels = [target, reference] + [c for c in context_labels if c not in (target, reference)]
        if self.protocol == "reference":
            xyz, r = self.relevancy_cloud(rgb, depth, K, T_ws_cam, labels, relevancy_maps, map_labels)
            q = (reference_lattice(self.workspace, self.sampling_shape) if queries is None
                 else np.asarray(queries, np.float32).reshape(-1, 3))
            model, rid = self.vool_model, rel_id[None].to(self.device)

            def run(x, rs, qq):
                return model(x, rs[0], rs[1], rid, qq)[0, 0]

            logits = self._reference_logits(run, xyz, [r[0], r[1]], q, np.random.RandomState(self.seed))
            keep = logits > logits.max() - REFERENCE_VOOL_MARGIN
            return VOOLResult(target, relation, reference, q, logits, self.random_weights, keep)
        q = lattice_points(self.workspace, grid) if queries is None else np.asarray(queries, np.float32).reshape(-1, 3)
        xyz, r = self.cloud(rgb, depth, K, T_ws_cam, labels, relevancy_maps, map_labels)
        x = torch.from_numpy(xyz)[None].to(self.device)
        logits = self.vool_model(x, torch.from_numpy(r[0:1])[None].to(self.device),
                                 torch.from_numpy(r[1:2])[None].to(self.device), rel_id[None].to(self.device),
                                 torch.from_numpy(q)[None].to(self.device))[0, 0]
        return VOOLResult(target, relation, reference, q, logits.cpu().numpy(), self.random_weights)
