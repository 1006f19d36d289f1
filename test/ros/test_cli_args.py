"""Command-line tools check every argument before loading a model: one line on stderr, no traceback.

Covers perception_node (parameter files and -p overrides), occ_audit_launch, occ_audit_relevancy,
bag_recorder, and nuscenes_to_bag on broken tables. "Before loading a model" is checked in the same
process: after the refused command line rclpy was never initialised and transformers' CLIP model code
was never imported, while building the ``random-tiny`` CLIP afterwards in that process does import it.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from occ_audit_ros import paths

REPO = paths.REPO_ROOT
KEYFRAME = REPO / "data" / "nuscenes-scene-0061-kf0"
CLIP_CODE = "transformers.models.clip.modeling_clip"

PROBE = """
import json, sys
import rclpy
from {module} import main
code = main({argv!r})
state = {{"code": code, "rclpy_ok": rclpy.ok(), "clip_imported": {clip!r} in sys.modules}}
from occ_audit_ros.clip_model import load_clip
load_clip("random-tiny", device="cpu")
state["clip_imported_after_load"] = {clip!r} in sys.modules
print("PROBE " + json.dumps(state))
"""


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run_module(module, argv, cwd=REPO):
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _probe(module, argv):
    """Run ``module.main(argv)`` in a fresh interpreter; its exit code, stderr and what it loaded."""
    run = subprocess.run([sys.executable, "-c", PROBE.format(module=module, argv=argv, clip=CLIP_CODE)],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    line = next(x for x in run.stdout.splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE "):]), run.stderr


def _one_error_line(stderr, needle):
    assert "Traceback" not in stderr, stderr
    lines = [x for x in stderr.strip().splitlines() if "error" in x or "launcher:" in x]
    assert len(lines) == 1 and needle in lines[0], stderr
    return lines[0]


@pytest.fixture()
def bad_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("perception_node:\n  ros__parameters:\n    labels: [car\n")
    return f


@pytest.fixture()
def wrong_values(tmp_path):
    f = tmp_path / "wrong.yaml"
    f.write_text("perception_node:\n  ros__parameters:\n    sync: {slop_s: fast}\n")
    return f


# ------------------------------------------------------------------------------------ perception_node

def test_perception_node_malformed_yaml_names_file_and_line(bad_yaml):
    run = _run_module("occ_audit_ros.nodes.perception_node", ["--ros-args", "--params-file", str(bad_yaml)])
    assert run.returncode == 2
    line = _one_error_line(run.stderr, str(bad_yaml))
    assert "not valid YAML (line 4)" in line


@pytest.mark.parametrize("extra, needle", [
    (["--params-file", "{wrong}"], "sync.slop_s"),
    (["--params-file", "/nonexistent/p.yaml"], "/nonexistent/p.yaml"),
    (["-p", "sync.slop_s:=-5.0"], "sync.slop_s must be in"),
    (["-p", "relevancy.preset:=nope"], "unknown relevancy preset 'nope'"),
    (["-p", "labls:=[car]"], "unknown parameters ['labls']"),
])
def test_perception_node_refuses_before_rclpy_and_model(extra, needle, wrong_values):
    argv = ["perception_node", "--ros-args", "--params-file", str(paths.resource("config/perception.yaml")),
            *[a.format(wrong=wrong_values) for a in extra]]
    state, err = _probe("occ_audit_ros.nodes.perception_node", argv)
    assert state["code"] == 2
    _one_error_line(err, needle)
    assert not state["rclpy_ok"] and not state["clip_imported"]
    assert state["clip_imported_after_load"]  # the marker module is what a model load imports


def test_perception_node_accepts_every_shipped_parameter_file():
    from occ_audit_ros.nodes.perception_node import check_ros_args

    for model in sorted(p.stem for p in paths.resource("config/models").glob("*.yaml")):
        check_ros_args(["perception_node", "--ros-args", "--params-file", str(paths.resource("config/perception.yaml")),
                        "--params-file", str(paths.resource(f"config/models/{model}.yaml")),
                        "--params-file", str(paths.resource("config/replay.yaml")), "-p", "use_sim_time:=true"])


# ------------------------------------------------------------------------------------ occ_audit_launch

@pytest.mark.parametrize("argv, needle", [
    (["launch/perception.launch.py", "--frames", "-1"], "--frames must be >= 0"),
    (["launch/perception.launch.py", "--timeout", "nan"], "--timeout must be > 0"),
    (["launch/none.launch.py"], "launch/none.launch.py: no such file"),
    (["launch/perception.launch.py", "model:=nope"], "nope.yaml: no such file"),
    (["launch/perception.launch.py", "params_file:={bad}"], "not valid YAML (line 4)"),
    (["launch/nuscenes_replay.launch.py", "bag:=/nonexistent/bag", "rviz:=false"], "/nonexistent/bag"),
    (["launch/nuscenes_replay.launch.py", "bag:=data", "rviz:=false", "rate:=-1"], "parameter rate"),
    (["launch/nuscenes_replay.launch.py", "bag:=data", "rviz:=false", "loop:=-2"], "parameter loop"),
])
def test_launcher_refuses_before_any_node(argv, needle, bad_yaml):
    state, err = _probe("occ_audit_ros.nodes.launcher", [a.format(bad=bad_yaml) for a in argv])
    assert state["code"] == 2
    _one_error_line(err, needle)
    assert not state["rclpy_ok"] and not state["clip_imported"]


# ------------------------------------------------------------------------------------ occ_audit_relevancy

@pytest.mark.parametrize("extra, needle", [
    (["--presets-file", "{bad}"], "not valid YAML (line 4)"),
    (["--presets-file", "/nonexistent/presets.yaml"], "--presets-file /nonexistent/presets.yaml"),
    (["--device", "bogus"], "--device 'bogus'"),
    (["--out", "{bad}"], "exists and is not a directory"),
    (["--output-stride", "0"], "output_stride"),
    (["--prompt", "no placeholder"], "'{{}}' placeholder"),
    (["/nonexistent/image.png"], "/nonexistent/image.png"),
])
def test_relevancy_cli_refuses_before_loading_clip(extra, needle, bad_yaml):
    argv = ["--labels", "car", "road", "--clip-model", "random-tiny", *[a.format(bad=bad_yaml) for a in extra]]
    state, err = _probe("occ_audit_ros.tools.relevancy_cli", argv)
    assert state["code"] == 2
    _one_error_line(err, needle.format())
    assert not state["clip_imported"]


# ------------------------------------------------------------------------------------ bag_recorder

@pytest.mark.parametrize("extra, needle", [
    (["--discovery-period", "-1"], "--discovery-period must be in"),
    (["--discovery-period", "nan"], "--discovery-period must be in"),
    (["--qos-depth", "0"], "--qos-depth must be in"),
    (["--ros-args", "-p", "qos_depth:=-5"], "qos_depth"),
    (["--ros-args", "--params-file", "{bad}"], "{bad}"),
])
def test_bag_recorder_refuses_bad_arguments(extra, needle, bad_yaml, tmp_path):
    out = tmp_path / "rec"
    run = _run_module("occ_audit_ros.nodes.bag_recorder", ["--output", str(out), *[a.format(bad=bad_yaml) for a in extra]])
    assert run.returncode == 2
    _one_error_line(run.stderr, needle.format(bad=bad_yaml))
    assert not out.exists() and not (tmp_path / "rec.partial").exists()


# ------------------------------------------------------------------------------------ nuscenes_to_bag

@pytest.mark.parametrize("table, content, needle", [
    ("sample", "[]", "is empty"),
    ("sample_data", None, "not valid JSON (line"),  # truncated
    ("ego_pose", "[]", "is empty"),
    ("calibrated_sensor", '{"a": 1}', "expected a JSON list"),
])
@pytest.mark.parametrize("mode", [[], ["--scene", "scene-0061"]], ids=["keyframe", "scene"])
def test_converter_names_the_broken_table(table, content, needle, mode, tmp_path):
    root = tmp_path / "nuscenes"
    shutil.copytree(KEYFRAME, root)
    f = root / "v1.0-test" / f"{table}.json"
    text = f.read_text()
    f.write_text(text[:len(text) // 2] if content is None else content)
    out = tmp_path / "bag"
    run = _run_module("occ_audit_ros.tools.nuscenes_to_bag",
                      ["--dataroot", str(root), "--output", str(out), "--no-progress", *mode])
    assert run.returncode == 1
    line = _one_error_line(run.stderr, str(f))
    assert needle in line
    assert not out.exists()


def test_converter_names_a_dangling_reference(tmp_path):
    root = tmp_path / "nuscenes"
    shutil.copytree(KEYFRAME, root)
    f = root / "v1.0-test" / "sample_data.json"
    rows = json.loads(f.read_text())
    rows[0]["ego_pose_token"] = "0" * 32
    f.write_text(json.dumps(rows))
    run = _run_module("occ_audit_ros.tools.nuscenes_to_bag",
                      ["--dataroot", str(root), "--output", str(tmp_path / "bag"), "--no-progress"])
    assert run.returncode == 1
    line = _one_error_line(run.stderr, str(f))
    assert "0" * 32 in line and "ego_pose.json" in line
