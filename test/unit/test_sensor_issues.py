"""Per-camera sensor problems on the real nuScenes keyframe (tiny random CLIP, shipped SemAbs and AGO
checkpoints): all-invalid depth, depth not registered to its image and one malformed camera in a set
are named per camera in ``PipelineResult.issues`` while the other cameras are still fused; streams
that deliver but never synchronise are named by :class:`SyncWatch`."""

import numpy as np
import pytest

from occ_audit_ros import params, paths
from occ_audit_ros.backends import AgoBackendConfig, SemAbsBackendConfig, create_backend
from occ_audit_ros.nuscenes_io import lidar_depth_for_camera
from occ_audit_ros.pipeline import (CameraInput, PerceptionPipeline, PipelineConfig, SyncWatch, UnusableCameras,
                                    screen_cameras)
from occ_audit_ros.relevancy import RelevancyConfig
from occ_audit_ros.voxel_grid import VoxelGridSpec

GRID = VoxelGridSpec((-40.0, -40.0, -1.0), (40.0, 40.0, 5.4), 0.4)


def _config():
    return PipelineConfig(labels=list(params.DRIVING_LABELS), relevancy=RelevancyConfig(output_stride=8), grid=GRID)


@pytest.fixture(scope="module")
def cams(keyframe):
    return [CameraInput(ch, cam.image, cam.K, cam.T_base_cam, lidar_depth_for_camera(keyframe, ch),
                        cam.timestamp_us * 1000, frame_id=f"{ch.lower()}_optical", depth_frame_id=f"{ch.lower()}_optical")
            for ch, cam in list(keyframe.cameras.items())[:3]]


def _with(cam, **changes):
    fields = dict(cam.__dict__)
    fields.update(changes)
    return CameraInput(**fields)


def test_each_bad_camera_is_named_and_the_others_are_fused(tiny_clip, cams):
    pipe = PerceptionPipeline(tiny_clip, _config())
    good = pipe.process(cams[:1])
    assert good.issues == []
    bad = [cams[0],
           _with(cams[1], depth=np.full_like(cams[1].depth, np.nan)),             # all invalid
           _with(cams[2], depth_frame_id="lidar_top")]                              # unregistered
    res = pipe.process(bad)
    kinds = {(i.camera, i.kind, i.used) for i in res.issues}
    assert kinds == {(cams[1].channel, "no_valid_depth", True), (cams[2].channel, "unregistered_depth", False)}
    assert all(i.camera in i.message for i in res.issues)
    assert res.points_per_camera[cams[1].channel] == 0 and cams[2].channel not in res.points_per_camera
    # the good camera is fused exactly as alone
    assert set(res.voxels.indices.tolist()) == set(good.voxels.indices.tolist())
    # malformed camera in a set: left out and named, the rest fused
    res = pipe.process([cams[0], _with(cams[1], depth=cams[1].depth[:10])])
    assert [(i.camera, i.kind) for i in res.issues] == [(cams[1].channel, "bad_input")]
    assert set(res.voxels.indices.tolist()) == set(good.voxels.indices.tolist())
    with pytest.raises(UnusableCameras) as err:
        pipe.process([_with(cams[2], depth_frame_id="lidar_top")])
    assert err.value.issues[0].camera == cams[2].channel and cams[2].channel in str(err.value)


def test_all_invalid_depth_is_an_issue_not_a_silent_empty_grid(tiny_clip, cams):
    """Before: an empty grid and nothing else."""
    pipe = PerceptionPipeline(tiny_clip, _config())
    for depth in (np.full_like(cams[0].depth, np.nan), np.zeros_like(cams[0].depth), np.full_like(cams[0].depth, 500.0)):
        res = pipe.process([_with(cams[0], depth=depth)])
        assert len(res.voxels.indices) == 0
        assert [i.kind for i in res.issues] == ["no_valid_depth"]


def test_models_refuse_or_name_bad_cameras(tiny_clip, cams):
    front = next(c for c in cams if c.channel == "CAM_FRONT")
    semabs = create_backend("semabs", PipelineConfig(labels=["car", "road"], relevancy=RelevancyConfig(output_stride=8),
                                                     grid=VoxelGridSpec((5.0, -1.0, -0.1), (7.0, 1.0, 1.9), 0.2)),
                            SemAbsBackendConfig(), clip=tiny_clip)
    with pytest.raises(UnusableCameras, match="CAM_FRONT: depth is in frame 'lidar_top'"):
        semabs.process([_with(front, depth_frame_id="lidar_top")])
    with pytest.raises(UnusableCameras, match="CAM_FRONT: no valid depth"):
        semabs.process([_with(front, depth=np.full_like(front.depth, np.nan))])
    ago = create_backend("ago", _config(), AgoBackendConfig(checkpoint=str(paths.resource("models/ago/closed_ground_sim"))))
    res = ago.process([cams[0], _with(cams[1], depth_frame_id="lidar_top")])
    assert [(i.camera, i.kind) for i in res.issues] == [(cams[1].channel, "unregistered_depth")]


def test_screen_cameras_bad_intrinsics(cams):
    usable, issues = screen_cameras([_with(cams[0], K=np.zeros((3, 3))), cams[1]], 1.0, 80.0)
    assert usable == [cams[1]] and issues[0].kind == "bad_input" and "intrinsics" in issues[0].message


def test_sync_watch_names_the_camera_whose_streams_never_match():
    watch = SyncWatch(["CAM_FRONT", "CAM_BACK"], ("image", "info", "depth"), after_s=2.0)
    t = 0.0
    for i in range(10):  # CAM_BACK's depth is stamped 0.25 s late: no set forms
        stamp = i * 100_000_000
        for cam in ("CAM_FRONT", "CAM_BACK"):
            for kind in ("image", "info", "depth"):
                late = 250_000_000 if (cam, kind) == ("CAM_BACK", "depth") else 0
                watch.observe(cam, kind, stamp + late, None, now_s=t)
        t += 0.5
    issues = watch.unsynchronised(now_s=t)
    assert {i.camera for i in issues} == {"CAM_FRONT", "CAM_BACK"}
    back = next(i for i in issues if i.camera == "CAM_BACK")
    assert back.kind == "not_synchronised" and "spread 0.250 s" in back.message
    # a set containing both cameras resets them
    watch.observe("CAM_FRONT", "image", 10**9, {("CAM_FRONT", "image"): 1, ("CAM_BACK", "image"): 2}, now_s=t)
    assert watch.unsynchronised(now_s=t + 1.0) == []
    # a stream that never delivered is a silent topic, not a sync problem
    silent = SyncWatch(["CAM_FRONT"], ("image", "depth"), after_s=0.0, min_messages=1)
    silent.observe("CAM_FRONT", "image", 0, None, now_s=0.0)
    assert silent.unsynchronised(now_s=10.0) == []
