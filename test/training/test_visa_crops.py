"""VISA crop selection on the real nuScenes keyframe boxes and on hand-made views."""

import numpy as np
import pytest

from occ_audit_ros.geometry import box_corners
from training.visa.crops import (BoxView, crop_quality, keyframe_instance_token, keyframe_views,
                                      project_box, score_view, select_crop)

K = np.array([[1000.0, 0, 800], [0, 1000.0, 450], [0, 0, 1]])


def _view(center, size=(2.0, 2.0, 2.0), vis=4, cam="CAM_FRONT"):
    # A box in the optical frame (x right, y down, z forward); yaw about the optical y axis.
    return BoxView("ann", cam, "sd-" + cam, box_corners(center, size), K, 1600, 900, vis)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_projected_boxes_match_the_mmdet3d_2d_boxes_of_the_real_keyframe(keyframe):
    ious, inside = [], []
    for channel, boxes2d in keyframe.boxes_2d.items():
        for b2 in boxes2d:
            assert b2.box_index >= 0
            box = keyframe.boxes[b2.box_index]
            view = next(v for v in keyframe_views(keyframe, box) if v.camera == channel)
            if (view.corners_cam[:, 2] <= 0.1).any():
                continue  # mmdet3d drops corners behind the camera, we clip edges at the near plane
            cand = score_view(view)
            assert cand is not None
            ious.append(_iou(cand.visible_xyxy, b2.bbox))
            if cand.trunc == 0.0:
                inside.append(ious[-1])
    assert len(ious) > 50 and len(inside) > 30
    assert np.median(ious) > 0.99 and min(ious) > 0.8
    assert min(inside) > 0.98  # fully visible boxes: same rectangle up to sub-pixel rounding


def test_keyframe_crop_selection_picks_a_camera_that_sees_the_object(keyframe):
    crops = {}
    for box in keyframe.boxes:
        crop = select_crop(keyframe_instance_token(keyframe, box), keyframe_views(keyframe, box))
        if crop is not None:
            crops[box.index] = crop
    assert len(crops) > 40
    seen = {b2.box_index: ch for ch, l in keyframe.boxes_2d.items() for b2 in l}
    for idx, crop in crops.items():
        if keyframe.boxes[idx].label < 0:
            continue  # mmdet3d keeps no 2D box for objects outside the 10 classes
        # The selected camera is one where mmdet3d also has a 2D box of this object.
        cams = {ch for ch, l in keyframe.boxes_2d.items() for b2 in l if b2.box_index == idx}
        assert crop.best.view.camera in cams, (idx, crop.best.view.camera, cams)
        x1, y1, x2, y2 = crop.bbox_xyxy
        img = keyframe.cameras[crop.best.view.camera].image
        assert crop.cut(img).shape == (y2 - y1, x2 - x1, 3)
        assert crop.quality in ("clear", "poor")  # no visibility bins in the embedded tables
        rec = crop.to_json()
        assert rec["camera"] == crop.best.view.camera and rec["visibility_bin"] is None
        assert crop.top[0] is crop.best and len(crop.top) <= 3
    assert set(seen) >= {i for i in crops if keyframe.boxes[i].label >= 0}


def test_score_prefers_visible_untruncated_views_and_pads_by_15_percent():
    near_truncated = _view((6.0, 0.0, 8.0))       # right edge beyond the image
    centred = _view((0.0, 0.0, 8.0))
    low_vis = _view((0.0, 0.0, 6.0), vis=1)        # larger but 0-40 % visible
    crop = select_crop("i", [near_truncated, low_vis, centred])
    assert crop.best.view is centred
    # 2 m cube at 8 m: front face at z = 7 m -> half-width 1000 / 7 px = 142.857 px.
    half = 1000.0 / 7.0
    np.testing.assert_allclose(crop.best.visible_xyxy, [800 - half, 450 - half, 800 + half, 450 + half])
    pad = 0.15 * 2 * half
    np.testing.assert_array_equal(crop.bbox_xyxy, [np.floor(800 - half - pad), np.floor(450 - half - pad),
                                                   np.ceil(800 + half + pad), np.ceil(450 + half + pad)])
    assert crop.quality == "clear" and crop.best.trunc == 0.0
    c = score_view(near_truncated)
    assert 0.0 < c.trunc < 1.0
    # trunc = clipped fraction of the projected rectangle.
    full, vis = c.full_xyxy, c.visible_xyxy
    assert c.trunc == pytest.approx(1 - (vis[2] - vis[0]) / (full[2] - full[0]))
    assert crop_quality(c) == "partial"
    assert crop_quality(score_view(low_vis)) == "poor"
    assert crop_quality(score_view(_view((0.0, 0.0, 8.0), vis=3))) == "partial"


def test_small_straddling_and_hidden_boxes():
    tiny = _view((0.0, 0.0, 80.0), size=(1.0, 1.0, 1.0))  # ~12.5 px
    assert select_crop("i", [tiny]) is None
    small = _view((0.0, 0.0, 40.0), size=(1.2, 1.2, 1.2))  # ~30 px: kept, but poor
    assert select_crop("i", [small]).quality == "poor"
    assert project_box(box_corners((0, 0, -5.0), (2, 2, 2)), K, 1600, 900) is None  # behind
    straddle = project_box(box_corners((0, 0, 0.5), (2, 2, 2)), K, 1600, 900)
    assert straddle is not None and straddle[0][0] < -1000  # near-plane clipped, huge rectangle
    with pytest.raises(ValueError, match="visibility_bin"):
        score_view(_view((0, 0, 8.0), vis=5))
    with pytest.raises(ValueError, match=r"\(8, 3\)"):
        project_box(np.zeros((4, 3)), K, 10, 10)
