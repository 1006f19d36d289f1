"""The colcon install of the package (``build/colcon_ws``, built by ``scripts/colcon_check.py``,
which ``./run_tests.sh`` runs before pytest): the install tree is complete, and the perception
node runs its shipped ``semabs`` and ``ago`` configurations FROM THE INSTALL, in a subprocess with
the install's ``setup.sh`` environment and a working directory outside the repo, so its parameter
files and checkpoints can only come from ``share/occ_audit_ros/``.

When the workspace is missing or older than the sources it is rebuilt here (about a minute);
the tests are skipped only when colcon is not installed."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from node_fixtures import private_domain_id

REPO_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("colcon_check", REPO_ROOT / "scripts" / "colcon_check.py")
colcon_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colcon_check)

WORKSPACE = colcon_check.DEFAULT_WORKSPACE
PREFIX = colcon_check.install_prefix(WORKSPACE)
SHARE = PREFIX / "share" / "occ_audit_ros"


def _colcon() -> str | None:
    own = colcon_check.DEFAULT_COLCON_VENV / "bin" / "colcon"
    return str(own) if own.is_file() else shutil.which("colcon")


@pytest.fixture(scope="module")
def workspace():
    """The built workspace, rebuilt (colcon build, no colcon test) when it is missing or stale."""
    stamp = WORKSPACE / "source.sha256"
    if PREFIX.is_dir() and stamp.is_file() and stamp.read_text() == colcon_check.source_digest():
        return WORKSPACE
    colcon = _colcon()
    if colcon is None:
        pytest.skip("colcon is not installed: run scripts/colcon_check.py (installs it into build/colcon_venv) "
                    "or install python3-colcon-common-extensions")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "colcon_check.py"), "--no-colcon-test",
                             "--colcon", colcon], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return WORKSPACE


def test_install_tree_is_complete(workspace):
    report, problems = colcon_check.check_install(workspace)
    assert not problems, "\n".join(problems)
    # the files the shipped model configs name, resolved by the installed package
    text = "\n".join(report)
    for name in ("models/semabs/ovssc_sim.safetensors", "models/semabs/vool_sim.safetensors",
                 "models/ago/closed_ground_sim", "config/relevancy_presets.yaml", "config/ago_classes.yaml"):
        assert f"{name} -> {colcon_check.rel(SHARE / name)}" in text, text
    assert (SHARE / "config" / "rviz" / "occ_audit.rviz").is_file()
    assert (PREFIX / "share" / "ament_index" / "resource_index" / "packages" / "occ_audit_ros").is_file()


def test_config_references_are_found_and_bad_ones_flagged(tmp_path):
    """The checker's reading of config files: shipped-file references are collected, a file-valued
    key naming something that is not shipped is a problem, hub ids and empty values are neither."""
    config = tmp_path / "config"
    (config / "models").mkdir(parents=True)
    (config / "base.yaml").write_text(
        "node:\n  ros__parameters:\n    clip_model: openai/clip-vit-base-patch32\n"
        "    ago: {checkpoint: ''}\n    files: [data/clip-bpe/x.txt.gz, plain words]\n")
    (config / "models" / "m.yaml").write_text(
        "node:\n  ros__parameters:\n    semabs:\n      ovssc_checkpoint: models/semabs/a.safetensors\n"
        "      vool_checkpoint: weights/b.safetensors\n")
    refs, problems = colcon_check.config_references(config)
    assert refs == {"data/clip-bpe/x.txt.gz": ["config/base.yaml:node.ros__parameters.files"],
                    "models/semabs/a.safetensors": ["config/models/m.yaml:node.ros__parameters.semabs.ovssc_checkpoint"]}
    assert len(problems) == 1 and "weights/b.safetensors" in problems[0]


# Runs in the install's environment, in an empty working directory: builds the perception node with
# the shipped parameter files of one model (clip_model overridden: no CLIP weights exist offline),
# replays the embedded keyframe through it over rclpy and prints what it used, as JSON.
_CHILD = r"""
import json, os, sys, threading
model, out_dir = sys.argv[1], sys.argv[2]
import rclpy
from rclpy.executors import MultiThreadedExecutor
import occ_audit_ros
from occ_audit_ros import conventions, params, paths
from occ_audit_ros.nodes.bag_player import BagPlayer
from occ_audit_ros.nodes.perception_node import PerceptionNode
from occ_audit_ros.nuscenes_io import load_keyframe
from occ_audit_ros.tools.nuscenes_to_bag import write_keyframe_bag

files = [str(f) for f in params.params_files(model)]
rclpy.init(args=[], domain_id=int(os.environ["OCC_TEST_DOMAIN_ID"]))
cli = ["--ros-args"] + [a for f in files for a in ("--params-file", f)] + ["-p", "clip_model:=random-tiny"]
node = PerceptionNode(cli_args=cli)
checkpoints = {name: p.value for name, p in node.get_parameters_by_prefix(model).items()
               if name.endswith("checkpoint") and p.value}
keyframe = load_keyframe(paths.nuscenes_keyframe_dir(), paths.nuscenes_annotations_pkl())
bag = write_keyframe_bag(keyframe, os.path.join(out_dir, "bag"))
image_topics = [conventions.image_topic(c) for c in node.cameras]
prefixes = tuple(conventions.camera_namespace(c) + "/" for c in node.cameras)
from rosbags.rosbag2 import Reader
with Reader(bag) as reader:
    topics = sorted({c.topic for c in reader.connections if not c.topic.startswith("/cam_") or c.topic.startswith(prefixes)})
player = BagPlayer(bag, rate=0.0, topics=topics, wait_for_subscribers=image_topics, wait_for_subscribers_timeout=30.0)
executor = MultiThreadedExecutor(num_threads=4)
executor.add_node(node)
executor.add_node(player)
threading.Thread(target=executor.spin, daemon=True).start()
player.play()
processed = node.wait_for_frames(1, 300.0)
out = {
    "package_file": occ_audit_ros.__file__,
    "params_files": files,
    "model_kind": node.model_kind,
    "model_name": node.backend.model_name,
    "checkpoints": {k: [v, str(paths.resource(v))] for k, v in checkpoints.items()},
    "keyframe_dir": str(paths.nuscenes_keyframe_dir()),
    "processed": processed,
    "counters": dict(node.counters),
    "message_libraries": sorted({line.split()[-1] for line in open("/proc/self/maps") if "libocc_audit_ros__" in line}),
}
executor.shutdown()
player.destroy_node()
node.destroy_node()
rclpy.try_shutdown()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("model, checkpoint_params", [
    ("semabs", {"ovssc_checkpoint", "vool_checkpoint"}),
    ("ago", {"checkpoint"}),
])
def test_shipped_model_config_runs_from_install(workspace, tmp_path, model, checkpoint_params):
    env = colcon_check.run_python_environment(workspace)
    env["OCC_TEST_DOMAIN_ID"] = str(private_domain_id())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run([sys.executable, "-c", _CHILD, model, str(tmp_path)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-5000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))

    site = PREFIX / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert Path(out["package_file"]).is_relative_to(site), out["package_file"]
    assert out["params_files"] == [str(SHARE / "config" / "perception.yaml"),
                                   str(SHARE / "config" / "models" / f"{model}.yaml")]
    assert out["model_kind"] == model
    # the shipped configs name their checkpoints relative to the package; found in the install's share/
    assert set(out["checkpoints"]) == checkpoint_params, out["checkpoints"]
    for relative, resolved in out["checkpoints"].values():
        assert not os.path.isabs(relative) and Path(resolved) == SHARE / relative and Path(resolved).exists()
    assert out["model_name"].startswith(str(SHARE / "models" / model)), out["model_name"]
    assert Path(out["keyframe_dir"]) == SHARE / "data" / "nuscenes-scene-0061-kf0"
    # the message bindings in use are the install's own
    assert out["message_libraries"] and all(Path(p).parent == PREFIX / "lib" for p in out["message_libraries"])
    # one real frame through the node
    assert out["processed"] and out["counters"]["processed"] >= 1, out["counters"]
