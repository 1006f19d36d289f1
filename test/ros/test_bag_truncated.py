"""bag_player on a truncated mcap (a recording or copy cut off): rosbags' reader refuses the file, the
player reads the intact data section sequentially, says where it stopped and plays those messages."""

import os
import random
import subprocess
import sys

import pytest
import rclpy
from rclpy.context import Context
from rosbags.rosbag2 import Reader, ReaderError

from occ_audit_ros import paths
from occ_audit_ros.nodes.bag_player import BagNotFoundError, BagPlayer, iter_truncated_mcap, salvage_mcap


@pytest.fixture(scope="module")
def full_bag(keyframe, tmp_path_factory):
    from occ_audit_ros.tools.nuscenes_to_bag import write_keyframe_bag

    return write_keyframe_bag(keyframe, tmp_path_factory.mktemp("full") / "bag")


def _truncated(full_bag, tmp_path, fraction):
    import shutil

    bag = tmp_path / f"cut{int(fraction * 100)}"
    shutil.copytree(full_bag, bag)
    (mcap,) = bag.glob("*.mcap")
    os.truncate(mcap, int(mcap.stat().st_size * fraction))
    return bag, mcap


def test_sequential_read_of_intact_bag_equals_rosbags(full_bag):
    (mcap,) = full_bag.glob("*.mcap")
    with Reader(full_bag) as reader:
        expected = sorted((c.topic, t, bytes(d)) for c, t, d in reader.messages())
    got = sorted((c.topic, t, bytes(d)) for c, t, d in iter_truncated_mcap(mcap))
    assert got == expected and len(got) > 30


def test_salvage_of_a_bag_cut_at_60_percent(full_bag, tmp_path):
    bag, mcap = _truncated(full_bag, tmp_path, 0.6)
    with pytest.raises(ReaderError):
        Reader(bag).open()  # what rosbags alone does
    (full_mcap,) = full_bag.glob("*.mcap")
    everything = [(c.topic, t, bytes(d)) for c, t, d in iter_truncated_mcap(full_mcap)]
    info = salvage_mcap(mcap)
    got = [(c.topic, t, bytes(d)) for c, t, d in iter_truncated_mcap(mcap)]
    assert 0 < info.message_count == len(got) < len(everything)
    assert got == everything[:len(got)]  # a prefix, byte for byte
    assert info.last_stamp_ns == got[-1][1]
    assert 0 < info.valid_bytes <= info.size_bytes == mcap.stat().st_size
    assert sum(c.msgcount for c in info.connections) == info.message_count
    text = info.describe()
    assert str(mcap) in text and f"byte {info.valid_bytes}" in text and f"{info.message_count} complete" in text


def test_player_plays_what_is_intact(full_bag, tmp_path):
    bag, mcap = _truncated(full_bag, tmp_path, 0.6)
    info = salvage_mcap(mcap)
    context = Context()
    rclpy.init(context=context, domain_id=random.randint(20, 200))
    try:
        player = BagPlayer(bag, context=context, rate=0.0, ack_timeout=0.0, progress_period=0.0)
        try:
            assert player.salvaged is not None and player.salvaged.message_count == info.message_count
            assert player.message_count == info.message_count
            summary = player.play()
            assert summary.messages_published == info.message_count and summary.loops_completed == 1
            per_topic = {c.topic: 0 for c in info.connections}
            for c in info.connections:
                per_topic[c.topic] += c.msgcount
            assert {t: n for t, n in summary.per_topic.items() if n} == {t: n for t, n in per_topic.items() if n}
        finally:
            player.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_cli_names_the_file_and_where_it_stopped(full_bag, tmp_path):
    bag, mcap = _truncated(full_bag, tmp_path, 0.6)
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(20, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONPATH=str(paths.REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "occ_audit_ros.nodes.bag_player", "--bag", str(bag),
                          "--as-fast-as-possible", "--ack-timeout", "0"], env=env, capture_output=True, text=True,
                         timeout=120)
    info = salvage_mcap(mcap)
    assert run.returncode == 0, run.stderr
    assert f"{mcap}: read sequentially up to byte {info.valid_bytes}" in run.stderr, run.stderr
    assert f"done: {info.message_count} messages" in run.stderr
    # cut before the first message: nothing to play -> one error naming the file, exit 2
    bag2, mcap2 = _truncated(full_bag, tmp_path, 0.01)
    run = subprocess.run([sys.executable, "-m", "occ_audit_ros.nodes.bag_player", "--bag", str(bag2)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert str(mcap2) in run.stderr and "0 complete messages" in run.stderr


def test_not_an_mcap_is_refused(tmp_path):
    f = tmp_path / "x.mcap"
    f.write_bytes(b"not an mcap at all")
    with pytest.raises(BagNotFoundError, match="x.mcap"):
        salvage_mcap(f)
