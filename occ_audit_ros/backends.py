"""Learned models behind the perception node, next to the plain relevancy pipeline (ROS-free).

The node's ``model`` parameter picks one backend; each turns one synchronised camera set
(:class:`~occ_audit_ros.pipeline.CameraInput` list, poses into ``target_frame``) into a
:class:`~occ_audit_ros.pipeline.PipelineResult` on a voxel grid in ``target_frame``:

* ``relevancy``: :class:`~occ_audit_ros.pipeline.PerceptionPipeline` (relevancy point cloud fused into
  the grid, no learned 3D part);
* ``semabs``: :class:`SemAbsBackend`, Semantic Abstraction's OVSSC network completing the relevancy
  point cloud of one camera into per-label occupancy of the grid voxels inside the SemAbs workspace
  (Ha & Song 2022, Sec. 3.3), and VOOL hidden-object queries (Sec. 3.4) on the last frame;
* ``ago``: :class:`AgoBackend`, an AGO checkpoint (text-grounded voxel classifier, open-world
  identifier) on all cameras.

Frames: the SemAbs workspace is an axis-aligned cube of the checkpoint's size (2 m for the shipped
ones), z up, whose centre is placed at ``workspace_center`` in ``target_frame`` with axes parallel
to it (REP-103: x forward, y left, z up). So ``T_ws_target`` is a pure translation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from occ_audit_ros.pipeline import CameraInput, PipelineConfig, PipelineResult
from occ_audit_ros.relevancy import RelevancyExtractor, as_rgb_uint8
from occ_audit_ros.voxel_grid import SemanticVoxels, VoxelGridSpec

__all__ = ["HiddenObjectAnswer", "SemAbsBackend", "AgoBackend", "BACKENDS"]

#: Values of the node's ``model`` parameter.
BACKENDS = ("relevancy", "semabs", "ago")


@dataclass
class HiddenObjectAnswer:
    """Answer to a VOOL query "<target> <relation> <reference>" on the published grid.

    Attributes:
        target, relation, reference: the query.
        spec: the grid (same geometry as the published semantic grid).
        frame_id: frame of ``spec`` (``target_frame``).
        indices: (M,) uint32 flat C-order voxel indices (grid voxels inside the SemAbs workspace with
            probability >= the backend's ``min_probability``), ascending.
        probabilities: (M,) float32 P(target in voxel) in [0, 1] (sigmoid of the VOOL logit).
        stamp_ns: stamp of the frame the answer was computed on [ns].
        random_weights: True when CLIP or the 3D network has random weights.
        model: checkpoint path.
        error: empty on success; otherwise why the query could not be answered (then M = 0).
    """

    target: str
    relation: str
    reference: str
    spec: VoxelGridSpec
    frame_id: str
    indices: np.ndarray
    probabilities: np.ndarray
    stamp_ns: int = 0
    random_weights: bool = False
    model: str = ""
    error: str = ""

    def centers(self) -> np.ndarray:
        """(M, 3) float32 voxel centres in ``frame_id`` [m]."""
        return self.spec.voxel_centers(self.indices)


class _TimedRelevancy:
    """Relevancy callable that adds its run time to ``seconds`` (the SemAbs predictor calls it inside)."""

    def __init__(self, extractor: RelevancyExtractor) -> None:
        self.extractor = extractor
        self.seconds = 0.0
        self.last_maps: np.ndarray | None = None  # (L, h, w) float32 maps of the last call

    def __call__(self, image: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            self.last_maps = self.extractor(image, labels)
            return self.last_maps
        finally:
            self.seconds += time.perf_counter() - t0


class SemAbsBackend:
    """Semantic Abstraction OVSSC (per-label occupancy) and VOOL (hidden objects) for the node.

    Args:
        extractor: the relevancy extractor (the node shares its pipeline's, so text embeddings are
            cached once); its CLIP's random weights mark every output.
        config: pipeline config: labels, relevancy settings, grid (``target_frame``), depth range.
        ovssc_checkpoint: OVSSC safetensors checkpoint (``semabs.checkpoint``); its card's cutoff is
            the "empty" threshold.
        vool_checkpoint: VOOL checkpoint, or "" (hidden-object queries are then refused).
        camera: the camera whose RGB-D view is completed (SemAbs is single-view).
        workspace_center: (3,) centre of the SemAbs workspace cube in ``target_frame`` [m].
        num_points: input points sampled from the relevancy cloud (SemAbs: 80,000).
        min_probability: VOOL answers list voxels with at least this probability.
        device: torch device of the 3D networks.

    Raises:
        FileNotFoundError / ValueError: unreadable or wrong-task checkpoints; ValueError when the grid
            has no voxel inside the workspace.
    """

    stages = ("relevancy", "semabs_cloud_and_network")

    def __init__(self, extractor: RelevancyExtractor, config: PipelineConfig, ovssc_checkpoint: str,
                 vool_checkpoint: str = "", camera: str = "CAM_FRONT", workspace_center=(6.0, 0.0, 0.9),
                 num_points: int = 6000, min_probability: float = 0.1, device: str = "cpu") -> None:
        from occ_audit_ros.semabs.inference import SemAbsPredictor

        self.clip = extractor.clip
        self.config = config
        self.camera = camera
        self.min_probability = float(min_probability)
        self.relevancy = _TimedRelevancy(extractor)
        self.predictor = SemAbsPredictor.from_checkpoints(
            self.relevancy, ovssc_path=ovssc_checkpoint or None, vool_path=vool_checkpoint or None,
            num_points=num_points, random_weights=self.clip.random_weights, device=device)
        self.model_name = str(ovssc_checkpoint or vool_checkpoint)
        ws = self.predictor.workspace
        lower, upper = np.asarray(ws.lower, np.float64), np.asarray(ws.upper, np.float64)
        # target -> workspace: a translation taking workspace_center onto the workspace cube's centre
        self.T_ws_target = np.eye(4)
        self.T_ws_target[:3, 3] = (lower + upper) / 2 - np.asarray(workspace_center, np.float64)
        self._set_grid(config.grid)
        self.last_view: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None = None

    @property
    def grid(self) -> VoxelGridSpec:
        """The published grid (``config.grid``; only its voxels inside the workspace are predicted)."""
        return self.config.grid

    @property
    def random_weights(self) -> bool:
        """True when CLIP has random weights."""
        return bool(self.clip.random_weights)

    def _set_grid(self, grid: VoxelGridSpec) -> None:
        """Grid voxels whose centres lie inside the workspace, and those centres in the workspace frame."""
        ws = self.predictor.workspace
        flat = np.arange(grid.num_voxels, dtype=np.int64)
        centers = grid.voxel_centers(flat).astype(np.float64) + self.T_ws_target[:3, 3]
        inside = np.all((centers >= np.asarray(ws.lower)) & (centers < np.asarray(ws.upper)), axis=1)
        if not inside.any():
            raise ValueError(f"no voxel of the grid {grid} lies inside the SemAbs workspace "
                             f"(semabs.workspace_center places it at {ws.lower}..{ws.upper} shifted by "
                             f"{(-self.T_ws_target[:3, 3]).tolist()} m in the grid's frame)")
        self.flat = flat[inside].astype(np.uint32)
        self.queries_ws = centers[inside].astype(np.float32)

    def set_relevancy(self, extractor: RelevancyExtractor) -> None:
        """Swap the relevancy extractor (run-time preset change)."""
        self.relevancy.extractor = extractor

    def _view(self, cameras: Sequence[CameraInput]):
        cam = next((c for c in cameras if c.channel == self.camera), None)
        if cam is None:
            raise ValueError(f"semabs.camera {self.camera!r} is not among the cameras {[c.channel for c in cameras]}")
        depth = np.asarray(cam.depth, np.float32).copy()
        with np.errstate(invalid="ignore"):
            depth[~((depth >= self.config.min_depth_m) & (depth <= self.config.max_depth_m))] = np.nan
        T_ws_cam = self.T_ws_target @ np.asarray(cam.T_target_cam, np.float64)
        return as_rgb_uint8(cam.image), depth, np.asarray(cam.K, np.float64), T_ws_cam, int(cam.stamp_ns)

    def process(self, cameras: Sequence[CameraInput]) -> PipelineResult:
        """OVSSC on the configured camera: occupied grid voxels with their argmax label.

        Returns:
            :class:`PipelineResult`: ``voxels`` in ``target_frame`` (score = sigmoid probability of the
            winning label), ``relevancy``: camera -> (L, h, w) float32 maps, timings ``relevancy`` and
            ``semabs_cloud_and_network`` [s].

        Raises:
            ValueError: when the camera is missing or no valid depth pixel falls inside the workspace.
        """
        start = time.perf_counter()
        self.relevancy.seconds = 0.0
        rgb, depth, K, T_ws_cam, stamp = self._view(cameras)
        labels = list(self.config.labels)
        res = self.predictor.ovssc(rgb, depth, K, T_ws_cam, labels, queries=self.queries_ws)
        occupied = res.label_ids >= 0
        ids = res.label_ids[occupied]
        probs = res.probabilities[:, occupied]
        voxels = SemanticVoxels(spec=self.config.grid, frame_id=self.config.target_frame, labels=labels,
                                indices=self.flat[occupied], label_ids=ids.astype(np.uint16),
                                scores=probs[ids, np.arange(len(ids))].astype(np.float32),
                                random_weights=res.random_weights, model=self.model_name, stamp_ns=stamp)
        self.last_view = (rgb, depth, K, T_ws_cam, stamp)
        total = time.perf_counter() - start
        timings = {"relevancy": self.relevancy.seconds, "semabs_cloud_and_network": total - self.relevancy.seconds,
                   "total": total}
        return PipelineResult(voxels=voxels, relevancy={self.camera: self.relevancy.last_maps},
                              points_per_camera={self.camera: int(np.isfinite(depth).sum())},
                              timings_s=timings)

    def hidden_object(self, target: str, relation: str, reference: str) -> HiddenObjectAnswer:
        """VOOL query on the last processed frame, over the grid voxels inside the workspace.

        The relevancy label set is the target, the reference and the node's labels (mean subtraction
        needs a set). Never raises: an unanswerable query (no frame yet, no VOOL network, unknown
        relation, empty names, no depth in the workspace) comes back with ``error`` set and no voxels.
        """
        empty = HiddenObjectAnswer(target, relation, reference, self.config.grid, self.config.target_frame,
                                   np.zeros(0, np.uint32), np.zeros(0, np.float32),
                                   random_weights=self.clip.random_weights, model=self.model_name)
        if self.last_view is None:
            empty.error = "no frame processed yet"
            return empty
        empty.stamp_ns = self.last_view[4]
        if self.predictor.vool_model is None:
            empty.error = "no VOOL network loaded (semabs.vool_checkpoint is empty)"
            return empty
        if not target.strip() or not reference.strip():
            empty.error = f"target and reference must be non-empty, got {target!r}, {reference!r}"
            return empty
        rgb, depth, K, T_ws_cam, stamp = self.last_view
        try:
            res = self.predictor.vool(rgb, depth, K, T_ws_cam, target, relation, reference,
                                      context_labels=self.config.labels, queries=self.queries_ws)
        except ValueError as err:  # unknown relation, no depth inside the workspace
            empty.error = str(err)
            return empty
        p = res.probabilities
        keep = p >= self.min_probability
        return HiddenObjectAnswer(target, relation, reference, self.config.grid, self.config.target_frame,
                                  self.flat[keep], p[keep].astype(np.float32), stamp_ns=stamp,
                                  random_weights=res.random_weights, model=self.model_name)


class AgoBackend:
    """An AGO checkpoint on all cameras; the node's labels are its text vocabulary (any words).

    The published grid is the checkpoint's grid (its ``lower``/``upper``/``voxel_size`` replace the
    node's ``grid.*``), in ``target_frame``; cameras must come in the order the model was trained with.

    Args:
        checkpoint: run directory (its ``latest``) or checkpoint directory.
        labels: vocabulary queried by text.
        target_frame: frame of the camera poses and of the grid (the model was trained in ``base_link``).
        identifier: open-world identifier ``entropy`` (AGO Eq. 9), ``confidence`` or ``none``.
        device: torch device.

    Raises:
        FileNotFoundError / ValueError: from :meth:`AgoPredictor.from_checkpoint`.
    """

    stages = ("ago_network",)

    def __init__(self, checkpoint: str, labels: Sequence[str], target_frame: str = "base_link",
                 identifier: str = "entropy", device: str = "cpu") -> None:
        from occ_audit_ros.ago.infer import AgoPredictor

        self.predictor = AgoPredictor.from_checkpoint(checkpoint, device=device,
                                                      identifier=None if identifier == "none" else identifier)
        self.target_frame = target_frame
        self.random_weights = self.predictor.random_weights
        self.set_labels(labels)

    @property
    def grid(self) -> VoxelGridSpec:
        """The checkpoint's voxel grid."""
        return self.predictor.spec

    @property
    def model_name(self) -> str:
        """The checkpoint path."""
        return self.predictor.name

    def set_labels(self, labels: Sequence[str]) -> None:
        """Replace the text vocabulary (takes effect on the next frame)."""
        self.predictor.set_vocabulary(list(labels))

    def process(self, cameras: Sequence[CameraInput]) -> PipelineResult:
        """Predict one frame: occupied voxels (label != free) with the probability of their label.

        Raises:
            ValueError: on mismatched or malformed camera inputs.
        """
        start = time.perf_counter()
        res = self.predictor.predict([as_rgb_uint8(c.image) for c in cameras], [c.K for c in cameras],
                                     [c.T_target_cam for c in cameras], [c.depth for c in cameras],
                                     stamp_ns=max(int(c.stamp_ns) for c in cameras))
        res.voxels.frame_id = self.target_frame
        total = time.perf_counter() - start
        return PipelineResult(voxels=res.voxels, relevancy={},
                              points_per_camera={c.channel: int(np.isfinite(c.depth).sum()) for c in cameras},
                              timings_s={"ago_network": total, "total": total})
