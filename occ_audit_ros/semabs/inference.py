"""SemAbs inference: RGB-D + labels -> per-label 3D occupancy (OVSSC) and hidden-object queries (VOOL).

This is the interface a ROS node calls (ROS-free). Frames: the caller gives the camera pose
``T_ws_cam`` of the optical frame in the *workspace frame* (z up, origin and scale matching the
training workspace, SemAbs App. 6.2) and query points in that frame; results are in that frame.
The relevancy of all labels of one call is computed jointly (mean over the label set subtracted,
x50; design notes Sec. 2), so pass the scene's candidate vocabulary, never a single label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from occ_audit_ros.semabs.checkpoint import load_checkpoint
from occ_audit_ros.semabs.model import SemAbsOVSSC, SemAbsVOOL, ovssc_argmax, relation_ids
from occ_audit_ros.semabs.pointcloud import Workspace, lattice_points, relevancy_point_cloud, sample_points

__all__ = ["OVSSCResult", "VOOLResult", "SemAbsPredictor"]

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
        logits: (M,) float32 = cos / temperature; random_weights: as in :class:`OVSSCResult`.
    """

    target: str
    relation: str
    reference: str
    queries: np.ndarray
    logits: np.ndarray
    random_weights: bool

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
        seed: seed of the point sampling.
    """

    def __init__(self, relevancy: RelevancyFn, ovssc_model: SemAbsOVSSC | None = None,
                 vool_model: SemAbsVOOL | None = None, num_points: int = 80000, empty_logit: float = 0.0,
                 random_weights: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if ovssc_model is None and vool_model is None:
            raise ValueError("SemAbsPredictor needs at least one of ovssc_model, vool_model")
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

    def cloud(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray,
              labels: Sequence[str], relevancy_maps: np.ndarray | None = None,
              map_labels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sampled relevancy cloud: (N, 3) float32 points [m, workspace frame] and (L, N) float32 relevancy.

        Args:
            relevancy_maps: (L', h, w) float32 maps already computed for the label set ``map_labels``
                (default ``labels``) on this ``rgb``; skips the CLIP pass. The rows are reordered to
                ``labels``. Mean subtraction makes a map depend on the whole label set, so the two sets
                must be equal.

        Raises:
            ValueError: when no valid depth pixel falls inside the workspace, or when ``relevancy_maps``
                do not match the label set.
        """
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
        xyz, r = relevancy_point_cloud(rel, depth, K, T_ws_cam, self.workspace)
        return sample_points(xyz, r, self.num_points, np.random.default_rng(self.seed))

    @torch.no_grad()
    def ovssc(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, T_ws_cam: np.ndarray, labels: Sequence[str],
              queries: np.ndarray | None = None, grid: int = 32,
              relevancy_maps: np.ndarray | None = None) -> OVSSCResult:
        """Per-label occupancy and argmax scene (SemAbs Sec. 3.3).

        Args:
            rgb: (H, W, 3) uint8; depth: (H', W') float [m]; K: (3, 3) depth intrinsics;
            T_ws_cam: (4, 4) camera pose in the workspace frame; labels: L >= 2 labels queried jointly;
            queries: (M, 3) float points [m, workspace frame]; default: centres of a grid^3 voxelisation.
            relevancy_maps: (L, h, w) maps of ``labels`` already computed on ``rgb`` (see :meth:`cloud`).

        Raises:
            RuntimeError: without an OVSSC network; ValueError: on bad inputs.
        """
        if self.ovssc_model is None:
            raise RuntimeError("no OVSSC network loaded")
        labels = list(labels)
        q = lattice_points(self.workspace, grid) if queries is None else np.asarray(queries, np.float32).reshape(-1, 3)
        xyz, r = self.cloud(rgb, depth, K, T_ws_cam, labels, relevancy_maps)
        logits = self.ovssc_model(torch.from_numpy(xyz)[None].to(self.device), torch.from_numpy(r)[None].to(self.device),
                                  torch.from_numpy(q)[None].to(self.device))[0]
        ids = ovssc_argmax(logits, self.empty_logit)
        return OVSSCResult(labels, q, logits.cpu().numpy(), ids.cpu().numpy(), self.empty_logit, self.random_weights)

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
        q = lattice_points(self.workspace, grid) if queries is None else np.asarray(queries, np.float32).reshape(-1, 3)
        xyz, r = self.cloud(rgb, depth, K, T_ws_cam, labels, relevancy_maps, map_labels)
        x = torch.from_numpy(xyz)[None].to(self.device)
        logits = self.vool_model(x, torch.from_numpy(r[0:1])[None].to(self.device),
                                 torch.from_numpy(r[1:2])[None].to(self.device), rel_id[None].to(self.device),
                                 torch.from_numpy(q)[None].to(self.device))[0, 0]
        return VOOLResult(target, relation, reference, q, logits.cpu().numpy(), self.random_weights)
