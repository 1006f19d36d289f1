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
    """

    channel: str
    image: np.ndarray
    K: np.ndarray
    T_target_cam: np.ndarray
    depth: np.ndarray
    stamp_ns: int = 0


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
    """

    voxels: SemanticVoxels
    relevancy: dict[str, np.ndarray]
    points_per_camera: dict[str, int]
    timings_s: dict[str, float] = field(default_factory=dict)


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
        labels = [str(label) for label in labels]
        if not labels or any(not label.strip() for label in labels):
            raise ValueError(f"labels must be a non-empty list of non-empty strings, got {labels!r}")
        self.config.labels = labels

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

        Returns:
            :class:`PipelineResult`; ``voxels.stamp_ns`` is the newest camera stamp.

        Raises:
            ValueError: on an empty camera list or invalid camera input (see :meth:`camera_points`).
        """
        if not cameras:
            raise ValueError("no camera input")
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
        return PipelineResult(voxels=voxels, relevancy=maps, points_per_camera=counts, timings_s=timings)
