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

Every backend implements :class:`Backend` (frames in, semantic voxels out, the grid it publishes,
its model name, whether its weights are random, its timed stages, label changes). Optional
capabilities are small runtime-checkable protocols, found with ``isinstance`` rather than by
model name: :class:`UsesRelevancy` (a relevancy extractor whose settings change at run time),
:class:`HiddenObjectQueries` (VOOL queries), :class:`Reconfigurable` (run-time changes of the
model's own config). :func:`create_backend` builds one from the :data:`BACKENDS` registry, keyed by
the ``model`` value, from typed configs (:class:`~occ_audit_ros.pipeline.PipelineConfig`,
:class:`SemAbsBackendConfig`, :class:`AgoBackendConfig`); ROS parameters are mapped to these on the
ROS side (``occ_audit_ros.nodes.backend_params``).

Frames: the SemAbs workspace is an axis-aligned cube of the checkpoint's size (2 m for the shipped
ones), z up, whose centre is placed at ``workspace_center`` in ``target_frame`` with axes parallel
to it (REP-103: x forward, y left, z up). So ``T_ws_target`` is a pure translation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from occ_audit_ros import paths
from occ_audit_ros.clip_model import ClipBundle
from occ_audit_ros.model_files import ModelFileError, check_ago_checkpoint, check_semabs_checkpoint
from occ_audit_ros.pipeline import (CameraInput, PerceptionPipeline, PipelineConfig, PipelineResult, UnusableCameras,
                                    checked_labels, screen_cameras)
from occ_audit_ros.relevancy import RelevancyConfig, RelevancyExtractor, as_rgb_uint8
from occ_audit_ros.voxel_grid import SemanticVoxels, VoxelGridSpec

__all__ = ["Backend", "UsesRelevancy", "HiddenObjectQueries", "Reconfigurable", "HiddenObjectAnswer",
           "SemAbsBackendConfig", "AgoBackendConfig", "SemAbsBackend", "AgoBackend", "BackendKind", "BACKENDS",
           "create_backend", "resolve_checkpoint"]


def resolve_checkpoint(path: str) -> str:
    """A checkpoint path as given when it exists (absolute or relative to the working directory),
    else the file shipped with the package (``paths.resource``); '' stays ''.

    Raises:
        FileNotFoundError: when neither exists.
    """
    if not path or Path(path).exists():
        return path
    return str(paths.resource(path))


def _checked(path: str, kind: str) -> str:
    """``path`` resolved (:func:`resolve_checkpoint`) and checked by ``occ_audit_ros.model_files``
    (``kind``: ``ovssc`` / ``vool`` SemAbs checkpoint, ``ago`` run or checkpoint directory); '' stays ''.

    Raises:
        ModelFileError: missing, not safetensors (e.g. a pickle), not that kind of checkpoint, or
            tensors whose keys, shapes, dtypes or values do not fit the network (names the file).
    """
    if not path:
        return path
    try:
        resolved = resolve_checkpoint(path)
    except FileNotFoundError as err:
        raise ModelFileError(path, f"does not exist (neither in the working directory nor shipped: {err})") from err
    if kind == "ago":
        check_ago_checkpoint(resolved)
    else:
        check_semabs_checkpoint(resolved, task=kind)
    return resolved


@dataclass
class SemAbsBackendConfig:
    """Settings of :class:`SemAbsBackend` (node parameters ``semabs.*``).

    Attributes:
        ovssc_checkpoint: OVSSC safetensors checkpoint; its card's cutoff is the "empty" threshold.
            Relative paths: working directory, then the package share (:func:`resolve_checkpoint`).
        vool_checkpoint: VOOL checkpoint, or "" (hidden-object queries are then refused).
        camera: the camera whose RGB-D view is completed (SemAbs is single-view).
        workspace_center: (3,) centre of the SemAbs workspace cube in ``target_frame`` [m].
        num_points: input points sampled from the relevancy cloud (SemAbs: 80,000; the shipped
            checkpoints: 6000).
        min_probability: VOOL answers list voxels with at least this probability, in [0, 1].

    Raises:
        ValueError: a workspace centre without 3 finite values, ``num_points`` < 1 or
            ``min_probability`` outside [0, 1].
    """

    ovssc_checkpoint: str = "models/semabs/ovssc_sim.safetensors"
    vool_checkpoint: str = "models/semabs/vool_sim.safetensors"
    camera: str = "CAM_FRONT"
    workspace_center: tuple[float, float, float] = (6.0, 0.0, 0.9)
    num_points: int = 6000
    min_probability: float = 0.1

    def __post_init__(self) -> None:
        center = tuple(float(v) for v in self.workspace_center)
        if len(center) != 3 or not np.all(np.isfinite(center)):
            raise ValueError(f"workspace_center must be 3 finite values [m], got {self.workspace_center!r}")
        self.workspace_center = center
        if int(self.num_points) < 1:
            raise ValueError(f"num_points must be >= 1, got {self.num_points!r}")
        self.num_points = int(self.num_points)
        if not 0.0 <= float(self.min_probability) <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], got {self.min_probability!r}")
        self.min_probability = float(self.min_probability)


@dataclass
class AgoBackendConfig:
    """Settings of :class:`AgoBackend` (node parameters ``ago.*``).

    Attributes:
        checkpoint: run directory (its ``latest``) or checkpoint directory of ``training/train_ago.py``
            (relative paths as :func:`resolve_checkpoint`).
        identifier: open-world identifier ``entropy`` (AGO Eq. 9), ``confidence`` or ``none``.

    Raises:
        ValueError: an empty checkpoint or an unknown identifier.
    """

    checkpoint: str
    identifier: str = "entropy"

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("the AGO backend needs a checkpoint (a run directory of training/train_ago.py)")
        if self.identifier not in ("entropy", "confidence", "none"):
            raise ValueError(f"identifier must be 'entropy', 'confidence' or 'none', got {self.identifier!r}")


@runtime_checkable
class Backend(Protocol):
    """What turns one synchronised camera set into semantic voxels (every model implements it).

    Attributes:
        stages: names of the timed stages of :meth:`process` (keys of ``PipelineResult.timings_s``
            besides ``total``), in order.
        grid: the voxel grid the results are on, in ``target_frame``.
        model_name: what computed the grid (CLIP id, checkpoint path), copied into every output.
        random_weights: True when any network has random weights (every output is then marked).
    """

    stages: tuple[str, ...]

    @property
    def grid(self) -> VoxelGridSpec:
        """The published voxel grid."""

    @property
    def model_name(self) -> str:
        """Model id or checkpoint path."""

    @property
    def random_weights(self) -> bool:
        """True when the outputs come from random weights."""

    def process(self, cameras: Sequence[CameraInput]) -> PipelineResult:
        """One frame: ``cameras`` (poses into ``target_frame``) -> :class:`PipelineResult` on :attr:`grid`.

        Raises:
            ValueError: on unusable camera input (the frame is skipped, the backend stays usable).
        """

    def set_labels(self, labels: Sequence[str]) -> None:
        """Replace the label set / text vocabulary from the next frame on (call between frames).

        Raises:
            ValueError: on an empty list or an empty label.
        """


@runtime_checkable
class UsesRelevancy(Protocol):
    """A backend built on a CLIP relevancy extractor whose settings may change at run time."""

    def set_relevancy(self, config: RelevancyConfig) -> None:
        """Use ``config`` (a new extractor) from the next frame on (call between frames)."""


@runtime_checkable
class HiddenObjectQueries(Protocol):
    """A backend that answers VOOL hidden-object queries on its last processed frame."""

    def hidden_object(self, target: str, relation: str, reference: str) -> "HiddenObjectAnswer":
        """Answer "<target> <relation> <reference>"; never raises (errors come back in ``error``)."""


@runtime_checkable
class Reconfigurable(Protocol):
    """A backend whose own config (e.g. :class:`SemAbsBackendConfig`) has fields changeable at run time."""

    def reconfigure(self, config: Any) -> None:
        """Apply the run-time fields of ``config`` (the model's config type; other fields need a restart).

        Raises:
            TypeError: for a config of another type. ValueError: for a changed restart-only field.
        """


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
        min_probability: the threshold ``indices`` were selected with.
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
    min_probability: float = 0.0

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

    Implements :class:`Backend`, :class:`UsesRelevancy`, :class:`HiddenObjectQueries` and
    :class:`Reconfigurable` (``min_probability``).

    Args:
        clip: loaded CLIP (``clip_model.load_clip``); its random weights mark every output.
        config: pipeline config: labels, relevancy settings, grid (``target_frame``), depth range.
            Shared, not copied: :meth:`set_labels` and :meth:`set_relevancy` write into it.
        semabs: :class:`SemAbsBackendConfig` (checkpoints, camera, workspace centre, points, threshold).
        device: torch device of the 3D networks.

    Raises:
        ModelFileError (a ValueError naming the file): missing, pickled, truncated, wrong-task or
            inconsistent checkpoints (keys, shapes, dtypes, non-finite weights), checked before any
            network is built (``occ_audit_ros.model_files``); ValueError when the grid has no voxel
            inside the workspace.
    """

    stages = ("relevancy", "semabs_cloud_and_network")

    def __init__(self, clip: ClipBundle, config: PipelineConfig, semabs: SemAbsBackendConfig,
                 device: str = "cpu") -> None:
        from occ_audit_ros.semabs.inference import SemAbsPredictor

        self.clip = clip
        self.config = config
        self.semabs = semabs
        self.camera = semabs.camera
        self.min_probability = float(semabs.min_probability)
        self.extractor = RelevancyExtractor(clip, config.relevancy)
        self.relevancy = _TimedRelevancy(self.extractor)
        ovssc, vool = _checked(semabs.ovssc_checkpoint, "ovssc"), _checked(semabs.vool_checkpoint, "vool")
        self.predictor = SemAbsPredictor.from_checkpoints(
            self.relevancy, ovssc_path=ovssc or None, vool_path=vool or None,
            num_points=semabs.num_points, random_weights=self.clip.random_weights, device=device)
        self.model_name = str(ovssc or vool)
        ws = self.predictor.workspace
        lower, upper = np.asarray(ws.lower, np.float64), np.asarray(ws.upper, np.float64)
        # target -> workspace: a translation taking workspace_center onto the workspace cube's centre
        self.T_ws_target = np.eye(4)
        self.T_ws_target[:3, 3] = (lower + upper) / 2 - np.asarray(semabs.workspace_center, np.float64)
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
                             f"(workspace_center places it at {ws.lower}..{ws.upper} shifted by "
                             f"{(-self.T_ws_target[:3, 3]).tolist()} m in the grid's frame)")
        self.flat = flat[inside].astype(np.uint32)
        self.queries_ws = centers[inside].astype(np.float32)

    def set_relevancy(self, config: RelevancyConfig) -> None:
        """Use relevancy settings ``config`` from the next frame on (run-time preset change)."""
        self.config.relevancy = config
        self.extractor = RelevancyExtractor(self.clip, config)
        self.relevancy.extractor = self.extractor

    def set_labels(self, labels: Sequence[str]) -> None:
        """Replace the label set (OVSSC labels, VOOL context labels) from the next frame on.

        Raises:
            ValueError: on an empty list or an empty label.
        """
        self.config.labels = checked_labels(labels)

    def reconfigure(self, config: SemAbsBackendConfig) -> None:
        """Apply ``config.min_probability`` (the only run-time field) to the next hidden-object answers.

        Raises:
            TypeError: for a config that is not a :class:`SemAbsBackendConfig`.
            ValueError: when a field other than ``min_probability`` differs (those need a restart).
        """
        if not isinstance(config, SemAbsBackendConfig):
            raise TypeError(f"SemAbsBackend.reconfigure needs a SemAbsBackendConfig, got {type(config).__name__}")
        changed = [f for f in ("ovssc_checkpoint", "vool_checkpoint", "camera", "workspace_center", "num_points")
                   if getattr(config, f) != getattr(self.semabs, f)]
        if changed:
            raise ValueError(f"{changed} take effect only at start: restart")
        self.semabs = config
        self.min_probability = config.min_probability

    def _view(self, cameras: Sequence[CameraInput]):
        cam = next((c for c in cameras if c.channel == self.camera), None)
        if cam is None:
            raise ValueError(f"SemAbs camera {self.camera!r} is not among the cameras {[c.channel for c in cameras]}")
        _, issues = screen_cameras([cam], self.config.min_depth_m, self.config.max_depth_m)
        if issues:  # single view: unregistered, malformed or depth-less, there is nothing to complete
            raise UnusableCameras(issues)
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
            ValueError: when the camera is missing or no valid depth pixel falls inside the workspace;
                :class:`~occ_audit_ros.pipeline.UnusableCameras` when the SemAbs camera has no valid
                depth, unregistered depth or malformed input (``issues`` name it).
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
                                   random_weights=self.clip.random_weights, model=self.model_name,
                                   min_probability=self.min_probability)
        if self.last_view is None:
            empty.error = "no frame processed yet"
            return empty
        empty.stamp_ns = self.last_view[4]
        if self.predictor.vool_model is None:
            empty.error = "no VOOL network loaded (the VOOL checkpoint, semabs.vool_checkpoint, is empty)"
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
                                  random_weights=res.random_weights, model=self.model_name,
                                  min_probability=self.min_probability)


class AgoBackend:
    """An AGO checkpoint on all cameras; the node's labels are its text vocabulary (any words).

    Implements :class:`Backend`. The published grid is the checkpoint's grid (its ``lower``/``upper``/
    ``voxel_size`` replace the node's ``grid.*``), in ``target_frame``; cameras must come in the order
    the model was trained with.

    Args:
        config: :class:`AgoBackendConfig` (checkpoint, open-world identifier).
        labels: vocabulary queried by text.
        target_frame: frame of the camera poses and of the grid (the model was trained in ``base_link``).
        device: torch device.

    Raises:
        ModelFileError (a ValueError naming the file): an unusable checkpoint directory, checked
            before the model is built (``occ_audit_ros.model_files.check_ago_checkpoint``).
    """

    stages = ("ago_network",)

    def __init__(self, config: AgoBackendConfig, labels: Sequence[str], target_frame: str = "base_link",
                 device: str = "cpu") -> None:
        from occ_audit_ros.ago.infer import AgoPredictor

        self.predictor = AgoPredictor.from_checkpoint(
            _checked(config.checkpoint, "ago"), device=device,
            identifier=None if config.identifier == "none" else config.identifier)
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

        Cameras are screened (``pipeline.screen_cameras``): unusable ones are left out and named in
        ``issues``, a camera without valid depth still gives its image (and is named).

        Raises:
            ValueError: on mismatched or malformed camera inputs; ``UnusableCameras`` when no camera
                is usable.
        """
        start = time.perf_counter()
        cameras, issues = screen_cameras(cameras, 1e-6, float("inf"))
        if not cameras:
            raise UnusableCameras(issues)
        res = self.predictor.predict([as_rgb_uint8(c.image) for c in cameras], [c.K for c in cameras],
                                     [c.T_target_cam for c in cameras], [c.depth for c in cameras],
                                     stamp_ns=max(int(c.stamp_ns) for c in cameras))
        res.voxels.frame_id = self.target_frame
        total = time.perf_counter() - start
        return PipelineResult(voxels=res.voxels, relevancy={},
                              points_per_camera={c.channel: int(np.isfinite(c.depth).sum()) for c in cameras},
                              timings_s={"ago_network": total, "total": total}, issues=issues)


@dataclass(frozen=True)
class BackendKind:
    """One value of the node's ``model`` parameter in :data:`BACKENDS`.

    Attributes:
        name: the ``model`` value.
        backend_type: the class implementing :class:`Backend`.
        config_type: its own config dataclass (fields = the names after ``<name>.`` of its node
            parameters), or None when it has none.
        uses_clip: needs a loaded CLIP (``clip_model``); False: brings its own encoders.
        build: ``(PipelineConfig, model config or None, ClipBundle or None, device) -> Backend``.
    """

    name: str
    backend_type: type
    config_type: type | None
    uses_clip: bool
    build: Callable[[PipelineConfig, Any, ClipBundle | None, str], Backend]


#: The models of the perception node (keys: values of its ``model`` parameter).
BACKENDS: dict[str, BackendKind] = {
    "relevancy": BackendKind("relevancy", PerceptionPipeline, None, True,
                             lambda config, _model, clip, _device: PerceptionPipeline(clip, config)),
    "semabs": BackendKind("semabs", SemAbsBackend, SemAbsBackendConfig, True,
                          lambda config, model, clip, device: SemAbsBackend(clip, config, model, device=device)),
    "ago": BackendKind("ago", AgoBackend, AgoBackendConfig, False,
                       lambda config, model, _clip, device: AgoBackend(model, config.labels, config.target_frame,
                                                                       device=device)),
}


def create_backend(model: str, config: PipelineConfig, model_config: Any = None, *,
                   clip: ClipBundle | None = None, device: str = "cpu") -> Backend:
    """Build the backend of ``model`` (a key of :data:`BACKENDS`).

    Args:
        model: ``relevancy``, ``semabs`` or ``ago``.
        config: the shared :class:`~occ_audit_ros.pipeline.PipelineConfig`.
        model_config: an instance of the model's ``config_type`` (None: its defaults; a model whose
            config has required fields, e.g. AGO's checkpoint, then raises).
        clip: loaded CLIP, required when the model's ``uses_clip``.
        device: torch device ("cpu", "cuda", "cuda:N").

    Raises:
        ValueError: unknown model, missing CLIP, missing required config. TypeError: a config of
            another model. ModelFileError (a ValueError naming the file): unusable checkpoints; ValueError:
            a grid outside the model's workspace.
    """
    kind = BACKENDS.get(model)
    if kind is None:
        raise ValueError(f"unknown model {model!r}; models: {list(BACKENDS)}")
    if kind.uses_clip and clip is None:
        raise ValueError(f"model {model!r} needs a loaded CLIP")
    if kind.config_type is None:
        if model_config is not None:
            raise TypeError(f"model {model!r} takes no model config, got {type(model_config).__name__}")
    elif model_config is None:
        try:
            model_config = kind.config_type()
        except TypeError as err:
            raise ValueError(f"model {model!r} needs a model config of type {kind.config_type.__name__}: {err}") from err
    elif not isinstance(model_config, kind.config_type):
        raise TypeError(f"model {model!r} needs a {kind.config_type.__name__}, got {type(model_config).__name__}")
    return kind.build(config, model_config, clip, device)
