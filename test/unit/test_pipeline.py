"""The ROS-free pipeline on the real nuScenes keyframe (tiny random CLIP)."""

import numpy as np
import pytest

from occ_audit_ros import params
from occ_audit_ros.geometry import transform_points
from occ_audit_ros.nuscenes_io import lidar_depth_for_camera
from occ_audit_ros.pipeline import CameraInput, PerceptionPipeline, pipeline_config_from_params


@pytest.fixture(scope="module")
def inputs(keyframe):
    return [CameraInput(ch, cam.image, cam.K, cam.T_base_cam, lidar_depth_for_camera(keyframe, ch),
                        cam.timestamp_us * 1000) for ch, cam in keyframe.cameras.items()]


def test_keyframe_to_voxels(tiny_clip, keyframe, inputs):
    cfg = pipeline_config_from_params({"relevancy.output_stride": 4})
    result = PerceptionPipeline(tiny_clip, cfg).process(inputs)
    vox = result.voxels
    assert vox.frame_id == "base_link" and vox.random_weights and vox.spec.dims == (200, 200, 16)
    assert set(result.relevancy) == set(keyframe.cameras)
    assert result.relevancy["CAM_FRONT"].shape == (len(cfg.labels), 225, 400)
    assert all(n > 1000 for n in result.points_per_camera.values())
    # Every occupied voxel holds at least one LiDAR return seen by a camera, and vice versa.
    pts = np.concatenate([transform_points(c.T_target_cam, _cam_points(c)) for c in inputs])
    ijk, inside = vox.spec.point_to_voxel(pts)
    assert set(vox.spec.flat_index(ijk[inside]).tolist()) == set(vox.indices.tolist())
    assert vox.stamp_ns == max(c.stamp_ns for c in inputs)
    assert set(result.timings_s) == {"relevancy", "backproject", "fuse", "total"}


def _cam_points(cam):
    from occ_audit_ros.geometry import backproject_depth

    d = np.where((cam.depth >= 1.0) & (cam.depth <= 80.0), cam.depth, np.nan)
    return backproject_depth(d, cam.K)[0]


def test_bad_camera_input(tiny_clip, inputs):
    pipe = PerceptionPipeline(tiny_clip, pipeline_config_from_params({}))
    cam = inputs[0]
    with pytest.raises(ValueError, match="differ in size"):
        pipe.process([CameraInput(cam.channel, cam.image, cam.K, cam.T_target_cam, cam.depth[:10], 0)])
    with pytest.raises(ValueError, match="intrinsics"):
        pipe.process([CameraInput(cam.channel, cam.image, np.zeros((3, 3)), cam.T_target_cam, cam.depth, 0)])
    with pytest.raises(ValueError):
        pipe.process([])
    all_nan = CameraInput(cam.channel, cam.image, cam.K, cam.T_target_cam, np.full_like(cam.depth, np.nan), 0)
    assert len(pipe.process([all_nan]).voxels.indices) == 0  # no depth: no voxels, no crash
    with pytest.raises(ValueError):
        pipe.set_labels([])


def test_params_validation():
    with pytest.raises(ValueError, match="unknown"):
        params.validate({"nope": 1})
    with pytest.raises(ValueError):
        params.validate({"labels": []})
    with pytest.raises(ValueError):
        params.validate({"grid.voxel_size": "big"})
    assert params.validate({"grid.voxel_size": 1})["grid.voxel_size"] == 1.0
