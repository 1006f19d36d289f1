"""nuScenes keyframe -> rosbag2 (MCAP): read the bag back and compare every message with the
keyframe it came from; loader and CLI error handling."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from occ_audit_ros import conventions, paths
from occ_audit_ros.geometry import make_transform
from occ_audit_ros.nuscenes_io import lidar_depth_for_camera, load_keyframe
from occ_audit_ros.tools.nuscenes_to_bag import (
    POINTCLOUD_DTYPE,
    get_kilted_typestore,
    keyframe_messages,
    main,
    write_keyframe_bag,
)

NS_PER_US = 1000


def _expected_counts() -> dict[str, int]:
    counts = {
        conventions.TF_STATIC_TOPIC: 1,
        conventions.TF_TOPIC: 7,  # one ego pose per sensor timestamp (6 cameras + LiDAR)
        conventions.CLOCK_TOPIC: 7,  # one per distinct message time
        conventions.LIDAR_TOPIC: 1,
        conventions.GT_BOXES_TOPIC: 1,
    }
    for ch in conventions.CAMERA_CHANNELS:
        counts[conventions.image_topic(ch)] = 1
        counts[conventions.camera_info_topic(ch)] = 1
        counts[conventions.depth_topic(ch)] = 1
    return counts


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _tf_matrix(tf) -> np.ndarray:
    t, q = tf.transform.translation, tf.transform.rotation
    return make_transform([t.x, t.y, t.z], [q.w, q.x, q.y, q.z])


@pytest.fixture(scope="module")
def bag(keyframe, tmp_path_factory):
    """The keyframe's bag, read back: (bag dir, {topic: [(bag time, msg)]}, reader connections)."""
    out = write_keyframe_bag(keyframe, tmp_path_factory.mktemp("bags") / "kf0")
    typestore = get_kilted_typestore()
    messages: dict[str, list] = {}
    order = []
    with Reader(out) as reader:
        connections = list(reader.connections)
        for conn, timestamp, raw in reader.messages():
            msg = typestore.deserialize_cdr(raw, conn.msgtype)
            messages.setdefault(conn.topic, []).append((timestamp, msg))
            order.append(timestamp)
    return out, messages, connections, order


def test_bag_layout_counts_and_qos(bag):
    out, messages, connections, order = bag
    assert (out / "metadata.yaml").is_file()
    assert [p.suffix for p in out.glob("*.mcap")] == [".mcap"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left
    assert {t: len(m) for t, m in messages.items()} == _expected_counts()
    assert order == sorted(order)
    by_topic = {c.topic: c for c in connections}
    static_qos = by_topic[conventions.TF_STATIC_TOPIC].ext.offered_qos_profiles
    assert static_qos and static_qos[0].durability.name == "TRANSIENT_LOCAL"
    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["storage_identifier"] == "mcap" and info["version"] == 9


def test_bag_header_stamps_equal_bag_times_and_clock(bag, keyframe):
    _, messages, _, _ = bag
    sensor_ns = {cam.timestamp_us * NS_PER_US for cam in keyframe.cameras.values()}
    sensor_ns.add(keyframe.lidar.timestamp_us * NS_PER_US)
    clock = [_stamp_ns(m.clock) for _, m in messages[conventions.CLOCK_TOPIC]]
    assert clock == sorted(sensor_ns)
    assert [t for t, _ in messages[conventions.CLOCK_TOPIC]] == clock
    for topic, items in messages.items():
        for t, msg in items:
            if hasattr(msg, "header"):
                assert _stamp_ns(msg.header.stamp) == t, topic


def test_bag_images_depth_and_camera_info_round_trip(bag, keyframe):
    _, messages, _, _ = bag
    for ch, cam in keyframe.cameras.items():
        stamp = cam.timestamp_us * NS_PER_US
        (t_img, img), = messages[conventions.image_topic(ch)]
        (t_dep, dep), = messages[conventions.depth_topic(ch)]
        (t_inf, info), = messages[conventions.camera_info_topic(ch)]
        assert t_img == t_dep == t_inf == stamp
        for msg in (img, dep, info):
            assert msg.header.frame_id == cam.frame_id == conventions.sensor_frame(ch)
            assert (msg.width, msg.height) == (cam.width, cam.height) == (1600, 900)

        assert img.encoding == "rgb8" and img.step == cam.width * 3 and img.is_bigendian == 0
        assert img.data.tobytes() == cam.image.tobytes()

        assert dep.encoding == "32FC1" and dep.step == cam.width * 4 and dep.is_bigendian == 0
        depth = np.frombuffer(dep.data.tobytes(), dtype="<f4").reshape(cam.height, cam.width)
        expected = lidar_depth_for_camera(keyframe, ch)
        np.testing.assert_array_equal(np.isnan(depth), np.isnan(expected))
        np.testing.assert_array_equal(depth, expected)  # NaN == NaN for array_equal
        assert 2000 < np.isfinite(depth).sum() < 10000

        np.testing.assert_array_equal(info.k.reshape(3, 3), cam.K)
        np.testing.assert_array_equal(info.p.reshape(3, 4), np.c_[cam.K, np.zeros(3)])
        np.testing.assert_array_equal(info.r.reshape(3, 3), np.eye(3))
        assert info.distortion_model == "plumb_bob" and not info.d.any() and len(info.d) == 5


def test_bag_point_cloud_round_trip(bag, keyframe):
    _, messages, _, _ = bag
    (t, cloud), = messages[conventions.LIDAR_TOPIC]
    lidar = keyframe.lidar
    assert t == lidar.timestamp_us * NS_PER_US
    assert cloud.header.frame_id == conventions.sensor_frame(conventions.LIDAR_CHANNEL)
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("intensity", 12, 7, 1), ("ring", 16, 4, 1)
    ]
    assert cloud.height == 1 and cloud.width == len(lidar.points) == 34688
    assert cloud.point_step == POINTCLOUD_DTYPE.itemsize and not cloud.is_bigendian
    assert cloud.row_step == cloud.point_step * cloud.width
    pts = np.frombuffer(cloud.data.tobytes(), dtype=POINTCLOUD_DTYPE)
    for i, name in enumerate(("x", "y", "z", "intensity", "ring")):
        np.testing.assert_array_equal(pts[name].astype(np.float32), lidar.points[:, i])


def test_bag_tf_tree_complete_and_exact(bag, keyframe):
    _, messages, _, _ = bag
    (_, static_msg), = messages[conventions.TF_STATIC_TOPIC]
    static = {}
    for tf in static_msg.transforms:
        assert tf.header.frame_id == conventions.BASE_FRAME
        static[tf.child_frame_id] = _tf_matrix(tf)
    expected_children = {cam.frame_id for cam in keyframe.cameras.values()} | {"lidar_top"}
    assert set(static) == expected_children and len(static_msg.transforms) == 7
    for cam in keyframe.cameras.values():
        np.testing.assert_allclose(static[cam.frame_id], cam.T_base_cam, atol=1e-12)
    np.testing.assert_allclose(static["lidar_top"], keyframe.lidar.T_base_lidar, atol=1e-12)

    dynamic = {}
    for t, msg in messages[conventions.TF_TOPIC]:
        (tf,) = msg.transforms
        assert tf.header.frame_id == conventions.MAP_FRAME
        assert tf.child_frame_id == conventions.BASE_FRAME
        dynamic[t] = _tf_matrix(tf)
    # Every sensor frame resolves to map at its own stamp: map -> base_link(t) -> sensor.
    for cam in keyframe.cameras.values():
        T = dynamic[cam.timestamp_us * NS_PER_US] @ static[cam.frame_id]
        np.testing.assert_allclose(T, cam.T_map_cam, atol=1e-9)
    lidar = keyframe.lidar
    T = dynamic[lidar.timestamp_us * NS_PER_US] @ static["lidar_top"]
    np.testing.assert_allclose(T, lidar.T_map_base @ lidar.T_base_lidar, atol=1e-9)


def test_bag_gt_boxes_round_trip(bag, keyframe):
    _, messages, _, _ = bag
    (t, array), = messages[conventions.GT_BOXES_TOPIC]
    assert t == keyframe.lidar.timestamp_us * NS_PER_US
    assert len(array.markers) == len(keyframe.boxes) == 69
    for marker, box in zip(array.markers, keyframe.boxes, strict=True):
        assert marker.type == 1 and marker.action == 0  # CUBE, ADD
        assert marker.header.frame_id == conventions.BASE_FRAME
        assert (marker.ns, marker.id) == (box.category, box.index)
        p, q, s = marker.pose.position, marker.pose.orientation, marker.scale
        np.testing.assert_allclose([p.x, p.y, p.z], box.center, atol=1e-12)
        np.testing.assert_allclose([s.x, s.y, s.z], box.size, atol=1e-12)
        R = make_transform([0, 0, 0], [q.w, q.x, q.y, q.z])[:3, :3]
        np.testing.assert_allclose(R, box.rotation, atol=1e-12)


def test_bag_decodes_with_rclpy(bag):
    """The CDR bytes decode with the real ROS 2 Kilted message classes where they are installed."""
    serialization = pytest.importorskip("rclpy.serialization")
    out, messages, _, _ = bag
    decoded = 0
    with Reader(out) as reader:
        for conn, _, raw in reader.messages():
            pkg, _, name = conn.msgtype.split("/")
            try:
                cls = getattr(importlib.import_module(f"{pkg}.msg"), name)
            except ImportError:  # e.g. tf2_msgs has no PyPI wheel
                continue
            msg = serialization.deserialize_message(bytes(raw), cls)
            if conn.topic == conventions.GT_BOXES_TOPIC:
                assert len(msg.markers) == 69
            decoded += 1
    assert decoded >= 21  # images, depth, camera_info, points, boxes, clock


def test_bag_holds_the_conversions_messages(bag, keyframe):
    """The bag stores exactly the rclpy messages that keyframe_messages builds with
    occ_audit_ros.nodes.conversions (decoded by rclpy, compared field by field), under the type
    names rosbags registered for the connections."""
    from rclpy.serialization import deserialize_message, serialize_message

    out, _, connections, _ = bag
    built = keyframe_messages(keyframe)
    types = {c.topic: c.msgtype for c in connections}
    assert {m.topic: m.msgtype for m in built} == types
    with Reader(out) as reader:
        stored = [(conn.topic, t, bytes(raw)) for conn, t, raw in reader.messages()]
    assert len(stored) == len(built) == 35
    for (topic, t, raw), m in zip(stored, built, strict=True):
        assert (topic, t) == (m.topic, m.timestamp_ns)
        # Through the wire once, like any subscriber sees it (float32 fields such as colours round).
        on_the_wire = deserialize_message(serialize_message(m.msg), type(m.msg))
        assert deserialize_message(raw, type(m.msg)) == on_the_wire, topic


# --------------------------------------------------------------------------- errors


def test_load_keyframe_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-root"):
        load_keyframe(tmp_path / "missing-root", paths.nuscenes_annotations_pkl())
    (tmp_path / "empty-root").mkdir()
    with pytest.raises(FileNotFoundError, match="v1.0-test"):
        load_keyframe(tmp_path / "empty-root", paths.nuscenes_annotations_pkl())
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        load_keyframe(paths.nuscenes_keyframe_dir(), tmp_path / "missing.pkl")
    with pytest.raises(ValueError, match="not found"):
        load_keyframe(paths.nuscenes_keyframe_dir(), sample_token="0" * 32)


def test_cli_missing_dataroot(tmp_path, capsys):
    rc = main(["--dataroot", str(tmp_path / "nope"), "--output", str(tmp_path / "out")])
    assert rc == 1
    assert str(tmp_path / "nope") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_existing_output_and_overwrite(tmp_path, capsys):
    out = tmp_path / "bag"
    out.mkdir()
    (out / "metadata.yaml").write_text("stale")
    assert main(["--output", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "metadata.yaml").read_text() == "stale"  # untouched

    # A directory that is not a bag is never replaced, even with --overwrite.
    other = tmp_path / "not-a-bag"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["--output", str(other), "--overwrite"]) == 1
    assert "not a rosbag2 directory" in capsys.readouterr().err
    assert (other / "keep.txt").exists()

    assert main(["--output", str(out), "--overwrite"]) == 0
    summary = capsys.readouterr().out
    assert "35 messages" in summary and conventions.LIDAR_TOPIC in summary
    with Reader(out) as reader:
        assert reader.message_count == 35
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "not-a-bag"]  # no staging left


# --------------------------------------------------------------------------- whole scenes


def _read_bag(out):
    """{topic: [(bag time, rclpy msg)]} and the raw (topic, time, bytes) list, decoded by rclpy."""
    from rclpy.serialization import deserialize_message

    by_topic, raw = {}, []
    with Reader(out) as reader:
        for conn, t, data in reader.messages():
            pkg, _, name = conn.msgtype.split("/")
            cls = getattr(importlib.import_module(f"{pkg}.msg"), name)
            msg = deserialize_message(bytes(data), cls)
            by_topic.setdefault(conn.topic, []).append((t, msg))
            raw.append((conn.topic, t, bytes(data)))
    return by_topic, raw


@pytest.fixture(scope="module")
def sim_scene():
    from sim_scene import simulated_scene

    return simulated_scene(3, True)


@pytest.fixture(scope="module")
def sim_bag(sim_scene, tmp_path_factory):
    root, _ = sim_scene
    out = tmp_path_factory.mktemp("scene") / "bag"
    assert main(["--dataroot", str(root), "--scene", "sim-3-00000", "--sweeps", "--depth",
                 "--output", str(out), "--no-progress"]) == 0
    return out


def test_scene_bag_round_trip_with_sweeps(sim_scene, sim_bag):
    """A simulated 3-sample scene with sweeps: every message read back equals the one built from the
    tables (the same conversions builders), per-topic stamps are monotone and equal the header
    stamps, images are the files' JPEG bytes, and TF is complete at every camera stamp."""
    from nuscenes.nuscenes import NuScenes
    from rclpy.serialization import deserialize_message, serialize_message

    from occ_audit_ros import nuscenes_io as nio
    from occ_audit_ros.tools.nuscenes_to_bag import scene_message_plan, scene_messages

    root, cfg = sim_scene
    nusc = NuScenes(version=cfg["version"], dataroot=str(root), verbose=False)
    by_topic, raw = _read_bag(sim_bag)
    scene = nio.load_scene(nio.open_tables(root), "sim-3-00000", sweeps=True)
    built = list(scene_messages(scene_message_plan(scene, image_format="compressed", depth=True)))
    assert len(raw) == len(built)
    for (topic, t, data), m in zip(raw, built, strict=True):
        assert (topic, t) == (m.topic, m.timestamp_ns)
        assert deserialize_message(data, type(m.msg)) == deserialize_message(serialize_message(m.msg), type(m.msg))
    times = [t for _, t, _ in raw]
    assert times == sorted(times)

    per_channel = {}
    for sd in nusc.sample_data:
        per_channel.setdefault(sd["channel"], []).append(sd)
    assert {ch: len(v) for ch, v in per_channel.items()} == {
        **{ch: 3 + 2 * 5 for ch in conventions.CAMERA_CHANNELS}, conventions.LIDAR_CHANNEL: 3 + 2 * 9}
    tf_at = {t: msg.transforms[0] for t, msg in by_topic[conventions.TF_TOPIC]}
    (_, static_msg), = by_topic[conventions.TF_STATIC_TOPIC]
    static = {tf.child_frame_id: _tf_matrix(tf) for tf in static_msg.transforms}
    for ch, rows in per_channel.items():
        rows.sort(key=lambda sd: sd["timestamp"])
        if ch == conventions.LIDAR_CHANNEL:
            items = by_topic[conventions.LIDAR_TOPIC]
        else:
            items = by_topic[conventions.compressed_image_topic(ch)]
            infos = by_topic[conventions.camera_info_topic(ch)]
            depths = by_topic[conventions.depth_topic(ch)]
            assert [t for t, _ in infos] == [t for t, _ in depths] == [t for t, _ in items]
        assert [t for t, _ in items] == [sd["timestamp"] * NS_PER_US for sd in rows]
        for (t, msg), sd in zip(items, rows):
            assert _stamp_ns(msg.header.stamp) == t and msg.header.frame_id == conventions.sensor_frame(ch)
            if ch != conventions.LIDAR_CHANNEL:
                assert msg.format == "jpeg" and msg.data.tobytes() == (root / sd["filename"]).read_bytes()
            # TF complete at the stamp: map -> base_link (ego_pose of this sample_data) -> sensor.
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            T = _tf_matrix(tf_at[t]) @ static[conventions.sensor_frame(ch)]
            expected = make_transform(pose["translation"], pose["rotation"]) @ make_transform(
                cs["translation"], cs["rotation"])
            np.testing.assert_allclose(T, expected, atol=1e-9)
    for topic, items in by_topic.items():
        stamps = [t for t, _ in items]
        assert stamps == sorted(stamps), topic
    clock = [_stamp_ns(m.clock) for _, m in by_topic[conventions.CLOCK_TOPIC]]
    assert clock == sorted(set(times))


def test_scene_gt_boxes_from_sample_annotation(sim_scene, sim_bag):
    from nuscenes.nuscenes import NuScenes

    root, cfg = sim_scene
    nusc = NuScenes(version=cfg["version"], dataroot=str(root), verbose=False)
    by_topic, _ = _read_bag(sim_bag)
    arrays = by_topic[conventions.GT_BOXES_TOPIC]
    samples = sorted(nusc.sample, key=lambda s: s["timestamp"])
    assert [t for t, _ in arrays] == [s["timestamp"] * NS_PER_US for s in samples]
    for (_, array), sample in zip(arrays, samples):
        clear, *cubes = array.markers
        assert clear.action == 3 and clear.header.frame_id == conventions.MAP_FRAME  # DELETEALL
        assert len(cubes) == len(sample["anns"]) > 0
        for marker, ann_token in zip(cubes, sample["anns"]):
            ann = nusc.get("sample_annotation", ann_token)
            box = nusc.get_box(ann_token)
            assert marker.header.frame_id == conventions.MAP_FRAME
            assert (marker.ns, marker.id) == (ann["instance_token"], 0)
            attrs = [nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
            assert marker.text == " ".join([ann["category_name"]] + ([",".join(attrs)] if attrs else []))
            p, q, s = marker.pose.position, marker.pose.orientation, marker.scale
            np.testing.assert_allclose([p.x, p.y, p.z], box.center, atol=1e-9)
            np.testing.assert_allclose([s.x, s.y, s.z], [box.wlh[1], box.wlh[0], box.wlh[2]], atol=1e-6)
            R = make_transform([0, 0, 0], [q.w, q.x, q.y, q.z])[:3, :3]
            np.testing.assert_allclose(R, box.rotation_matrix, atol=1e-9)


def test_scene_raw_images_decode_like_pillow_and_are_larger(sim_scene, sim_bag, tmp_path, capsys):
    from PIL import Image

    root, _ = sim_scene
    out = tmp_path / "raw"
    assert main(["--dataroot", str(root), "--scene", "sim-3-00000", "--image-format", "raw",
                 "--output", str(out), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "3 samples, 21 keyframe and 0 sweep records" in summary and " MB, " in summary
    by_topic, _ = _read_bag(out)
    assert conventions.depth_topic("CAM_FRONT") not in by_topic  # depth only where asked
    assert not any(t.endswith("/compressed") for t in by_topic)
    rows = sorted((r for r in __import__("json").loads((root / "v1.0-test" / "sample_data.json").read_text())
                   if "/CAM_FRONT/" in r["filename"] and r["is_key_frame"]), key=lambda r: r["timestamp"])
    items = by_topic[conventions.image_topic("CAM_FRONT")]
    assert len(items) == len(rows) == 3
    for (_, img), row in zip(items, rows):
        expected = np.asarray(Image.open(root / row["filename"]).convert("RGB"))
        assert img.encoding == "rgb8" and (img.height, img.width) == expected.shape[:2]
        assert img.data.tobytes() == expected.tobytes()


def test_real_keyframe_as_a_scene(keyframe, tmp_path):
    """The embedded v1.0-test keyframe converted as scene-0061: JPEG passthrough of the real files,
    the same depth images as the keyframe bag, no boxes (the test split has no annotations), and
    the pickle's boxes in map with --annotations."""
    out = tmp_path / "s61"
    assert main(["--scene", "scene-0061", "--depth", "--output", str(out), "--no-progress"]) == 0
    by_topic, _ = _read_bag(out)
    assert conventions.GT_BOXES_TOPIC not in by_topic
    for ch, cam in keyframe.cameras.items():
        (t, img), = by_topic[conventions.compressed_image_topic(ch)]
        assert t == cam.timestamp_us * NS_PER_US
        path = next((paths.nuscenes_keyframe_dir() / "samples" / ch).glob("*.jpg"))
        assert img.data.tobytes() == path.read_bytes()
        (_, dep), = by_topic[conventions.depth_topic(ch)]
        depth = np.frombuffer(dep.data.tobytes(), dtype="<f4").reshape(cam.height, cam.width)
        np.testing.assert_array_equal(depth, lidar_depth_for_camera(keyframe, ch))
    out2 = tmp_path / "s61_boxes"
    assert main(["--scene", "scene-0061", "--annotations", str(paths.nuscenes_annotations_pkl()),
                 "--output", str(out2), "--no-progress"]) == 0
    by_topic, _ = _read_bag(out2)
    (_, array), = by_topic[conventions.GT_BOXES_TOPIC]
    cubes = array.markers[1:]
    assert len(cubes) == len(keyframe.boxes) == 69
    for marker, box in zip(cubes, keyframe.boxes):
        assert (marker.ns, marker.id, marker.header.frame_id) == (box.category, box.index, "map")
        p = marker.pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], box.center_map, atol=1e-9)


def test_scene_errors_name_what_and_where(sim_scene, tmp_path, capsys):
    import shutil

    root, _ = sim_scene
    out = tmp_path / "bag"

    def err(args):
        assert main(args + ["--output", str(out), "--no-progress"]) == 1
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        return capsys.readouterr().err

    assert "'scene-9999' not in" in err(["--dataroot", str(root), "--scene", "scene-9999"])
    assert "sim-3-00000" in err(["--dataroot", str(root), "--scene", "scene-9999"])  # names listed
    e = err(["--dataroot", str(root), "--version", "v1.0-mini", "--scene", "sim-3-00000"])
    assert str(root / "v1.0-mini") in e and "v1.0-test" in e
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    sweep = sorted((copy / "sweeps" / "CAM_BACK").glob("*.jpg"))[3]
    sweep.unlink()
    assert str(sweep) in err(["--dataroot", str(copy), "--scene", "sim-3-00000", "--sweeps"])
    assert main(["--dataroot", str(copy), "--scene", "sim-3-00000", "--output", str(out), "--no-progress"]) == 0
    shutil.rmtree(out)  # keyframes only: the missing sweep does not matter
    # A file that fails while writing: nothing is left behind (staging removed, no bag).
    bad = sorted((copy / "samples" / "CAM_FRONT").glob("*.jpg"))[2]
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert str(bad) in err(["--dataroot", str(copy), "--scene", "sim-3-00000", "--image-format", "raw"])
    (copy / "v1.0-test" / "sample_annotation.json").unlink()
    assert str(copy / "v1.0-test" / "sample_annotation.json") in err(
        ["--dataroot", str(copy), "--scene", "sim-3-00000"])
