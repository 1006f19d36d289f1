"""Driving simulator: Occ3D GT of a box vs its volume, nuScenes-devkit / package loader / bag
converter on the written tables, GT consistency with the LiDAR, determinism and resume."""

import json
import math

import numpy as np
import pytest
import yaml

from occ_audit_ros import conventions, paths
from occ_audit_ros.geometry import invert_transform, make_transform, transform_points
from training.sim import generate
from training.sim.driving import (FREE, OCC3D_CLASSES, occ3d_semantics, thing_parts,
                                       voxel_centers)
from training.sim.primitives import Primitive, RayScene, SceneObject
from training.sim.shards import load_config, merge

TINY = {
    "samples_per_scene": 2, "image_scale": 0.1,
    "lidar": {"azimuth_step_deg": 2.0},
    "world": {"length": 120.0, "buildings_per_side": [2, 3], "trees_per_side": [1, 2],
              "pedestrians": [2, 3], "vehicles_per_lane": [1, 2], "cones": [1, 2],
              "barriers": [1, 2]},
    "occ3d": {"dims": [50, 50, 16], "camera_ray_stride": 4},
}


@pytest.fixture(scope="module")
def cfg():
    return merge(load_config(paths.resource("training/config/sim_driving.yaml")), TINY)


def _yaw_pose(x, y, z, yaw):
    return make_transform([x, y, z], [math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)])


def test_box_ground_truth_matches_its_volume():
    occ_cfg = {"range": [-10.0, -10.0, -1.0, 10.0, 10.0, 5.4], "dims": [50, 50, 16],
               "supersample": 2}
    l, w, h, yaw = 4.3, 1.9, 1.6, 0.6
    center = np.array([2.3, -1.7, 0.8])
    T_box = _yaw_pose(*center, yaw)
    barrier = SceneObject(0, "barrier", [Primitive("box", (l, w, h), T_box)],
                          attrs={"cls": OCC3D_CLASSES.index("barrier")})
    road = SceneObject(1, "driveable_surface",
                       [Primitive("box", (30, 30, 0.19), _yaw_pose(0, 0, -0.095, 0))],
                       attrs={"cls": OCC3D_CLASSES.index("driveable_surface")})
    T_map_base = _yaw_pose(5.0, 3.0, 0.0, 0.4)  # the ego frame is not the map frame
    T_map_boxes = T_map_base  # place both objects relative to the ego
    for o in (barrier, road):
        o.primitives = [Primitive(p.kind, p.params, T_map_boxes @ p.T_world_prim)
                        for p in o.primitives]
    sem = occ3d_semantics(RayScene([barrier, road]), T_map_base, occ_cfg)
    # Brute force: a voxel is the box's when the two overlap (z intervals and, in the ego xy plane,
    # the separating-axis test of the voxel square and the rotated rectangle).
    r = np.array(occ_cfg["range"])
    vs = (r[3:] - r[:3]) / np.array(occ_cfg["dims"])
    centers = voxel_centers(occ_cfg, 1).astype(np.float64)
    d = centers - center  # T_box is the box pose in the ego frame
    overlap_z = np.abs(d[:, 2]) <= (h + vs[2]) / 2
    hx, hy = vs[0] / 2, vs[1] / 2
    u = np.array([math.cos(yaw), math.sin(yaw)])
    v = np.array([-u[1], u[0]])
    sep = np.zeros(len(d), dtype=bool)
    for axis in (np.array([1.0, 0.0]), np.array([0.0, 1.0]), u, v):
        proj_box = abs(axis @ u) * l / 2 + abs(axis @ v) * w / 2
        proj_vox = abs(axis[0]) * hx + abs(axis[1]) * hy
        sep |= np.abs(d[:, :2] @ axis) > proj_box + proj_vox + 1e-9
    expected = (overlap_z & ~sep).reshape(sem.shape)
    got = sem == OCC3D_CLASSES.index("barrier")
    assert not (got & ~expected).any()                 # never outside the box
    assert (expected & ~got).sum() <= 0.03 * expected.sum()  # grazing corners only
    # Sub-points inside the box measure its volume.
    sub = voxel_centers(occ_cfg, 2).astype(np.float64)
    inside = np.all(np.abs(transform_points(invert_transform(T_box), sub)) <= np.array([l, w, h]) / 2,
                    axis=1)
    sub_volume = np.prod(vs / 2)
    assert inside.sum() * sub_volume == pytest.approx(l * w * h, rel=0.06)
    # The road's top layer (z in [-0.2, 0.2]) is driveable surface except under the box; the rest
    # of the grid is free.
    road_layer = sem[:, :, 2]
    assert ((road_layer == OCC3D_CLASSES.index("driveable_surface")) | got[:, :, 2]).all()
    assert (sem[:, :, 0] == FREE).all() and (sem[:, :, 1] == FREE).all()
    assert set(np.unique(sem[:, :, 3:])) <= {FREE, OCC3D_CLASSES.index("barrier")}


def test_thing_parts_stay_inside_their_box():
    for cls, (_, size, _) in __import__("training.sim.driving", fromlist=["THINGS"]).THINGS.items():
        obj = SceneObject(0, cls, [Primitive(k, p, T) for k, p, T in thing_parts(cls, size)])
        lo, hi = obj.aabb()
        assert np.all(lo >= -np.array(size) / 2 - 1e-6) and np.all(hi <= np.array(size) / 2 + 1e-6), cls


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, cfg):
    root = tmp_path_factory.mktemp("drive")
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(dict(cfg)))
    out = root / "data"
    args = ["driving", "--out", str(out), "--scenes", "1", "--seed", "3", "--config", str(cfg_path),
            "--no-progress"]
    assert generate.main(args) == 0
    return out, cfg_path, args


def test_tables_load_in_devkit_and_package_loader(dataset, cfg):
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.data_classes import Box  # noqa: F401  (devkit box maths below)

    from occ_audit_ros.nuscenes_io import load_keyframe

    out, _, _ = dataset
    nusc = NuScenes(version=cfg["version"], dataroot=str(out), verbose=False)
    assert len(nusc.scene) == 1 and len(nusc.sample) == 2
    assert len(nusc.sample_data) == 2 * 7
    assert len(nusc.sample_annotation) > 0
    for inst in nusc.instance:  # tracks: prev/next chains of the same instance
        ann = nusc.get("sample_annotation", inst["first_annotation_token"])
        count = 1
        while ann["next"]:
            nxt = nusc.get("sample_annotation", ann["next"])
            assert nxt["instance_token"] == inst["token"] and nxt["prev"] == ann["token"]
            ann, count = nxt, count + 1
        assert count == inst["nbr_annotations"]
        assert nusc.get("category", inst["category_token"])["name"].split(".")[0] in (
            "vehicle", "human", "movable_object")
    assert {a["visibility_token"] for a in nusc.sample_annotation} <= {"1", "2", "3", "4"}
    sample = nusc.sample[1]
    kf = load_keyframe(out, out / "sim_infos.pkl", sample_token=sample["token"])
    anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
    assert len(kf.boxes) == len(anns)
    for box, ann in zip(kf.boxes, anns):
        devkit = nusc.get_box(ann["token"])
        np.testing.assert_allclose(box.center_map, devkit.center, atol=1e-6)
        np.testing.assert_allclose(box.size, [devkit.wlh[1], devkit.wlh[0], devkit.wlh[2]], atol=1e-9)
        assert math.cos(box.yaw_map - devkit.orientation.yaw_pitch_roll[0]) > 1 - 1e-9
    cam = kf.cameras["CAM_FRONT"]
    assert cam.image.shape == (90, 160, 3)
    assert kf.lidar.points.shape[1] == 5 and len(kf.lidar.points) > 1000


def test_occ3d_labels_agree_with_lidar(dataset, cfg):
    from nuscenes.nuscenes import NuScenes

    from occ_audit_ros.nuscenes_io import load_keyframe

    out, _, _ = dataset
    nusc = NuScenes(version=cfg["version"], dataroot=str(out), verbose=False)
    sample = nusc.sample[0]
    scene = nusc.get("scene", sample["scene_token"])
    labels = np.load(out / "gts" / scene["name"] / sample["token"] / "labels.npz")
    sem, mcam, mlid = labels["semantics"], labels["mask_camera"], labels["mask_lidar"]
    assert sem.shape == mcam.shape == mlid.shape == (50, 50, 16)
    assert sem.dtype == mcam.dtype == np.uint8 and sem.max() <= FREE
    assert 0 < mcam.mean() < 1 and 0 < mlid.mean() < 1
    kf = load_keyframe(out, out / "sim_infos.pkl", sample_token=sample["token"])
    pts = transform_points(kf.lidar.T_base_lidar, kf.lidar.points[:, :3])
    r = np.array(cfg["occ3d"]["range"])
    vs = (r[3:] - r[:3]) / np.array(sem.shape)
    ijk = np.floor((pts - r[:3]) / vs).astype(int)
    ok = np.all((ijk >= 0) & (ijk < sem.shape), axis=1)
    ijk = ijk[ok]
    cls = ((kf.lidar.points[ok, 3] - 40) // 8).astype(int)  # the simulator's class-coded intensity
    voxel = sem[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    assert (voxel != FREE).mean() > 0.85      # returns lie in occupied voxels
    assert (voxel == cls).mean() > 0.75       # ... of the hit object's class (borders aside)
    assert mlid[ijk[:, 0], ijk[:, 1], ijk[:, 2]].mean() > 0.99  # hit voxels are LiDAR-observed


def test_bag_converter_reads_simulated_keyframe(dataset, tmp_path, cfg):
    from occ_audit_ros.tools import nuscenes_to_bag

    out, _, _ = dataset
    token = json.loads((out / cfg["version"] / "sample.json").read_text())[1]["token"]
    rc = nuscenes_to_bag.main(["--dataroot", str(out), "--annotations", str(out / "sim_infos.pkl"),
                               "--output", str(tmp_path / "bag"), "--sample-token", token])
    assert rc == 0
    rows, _ = nuscenes_to_bag._bag_summary(tmp_path / "bag")
    topics = {t for t, _, _ in rows}
    assert {"/gt/boxes", "/lidar_top/points", "/cam_front/image_raw"} <= topics


def test_same_seed_same_bytes_and_resume(dataset, tmp_path):
    out, cfg_path, args = dataset
    again = tmp_path / "again"
    args2 = list(args)
    args2[args2.index("--out") + 1] = str(again)
    assert generate.main(args2) == 0
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (out / f).read_bytes() == (again / f).read_bytes(), f
    # Resume: a finished sequence is skipped (its files untouched); a changed seed is refused.
    jpg = next(again.rglob("*.jpg"))
    stamp = jpg.stat().st_mtime_ns
    assert generate.main(args2) == 0
    assert jpg.stat().st_mtime_ns == stamp
    args2[args2.index("--seed") + 1] = "4"
    assert generate.main(args2) == 1


def test_torchrun_two_processes_split_sequences(dataset, tmp_path, cfg):
    """torchrun with 2 CPU processes: each takes every other sequence (RANK / WORLD_SIZE); the
    tables are merged once all sequences exist, and sequence 0 equals the 1-process run's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from nuscenes.nuscenes import NuScenes

    out, cfg_path, _ = dataset
    multi = tmp_path / "multi"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", "2", "--no-python", sys.executable, "-m",
           "training.sim.generate", "driving", "--out", str(multi), "--scenes", "2",
           "--seed", "3", "--config", str(cfg_path), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    nusc = NuScenes(version=cfg["version"], dataroot=str(multi), verbose=False)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 4
    seq0 = sorted(p.relative_to(out) for p in (out / "samples").rglob("*") if p.is_file())
    assert seq0 and all((multi / f).read_bytes() == (out / f).read_bytes() for f in seq0)


def test_sweeps_are_chained_posed_and_leave_keyframes_unchanged(dataset, cfg):
    """With sweeps: non-key sample_data at 12 Hz (cameras) and 20 Hz (LiDAR) between keyframes,
    prev/next chains per channel in time order, an ego pose per sample_data on the ego's
    constant-velocity path, files where the tables say; the keyframes are byte-identical to the
    run without sweeps (sweeps draw from their own random stream)."""
    from nuscenes.nuscenes import NuScenes

    from sim_scene import TINY, simulated_scene

    assert {k: cfg[k] == v if not isinstance(v, dict) else all(cfg[k][a] == b for a, b in v.items())
            for k, v in TINY.items()} == dict.fromkeys(TINY, True)  # same world as `dataset`
    root, scfg = simulated_scene(3, True)
    nusc = NuScenes(version=scfg["version"], dataroot=str(root), verbose=False)
    samples = sorted(nusc.sample, key=lambda s: s["timestamp"])
    assert len(samples) == 3
    key_poses = [nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
                 for s in samples]
    for channel, per_interval in [(ch, 5) for ch in conventions.CAMERA_CHANNELS] + [("LIDAR_TOP", 9)]:
        first = nusc.get("sample_data", samples[0]["data"][channel])
        assert first["prev"] == ""
        chain = [first]
        while chain[-1]["next"]:
            nxt = nusc.get("sample_data", chain[-1]["next"])
            assert nxt["prev"] == chain[-1]["token"]
            chain.append(nxt)
        assert len(chain) == 3 + 2 * per_interval == sum(sd["channel"] == channel for sd in nusc.sample_data)
        stamps = np.array([sd["timestamp"] for sd in chain])
        hz = 12.0 if channel != "LIDAR_TOP" else 20.0
        np.testing.assert_allclose(np.diff(stamps), 1e6 / hz, atol=1)
        assert [sd["is_key_frame"] for sd in chain] == ([True] + [False] * per_interval) * 2 + [True]
        for sd in chain:
            assert (root / sd["filename"]).is_file()
            assert sd["filename"].startswith("samples/" if sd["is_key_frame"] else "sweeps/")
            k = next(i for i, s in enumerate(samples) if s["timestamp"] >= sd["timestamp"])
            assert sd["sample_token"] == samples[k]["token"]  # a sweep belongs to the next keyframe
            # ego moves at constant velocity: the pose is the linear interpolation of keyframe poses
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            assert pose["timestamp"] == sd["timestamp"]
            a, b = key_poses[max(k - 1, 0)], key_poses[k]
            w = 0.0 if a is b else (sd["timestamp"] - a["timestamp"]) / (b["timestamp"] - a["timestamp"])
            np.testing.assert_allclose(pose["translation"],
                                       (1 - w) * np.array(a["translation"]) + w * np.array(b["translation"]),
                                       atol=1e-6)
            if channel == "CAM_FRONT":
                assert (sd["width"], sd["height"]) == (160, 90)
    out, _, _ = dataset  # same seed and world, 2 samples, no sweeps
    files = sorted(p.relative_to(out) for p in (out / "samples").rglob("*") if p.is_file())
    assert len(files) == 14
    for f in files:
        assert (root / f).read_bytes() == (out / f).read_bytes(), f
