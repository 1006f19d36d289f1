"""Crop selection per instance over its annotations and cameras (docs/visa.md §3, DC).

For every view (one annotation of the instance seen by one camera) the 3D box is clipped to the
camera's near plane, projected, and its bounding rectangle clipped to the image. Score
``s = area_px · vis_w · (1 − trunc)`` with ``vis_w = {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}`` for the
nuScenes visibility bins (0–40 %, 40–60 %, 60–80 %, 80–100 %) and ``trunc`` = the fraction of
the projected rectangle outside the image. The best view is padded by 15 % of its width/height
on each side (clipped to the image) and rejected when the visible rectangle's shorter side is
below 24 px; the top 3 views are kept for an optional consistency vote. Quality: ``clear``
(bin 4 and trunc < 0.1), ``poor`` (bin 1 or shorter side < 40 px), else ``partial``.

Deviation for tables without visibility (the embedded keyframe has no ``sample_annotation``
rows): ``visibility_bin=None`` gives ``vis_w = 1`` and quality from truncation and size only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from occ_audit_ros.geometry import invert_transform, transform_points

VIS_WEIGHT = {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, None: 1.0}
PAD_FRACTION = 0.15
MIN_SIDE_PX = 24
POOR_SIDE_PX = 40
CLEAR_MAX_TRUNC = 0.1
NEAR_PLANE_M = 0.1

# Box edges as corner-index pairs (nuScenes corner order, geometry.box_corners).
_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


@dataclass
class BoxView:
    """One annotation of an instance as seen from one camera.

    Attributes:
        annotation_token: nuScenes ``sample_annotation`` token (or a stand-in).
        camera: camera channel, e.g. ``"CAM_FRONT"``.
        sample_data_token: the image's ``sample_data`` token.
        corners_cam: (8, 3) float64 box corners in the camera optical frame at the image time, m.
        K: (3, 3) float64 intrinsics.
        width, height: image size, px.
        visibility_bin: nuScenes visibility 1–4, or ``None`` when unknown.
    """

    annotation_token: str
    camera: str
    sample_data_token: str
    corners_cam: np.ndarray
    K: np.ndarray
    width: int
    height: int
    visibility_bin: int | None = None


@dataclass
class CropCandidate:
    """A scored view (pixel rectangles are ``(x1, y1, x2, y2)`` float64, image columns/rows)."""

    view: BoxView
    full_xyxy: np.ndarray
    visible_xyxy: np.ndarray
    trunc: float
    score: float

    @property
    def min_side(self) -> float:
        """Shorter side of the visible rectangle, px."""
        return float(min(self.visible_xyxy[2] - self.visible_xyxy[0], self.visible_xyxy[3] - self.visible_xyxy[1]))


@dataclass
class Crop:
    """The selected crop of one instance.

    Attributes:
        instance_token: the instance.
        best: the best-scoring view.
        bbox_xyxy: (4,) int padded crop rectangle, clipped to the image (x2, y2 exclusive).
        quality: ``"clear" | "partial" | "poor"``.
        top: up to 3 best candidates, best first (for a consistency vote).
    """

    instance_token: str
    best: CropCandidate
    bbox_xyxy: np.ndarray
    quality: str
    top: list[CropCandidate] = field(default_factory=list)

    def to_json(self) -> dict:
        """The ``crop`` field of a ``visa-audit/1`` record."""
        return {"sample_data_token": self.best.view.sample_data_token, "camera": self.best.view.camera,
                "bbox_xyxy": [int(v) for v in self.bbox_xyxy],
                "visibility_bin": self.best.view.visibility_bin, "quality": self.quality,
                "annotation_token": self.best.view.annotation_token,
                "trunc": round(self.best.trunc, 4), "score": round(self.best.score, 2)}

    def cut(self, image: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 copy of the crop from the full (H, W, 3) image of ``best.view``."""
        x1, y1, x2, y2 = (int(v) for v in self.bbox_xyxy)
        return np.ascontiguousarray(image[y1:y2, x1:x2])


def project_box(corners_cam: np.ndarray, K: np.ndarray, width: int, height: int,
                near: float = NEAR_PLANE_M) -> tuple[np.ndarray, np.ndarray] | None:
    """Projected and image-clipped rectangles of a 3D box.

    The box's 12 edges are clipped to the plane z = ``near`` (so boxes straddling the camera are
    handled exactly), the remaining points projected with K.

    Args:
        corners_cam: (8, 3) corners in the optical frame, metres.
        K: (3, 3) intrinsics.
        width, height: image size, px.

    Returns:
        ``(full_xyxy, visible_xyxy)`` float64 (4,) rectangles — unclipped, and clipped to
        ``[0, width] × [0, height]`` — or ``None`` when the box is behind the camera or outside the
        image.

    Raises:
        ValueError: when ``corners_cam`` is not (8, 3).
    """
    c = np.asarray(corners_cam, dtype=np.float64)
    if c.shape != (8, 3):
        raise ValueError(f"corners_cam must be (8, 3), got {c.shape}")
    pts = [c[i] for i in range(8) if c[i, 2] >= near]
    for a, b in _EDGES:
        za, zb = c[a, 2], c[b, 2]
        if (za - near) * (zb - near) < 0:
            t = (near - za) / (zb - za)
            pts.append(c[a] + t * (c[b] - c[a]))
    if not pts:
        return None
    p = np.asarray(pts) @ np.asarray(K, dtype=np.float64).T
    uv = p[:, :2] / p[:, 2:3]
    full = np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
    vis = np.array([max(full[0], 0.0), max(full[1], 0.0), min(full[2], float(width)), min(full[3], float(height))])
    if vis[2] <= vis[0] or vis[3] <= vis[1]:
        return None
    return full, vis


def score_view(view: BoxView) -> CropCandidate | None:
    """Score one view (``s = area · vis_w · (1 − trunc)``); ``None`` when not in the image.

    Raises:
        ValueError: for a visibility bin outside {1, 2, 3, 4, None}.
    """
    if view.visibility_bin not in VIS_WEIGHT:
        raise ValueError(f"visibility_bin must be 1-4 or None, got {view.visibility_bin!r}")
    r = project_box(view.corners_cam, view.K, view.width, view.height)
    if r is None:
        return None
    full, vis = r
    area_full = (full[2] - full[0]) * (full[3] - full[1])
    area = (vis[2] - vis[0]) * (vis[3] - vis[1])
    trunc = float(1.0 - area / area_full) if area_full > 0 else 1.0
    return CropCandidate(view, full, vis, trunc, float(area * VIS_WEIGHT[view.visibility_bin] * (1.0 - trunc)))


def crop_quality(candidate: CropCandidate) -> str:
    """``clear`` / ``partial`` / ``poor`` of a candidate (docs/visa.md §3)."""
    b = candidate.view.visibility_bin
    if b == 1 or candidate.min_side < POOR_SIDE_PX:
        return "poor"
    if (b == 4 or b is None) and candidate.trunc < CLEAR_MAX_TRUNC:
        return "clear"
    return "partial"


def select_crop(instance_token: str, views: list[BoxView], top_k: int = 3) -> Crop | None:
    """Best crop of one instance over all its views.

    Returns:
        The :class:`Crop`, or ``None`` when no view is in an image or the best one's visible
        rectangle has a side below 24 px.
    """
    cands = [c for c in (score_view(v) for v in views) if c is not None]
    if not cands:
        return None
    cands.sort(key=lambda c: -c.score)
    best = cands[0]
    if best.min_side < MIN_SIDE_PX:
        return None
    x1, y1, x2, y2 = best.visible_xyxy
    pw, ph = PAD_FRACTION * (x2 - x1), PAD_FRACTION * (y2 - y1)
    W, H = best.view.width, best.view.height
    bbox = np.array([max(0, int(np.floor(x1 - pw))), max(0, int(np.floor(y1 - ph))),
                     min(W, int(np.ceil(x2 + pw))), min(H, int(np.ceil(y2 + ph)))], dtype=np.int64)
    return Crop(instance_token, best, bbox, crop_quality(best), cands[:top_k])


def keyframe_instance_token(keyframe, box) -> str:
    """Stand-in instance token ``"<sample_token>:<box index>"`` for the embedded keyframe.

    Its MMDetection3D pickle has no instance tokens; with real tables use ``instance_token``.
    """
    return f"{keyframe.sample_token}:{box.index:03d}"


def keyframe_views(keyframe, box) -> list[BoxView]:
    """The 6 camera views of one GT box of a :class:`occ_audit_ros.nuscenes_io.Keyframe`.

    Corners go ``map`` -> camera at each camera's own timestamp (as the devkit does).
    Visibility is unknown on the embedded keyframe (``None``).
    """
    corners_map = box.corners_map()
    views = []
    for channel, cam in keyframe.cameras.items():
        views.append(BoxView(
            annotation_token=keyframe_instance_token(keyframe, box), camera=channel,
            sample_data_token=cam.sample_data_token,
            corners_cam=transform_points(invert_transform(cam.T_map_cam), corners_map),
            K=cam.K, width=cam.width, height=cam.height, visibility_bin=None))
    return views
