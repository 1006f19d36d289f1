"""GT occupancy from LiDAR + boxes: hand-made rays, camera visibility, and the real keyframe."""

import numpy as np
import pytest

from occ_audit_ros.ago.classes import FREE_LABEL, IGNORE_LABEL, OCC3D_CLASSES
from training.ago.occ_gt import (OCC3D_SPEC, camera_visibility, keyframe_occupancy_gt,
                                      occupancy_from_points, points_in_boxes)
from training.ago.keyframe_gt import bev_labels, main as gt_main
from occ_audit_ros.voxel_grid import VoxelGridSpec

CAR = OCC3D_CLASSES.index("car")


def test_free_along_ray_and_voting():
    spec = VoxelGridSpec((0, 0, 0), (4, 2, 2), 0.5)  # 8 x 4 x 4
    origin = np.array([0.25, 0.25, 0.25])
    pts = np.array([[3.1, 0.25, 0.25], [3.2, 0.3, 0.3], [3.3, 0.2, 0.2]])  # all in voxel (6, 0, 0)
    sem, mask = occupancy_from_points(spec, pts, np.array([CAR, CAR, 0]), origin)
    assert sem[6, 0, 0] == CAR  # 2 votes car, 1 others
    assert (sem[0:6, 0, 0] == FREE_LABEL).all()  # traversed
    assert sem[7, 0, 0] == IGNORE_LABEL and sem[0, 1, 0] == IGNORE_LABEL  # behind / off the ray
    assert mask.sum() == 7


def test_camera_visibility_stops_at_first_hit():
    spec = VoxelGridSpec((0, -1, -1), (8, 1, 1), 0.5)  # x 0..8 m
    occ = np.zeros(spec.dims, bool)
    occ[8, :, :] = True  # a wall at x in [4, 4.5)
    # camera at the origin looking along +x: optical z = base x, optical x = -y, optical y = -z
    T = np.eye(4)
    T[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    K = np.array([[10.0, 0, 10], [0, 10, 10], [0, 0, 1]])
    vis = camera_visibility(spec, occ, [(K, T, 20, 20)], pixel_stride=1, max_range=20)
    assert vis[8].any() and vis[2].any()  # the wall and free space in front of it
    assert not vis[9:].any()  # behind the wall


def test_points_in_rotated_box():
    class Box:
        center = np.array([10.0, 0, 0])
        size = np.array([4.0, 2.0, 2.0])
        rotation = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # heading along +y
    pts = np.array([[10, 1.9, 0], [11.9, 0, 0], [10.5, 0.5, 0.5]])
    assert points_in_boxes(pts, [Box()]).tolist() == [0, -1, 0]


def test_keyframe_gt(keyframe, tmp_path):
    spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, 0.8)
    gt = keyframe_occupancy_gt(keyframe, spec, pixel_stride=32)
    assert gt.semantics.shape == (100, 100, 8) and gt.semantics.dtype == np.uint8
    counts = gt.counts()
    for name in ("car", "truck", "pedestrian", "barrier"):
        assert counts[name] > 0
    # every car voxel centre lies inside (or within one voxel of) a car box
    cars = [b for b in keyframe.boxes if b.category == "car"]
    idx = np.argwhere(gt.semantics == CAR)
    centres = np.asarray(spec.lower) + (idx + 0.5) * spec.voxel_size
    near = np.zeros(len(centres), bool)
    for b in cars:
        local = np.abs((centres - b.center) @ b.rotation)
        near |= np.all(local <= b.size / 2 + spec.voxel_size, axis=1)
    assert near.all()
    # the camera mask covers most observed voxels and is not everything
    observed = gt.mask_lidar.astype(bool)
    assert 0.5 < (gt.mask_camera.astype(bool) & observed).sum() / observed.sum() < 1.0
    bev = bev_labels(gt.semantics)
    assert (bev == CAR).any() and (bev == FREE_LABEL).any()


def test_keyframe_gt_cli(tmp_path, capsys):
    assert gt_main(["--out", str(tmp_path), "--voxel-size", "0.8", "--pixel-stride", "48"]) == 0
    assert len(list(tmp_path.glob("*.npz"))) == 1 and len(list(tmp_path.glob("*_bev.png"))) == 1
    assert gt_main(["--out", str(tmp_path), "--dataroot", str(tmp_path / "nope")]) == 2


def test_load_gt_file_round_trip_and_grid_check(tmp_path):
    """A saved GT reads back equal on its own grid; on another voxel size it is a clear error."""
    import numpy as np

    from training.ago.data import load_gt_file
    from training.ago.occ_gt import OccupancyGT
    from occ_audit_ros.voxel_grid import VoxelGridSpec

    spec = VoxelGridSpec((-4.0, -4.0, -1.0), (4.0, 4.0, 1.0), 0.5)
    rng = np.random.default_rng(0)
    sem = rng.integers(0, 18, spec.dims).astype(np.uint8)
    cam = rng.random(spec.dims) > 0.5
    OccupancyGT(spec, sem, ~cam, cam).save(tmp_path / "gt.npz")
    back = load_gt_file(tmp_path / "gt.npz", spec)
    assert np.array_equal(back.semantics, sem) and np.array_equal(back.mask_camera, cam)
    assert np.array_equal(back.mask_lidar, ~cam)
    with pytest.raises(ValueError, match="expected"):
        load_gt_file(tmp_path / "gt.npz", VoxelGridSpec((-4.0, -4.0, -1.0), (4.0, 4.0, 1.0), 0.25))
