"""The perception pipeline behind the ROS node: cameras + depth -> semantic voxels (ROS-free).

Per camera: CLIP relevancy maps for the label set (``relevancy.py``), depth back-projected into the
camera's optical frame, each point given the relevancy of its pixel, moved into ``target_frame``;
all cameras' points are fused into one voxel grid with a per-label max, and each occupied voxel takes
the label with the highest relevancy (Semantic Abstraction's relevancy point cloud, paper Sec. 3.2,
without the learned 3D completion, which is a separate module).

:class:`PerceptionPipeline` is the ``relevancy`` backend of the perception node: it implements
``occ_audit_ros.backends.Backend`` (frames in, semantic voxels out) and ``UsesRelevancy``. It takes a
typed :class:`PipelineConfig`; the mapping from ROS parameters lives on the ROS side
(``occ_audit_ros.nodes.backend_params``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from occ_audit_ros.clip_model import ClipBundle
from occ_audit_ros.geometry import backproject_depth, transform_points
from occ_audit_ros.relevancy import RelevancyConfig, RelevancyExtractor, as_rgb_uint8
from occ_audit_ros.voxel_grid import SemanticVoxels, VoxelGridSpec, semantic_voxels_from_points

LOG = logging.getLogger(__name__)


@dataclass
class CameraInput:
    """One synchronised camera frame.

    Attributes:
        channel: camera name, e.g. ``"CAM_FRONT"``.
        image: (H, W, 3) uint8 RGB (other layouts: see ``relevancy.as_rgb_uint8``).
        K: (3, 3) float64 intrinsics of ``image`` and ``depth`` [px].
        T_target_cam: (4, 4) float64 transform from the camera optical frame to ``target_frame``.
        depth: (H, W) float32 depth along the optical axis [m]; NaN/inf/<= 0 = no reading.
        stamp_ns: image stamp [ns].
        frame_id, depth_frame_id: frames of the image and of the depth image ('' = not known). Depth
            must be registered to the image (same optical frame); when both are known and differ the
            camera is refused (:func:`screen_cameras`).
    """

    channel: str
    image: np.ndarray
    K: np.ndarray
    T_target_cam: np.ndarray
    depth: np.ndarray
    stamp_ns: int = 0
    frame_id: str = ""
    depth_frame_id: str = ""


#: Kinds of :class:`CameraIssue`: no depth reading inside the depth range; depth in another frame
#: than its image; an unusable image / depth / intrinsics; streams that deliver but never synchronise.
ISSUE_KINDS = ("no_valid_depth", "unregistered_depth", "bad_input", "not_synchronised")


@dataclass(frozen=True)
class CameraIssue:
    """A problem of one camera in one frame (or, for ``not_synchronised``, of its streams).

    Attributes:
        camera: camera name.
        kind: one of :data:`ISSUE_KINDS`.
        message: one sentence naming the camera and the problem.
        used: True when the camera still contributed to the frame (``no_valid_depth``: its image
            was used, no point came from it), False when it was left out.
    """

    camera: str
    kind: str
    message: str
    used: bool = False


class UnusableCameras(ValueError):
    """No camera of a frame was usable; ``issues`` names each camera and its problem."""

    def __init__(self, issues: Sequence[CameraIssue]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(i.message for i in self.issues) or "no camera input")


def screen_cameras(cameras: Sequence[CameraInput], min_depth_m: float, max_depth_m: float
                   ) -> tuple[list[CameraInput], list[CameraIssue]]:
    """Split a frame's cameras into usable ones and per-camera issues, so one bad camera never drops
    the others and is always named.

    Left out (``used=False``): unregistered depth (``depth_frame_id`` differs from ``frame_id``),
    depth and image of different sizes, depth that is not 2-D, intrinsics that are not a finite
    (3, 3) matrix with positive focal lengths. Kept with an issue (``used=True``): no depth reading
    in ``[min_depth_m, max_depth_m]`` (all NaN, zero or out of range).

    Returns:
        ``(usable cameras in input order, issues)``.
    """
    usable, issues = [], []
    for cam in cameras:
        name = cam.channel
        depth = np.asarray(cam.depth)
        image_hw = np.shape(cam.image)[:2]
        K = np.asarray(cam.K, dtype=np.float64) if np.size(cam.K) == 9 else np.zeros((0,))
        if cam.frame_id and cam.depth_frame_id and cam.frame_id != cam.depth_frame_id:
            issues.append(CameraIssue(name, "unregistered_depth",
                                      f"{name}: depth is in frame {cam.depth_frame_id!r}, its image in "
                                      f"{cam.frame_id!r}; depth must be registered to the image (camera left out)"))
            continue
        if depth.ndim != 2 or depth.shape != tuple(image_hw):
            issues.append(CameraIssue(name, "bad_input", f"{name}: depth {depth.shape} and image {tuple(image_hw)} "
                                                         "differ in size (camera left out)"))
            continue
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            issues.append(CameraIssue(name, "bad_input", f"{name}: invalid intrinsics "
                                                         f"{np.asarray(cam.K).tolist()} (camera left out)"))
            continue
        with np.errstate(invalid="ignore"):
            valid = (depth >= min_depth_m) & (depth <= max_depth_m)
        if not valid.any():
            issues.append(CameraIssue(name, "no_valid_depth",
                                      f"{name}: no valid depth pixel (all {depth.size} are NaN, inf, <= 0 or outside "
                                      f"[{min_depth_m}, {max_depth_m}] m): nothing seen by this camera", used=True))
        usable.append(cam)
    return usable, issues


class SyncWatch:
    """Cameras whose input streams deliver but are never part of a synchronised set (ROS-free).

    Feed every accepted message with :meth:`observe` (and the set it completed, if any); ask
    :meth:`unsynchronised` periodically. A camera is reported when every one of its streams has
    delivered at least ``min_messages`` messages since it was last part of a set (or since the
    start) and ``after_s`` seconds have passed since then (nothing is reported while some stream
    has never delivered: that is a silent topic, reported elsewhere); the message gives its streams' newest
    stamps, so a constant offset (e.g. depth stamped 0.25 s after the image) is visible.

    Args:
        cameras: camera names.
        kinds: stream kinds of a camera (``image``, ``info``, ``depth``).
        after_s: time without a set before a delivering camera is reported [s].
        min_messages: messages per stream since the last set before it is reported.
    """

    def __init__(self, cameras: Sequence[str], kinds: Sequence[str], after_s: float = 3.0,
                 min_messages: int = 3) -> None:
        self.kinds = tuple(kinds)
        self.after_s = float(after_s)
        self.min_messages = int(min_messages)
        self._since: dict[str, float | None] = {c: None for c in cameras}  # last set (or first message) [s]
        self._counts: dict[str, dict[str, int]] = {c: {k: 0 for k in self.kinds} for c in cameras}
        self._stamps: dict[str, dict[str, int]] = {c: {} for c in cameras}
        self._ever: set[tuple[str, str]] = set()  # streams that delivered at least once

    def observe(self, camera: str, kind: str, stamp_ns: int, matched=None, now_s: float | None = None) -> None:
        """One accepted message of ``camera``'s ``kind`` stream; ``matched``: the set it completed
        (``{(camera, kind): msg}`` or an object with a ``frames`` dict keyed by camera), or None.
        Unknown cameras / kinds are ignored. ``now_s``: monotonic time [s] (default: now)."""
        now = time.monotonic() if now_s is None else now_s
        if camera in self._counts and kind in self._counts[camera]:
            self._counts[camera][kind] += 1
            self._stamps[camera][kind] = int(stamp_ns)
            self._ever.add((camera, kind))
            if self._since[camera] is None:
                self._since[camera] = now
        if matched is not None:
            keys = matched.frames.keys() if hasattr(matched, "frames") else matched.keys()
            for cam in {k[0] if isinstance(k, tuple) else k for k in keys}:
                if cam in self._counts:
                    self._since[cam] = now
                    self._counts[cam] = {k: 0 for k in self.kinds}

    def unsynchronised(self, now_s: float | None = None) -> list[CameraIssue]:
        """Issues (kind ``not_synchronised``) of the cameras that deliver but do not synchronise."""
        now = time.monotonic() if now_s is None else now_s
        if len(self._ever) < sum(len(c) for c in self._counts.values()):
            return []  # a stream never delivered: that is a silent topic, not a synchronisation problem
        issues = []
        for cam, counts in self._counts.items():
            since = self._since[cam]
            if since is None or now - since < self.after_s or min(counts.values()) < self.min_messages:
                continue
            stamps = self._stamps[cam]
            spread = (max(stamps.values()) - min(stamps.values())) / 1e9
            newest = ", ".join(f"{k} {stamps[k] / 1e9:.3f} s" for k in self.kinds)
            issues.append(CameraIssue(cam, "not_synchronised",
                                      f"{cam}: all its streams deliver ({min(counts.values())}+ messages each) but no "
                                      f"synchronised set for {now - since:.1f} s; newest stamps: {newest} "
                                      f"(spread {spread:.3f} s): check the stamps or the sync slop"))
        return issues


@dataclass
class PipelineConfig:
    """Settings shared by every backend (the perception node builds it from its parameters).

    Attributes:
        labels: open-vocabulary label set (non-empty, no empty strings).
        relevancy: relevancy extractor settings (``relevancy`` and ``semabs`` models).
        grid: the published voxel grid in ``target_frame`` (a model may publish its own, e.g. AGO).
        target_frame: frame of the camera poses and of the grid.
        min_depth_m, max_depth_m: depth readings outside [min, max] are ignored [m].
    """

    labels: list[str]
    relevancy: RelevancyConfig
    grid: VoxelGridSpec
    target_frame: str = "base_link"
    min_depth_m: float = 1.0
    max_depth_m: float = 80.0


@dataclass
class PipelineResult:
    """Output of one frame.

    Attributes:
        voxels: fused semantic occupancy in ``target_frame``.
        relevancy: camera -> (K, h, w) float32 relevancy maps (at the relevancy output stride).
        points_per_camera: camera -> number of depth points used.
        timings_s: stage -> seconds (``relevancy``, ``backproject``, ``fuse``, ``total``).
        issues: per-camera problems of this frame (:class:`CameraIssue`; empty when all is well).
    """

    voxels: SemanticVoxels
    relevancy: dict[str, np.ndarray]
    points_per_camera: dict[str, int]
    timings_s: dict[str, float] = field(default_factory=dict)
    issues: list[CameraIssue] = field(default_factory=list)


def checked_labels(labels: Sequence[str]) -> list[str]:
    """``labels`` as a list of strings, checked: at least one, none empty or blank.

    Raises:
        ValueError: on an empty list or an empty label.
    """
    labels = [str(label) for label in labels]
    if not labels or any(not label.strip() for label in labels):
        raise ValueError(f"labels must be a non-empty list of non-empty strings, got {labels!r}")
    return labels


class PerceptionPipeline:
    """Relevancy -> back-projection -> voxel fusion for a set of cameras.

    Args:
        clip: loaded CLIP (``clip_model.load_clip``).
        config: :class:`PipelineConfig`.
    """

    #: Timed stages of :meth:`process` (keys of ``PipelineResult.timings_s`` besides ``total``).
    stages = ("relevancy", "backproject", "fuse")

    def __init__(self, clip: ClipBundle, config: PipelineConfig) -> None:
        self.clip = clip
        self.config = config
        self.extractor = RelevancyExtractor(clip, config.relevancy)

    @property
    def grid(self) -> VoxelGridSpec:
        """The published grid (``config.grid``)."""
        return self.config.grid

    @property
    def model_name(self) -> str:
        """The CLIP model id or path."""
        return self.clip.name

    @property
    def random_weights(self) -> bool:
        """True when CLIP has random weights."""
        return bool(self.clip.random_weights)

    def set_labels(self, labels: Sequence[str]) -> None:
        """Replace the label set (validated: non-empty, no empty strings).

        Raises:
            ValueError: on an empty list or an empty label.
        """
        self.config.labels = checked_labels(labels)

    def set_relevancy(self, config: RelevancyConfig) -> None:
        """Replace the relevancy settings (run-time preset change): a new extractor from the next frame."""
        self.config.relevancy = config
        self.extractor = RelevancyExtractor(self.clip, config)

    def camera_points(self, cam: CameraInput, relevancy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Relevancy point cloud of one camera: (N, 3) float64 points in ``target_frame`` [m] and
        (N, K) float32 relevancy of their pixels.

        Raises:
            ValueError: when the depth image and the image differ in size, or K is not a valid
                (3, 3) intrinsic matrix.
        """
        depth = np.asarray(cam.depth, dtype=np.float32)
        if depth.shape != cam.image.shape[:2]:
            raise ValueError(f"{cam.channel}: depth {depth.shape} and image {cam.image.shape[:2]} differ in size")
        K = np.asarray(cam.K, dtype=np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"{cam.channel}: invalid intrinsics {K.tolist()}")
        with np.errstate(invalid="ignore"):
            valid = (depth >= self.config.min_depth_m) & (depth <= self.config.max_depth_m)
        pts_cam, pix = backproject_depth(np.where(valid, depth, np.nan), K)
        s = self.config.relevancy.output_stride
        scores = relevancy[:, pix[:, 1] // s, pix[:, 0] // s].T  # (N, K): relevancy at each point's pixel
        return transform_points(cam.T_target_cam, pts_cam), scores

    def process(self, cameras: Sequence[CameraInput]) -> PipelineResult:
        """Run one synchronised frame.

        Args:
            cameras: one :class:`CameraInput` per camera (at least one).

        Cameras are screened first (:func:`screen_cameras`): an unusable camera is left out and
        named in ``issues``, the others are processed; a camera without valid depth adds no point
        and is named too.

        Returns:
            :class:`PipelineResult`; ``voxels.stamp_ns`` is the newest camera stamp.

        Raises:
            ValueError: on an empty camera list; :class:`UnusableCameras` (a ValueError) when no
                camera is usable.
        """
        if not cameras:
            raise ValueError("no camera input")
        cameras, issues = screen_cameras(cameras, self.config.min_depth_m, self.config.max_depth_m)
        if not cameras:
            raise UnusableCameras(issues)
        labels = list(self.config.labels)
        timings = {"relevancy": 0.0, "backproject": 0.0, "fuse": 0.0}
        start = time.perf_counter()
        maps, clouds, scores, counts = {}, [], [], {}
        for cam in cameras:
            t0 = time.perf_counter()
            maps[cam.channel] = self.extractor(as_rgb_uint8(cam.image), labels)
            t1 = time.perf_counter()
            pts, sc = self.camera_points(cam, maps[cam.channel])
            timings["relevancy"] += t1 - t0
            timings["backproject"] += time.perf_counter() - t1
            clouds.append(pts)
            scores.append(sc)
            counts[cam.channel] = len(pts)
        t2 = time.perf_counter()
        voxels = semantic_voxels_from_points(
            self.config.grid, np.concatenate(clouds), np.concatenate(scores), labels, self.config.target_frame,
            random_weights=self.clip.random_weights, model=self.clip.name,
            stamp_ns=max(int(c.stamp_ns) for c in cameras))
        timings["fuse"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - start
        return PipelineResult(voxels=voxels, relevancy=maps, points_per_camera=counts, timings_s=timings,
                              issues=issues)
