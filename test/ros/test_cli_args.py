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

#: Runs ``module.main(argv)`` for each case in one fresh interpreter (an interpreter per case costs ~10 s
#: here, most of it importing torch and rclpy). Each case's file-descriptor 2 is captured, so what rcl or a
#: C library writes counts as much as Python's stderr; an exception escaping ``main`` is printed there
#: with its traceback, and a ``SystemExit`` (argparse's error) is recorded as ``exited`` with its code. After every case: rclpy's state and whether CLIP's model code was imported; after
#: all of them the ``random-tiny`` CLIP is built, which does import it (the marker is the right one).
PROBE = """
import json, os, sys, tempfile, traceback
import rclpy
from {module} import main

def run(argv):
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        exited = False
        try:
            code = main(argv)
        except SystemExit as exc:
            code, exited = exc.code, True
        except BaseException:
            traceback.print_exc()
            code = None
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        err = captured.read().decode(errors="replace")
    return {{"code": code, "exited": exited, "stderr": err, "rclpy_ok": rclpy.ok(),
            "clip_imported": {clip!r} in sys.modules}}

cases = [run(argv) for argv in {argvs!r}]
from occ_audit_ros.clip_model import load_clip
load_clip("random-tiny", device="cpu")
print("PROBE " + json.dumps({{"cases": cases, "clip_imported_after_load": {clip!r} in sys.modules}}))
"""


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run_module(module, argv, cwd=REPO):
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _probe_all(module, argvs):
    """Run ``module.main(argv)`` for every ``argv`` of ``argvs`` in one fresh interpreter (:data:`PROBE`).

    Returns:
        (one dict per case: ``code``, ``exited``, ``stderr``, ``rclpy_ok``, ``clip_imported``;
        whether building the tiny CLIP afterwards imported the marker module).
    """
    run = subprocess.run([sys.executable, "-c", PROBE.format(module=module, argvs=argvs, clip=CLIP_CODE)],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    line = next((x for x in run.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, run.stderr
    out = json.loads(line[len("PROBE "):])
    return out["cases"], out["clip_imported_after_load"]


@pytest.fixture(scope="module")
def probes():
    """``probes(module, argvs)``: :func:`_probe_all`, run once per module and list of cases, so the
    parametrised tests of one command share one interpreter."""
    done = {}

    def get(module, argvs):
        key = (module, json.dumps(argvs))
        if key not in done:
            done[key] = _probe_all(module, argvs)
        return done[key]
    return get


def _one_error_line(stderr, needle):
    assert "Traceback" not in stderr, stderr
    lines = [x for x in stderr.strip().splitlines() if "error" in x or "launcher:" in x]
    assert len(lines) == 1 and needle in lines[0], stderr
    return lines[0]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    """Where the refused commands were told to write (nothing may appear there)."""
    return tmp_path_factory.mktemp("cli_out")


@pytest.fixture(scope="module")
def bad_yaml(tmp_path_factory):
    f = tmp_path_factory.mktemp("cli") / "bad.yaml"
    f.write_text("perception_node:\n  ros__parameters:\n    labels: [car\n")
    return f


@pytest.fixture(scope="module")
def wrong_values(tmp_path_factory):
    f = tmp_path_factory.mktemp("cli") / "wrong.yaml"
    f.write_text("perception_node:\n  ros__parameters:\n    sync: {slop_s: fast}\n")
    return f


# ------------------------------------------------------------------------------------ perception_node

def test_perception_node_malformed_yaml_names_file_and_line(bad_yaml):
    run = _run_module("occ_audit_ros.nodes.perception_node", ["--ros-args", "--params-file", str(bad_yaml)])
    assert run.returncode == 2
    line = _one_error_line(run.stderr, str(bad_yaml))
    assert "not valid YAML (line 4)" in line


PERCEPTION_CASES = [
    (["--params-file", "{wrong}"], "sync.slop_s"),
    (["--params-file", "/nonexistent/p.yaml"], "/nonexistent/p.yaml"),
    (["-p", "sync.slop_s:=-5.0"], "sync.slop_s must be in"),
    (["-p", "relevancy.preset:=nope"], "unknown relevancy preset 'nope'"),
    (["-p", "labls:=[car]"], "unknown parameters ['labls']"),
]


@pytest.mark.parametrize("case", range(len(PERCEPTION_CASES)), ids=[n for _, n in PERCEPTION_CASES])
def test_perception_node_refuses_before_rclpy_and_model(case, probes, wrong_values):
    argvs = [["perception_node", "--ros-args", "--params-file", str(paths.resource("config/perception.yaml")),
              *[a.format(wrong=wrong_values) for a in extra]] for extra, _ in PERCEPTION_CASES]
    states, clip_after_load = probes("occ_audit_ros.nodes.perception_node", argvs)
    state, needle = states[case], PERCEPTION_CASES[case][1]
    assert state["code"] == 2 and not state["exited"]  # main returns its status
    _one_error_line(state["stderr"], needle)
    assert not state["rclpy_ok"] and not state["clip_imported"]
    assert clip_after_load  # the marker module is what a model load imports


def test_perception_node_accepts_every_shipped_parameter_file():
    from occ_audit_ros.nodes.perception_node import check_ros_args

    for model in sorted(p.stem for p in paths.resource("config/models").glob("*.yaml")):
        check_ros_args(["perception_node", "--ros-args", "--params-file", str(paths.resource("config/perception.yaml")),
                        "--params-file", str(paths.resource(f"config/models/{model}.yaml")),
                        "--params-file", str(paths.resource("config/replay.yaml")), "-p", "use_sim_time:=true"])


# ------------------------------------------------------------------------------------ occ_audit_launch

LAUNCH_CASES = [
    (["launch/perception.launch.py", "--frames", "-1"], "--frames must be >= 0"),
    (["launch/perception.launch.py", "--timeout", "nan"], "--timeout must be > 0"),
    (["launch/none.launch.py"], "launch/none.launch.py: no such file"),
    (["launch/perception.launch.py", "model:=nope"], "nope.yaml: no such file"),
    (["launch/perception.launch.py", "params_file:={bad}"], "not valid YAML (line 4)"),
    (["launch/nuscenes_replay.launch.py", "bag:=/nonexistent/bag", "rviz:=false"], "/nonexistent/bag"),
    (["launch/nuscenes_replay.launch.py", "bag:=data", "rviz:=false", "rate:=-1"], "parameter rate"),
    (["launch/nuscenes_replay.launch.py", "bag:=data", "rviz:=false", "loop:=-2"], "parameter loop"),
]


@pytest.mark.parametrize("case", range(len(LAUNCH_CASES)), ids=[n for _, n in LAUNCH_CASES])
def test_launcher_refuses_before_any_node(case, probes, bad_yaml):
    argvs = [[a.format(bad=bad_yaml) for a in argv] for argv, _ in LAUNCH_CASES]
    states, _ = probes("occ_audit_ros.nodes.launcher", argvs)
    state = states[case]
    assert state["code"] == 2 and not state["exited"]
    _one_error_line(state["stderr"], LAUNCH_CASES[case][1])
    assert not state["rclpy_ok"] and not state["clip_imported"]


# ------------------------------------------------------------------------------------ occ_audit_relevancy

RELEVANCY_CASES = [
    (["--presets-file", "{bad}"], "not valid YAML (line 4)"),
    (["--presets-file", "/nonexistent/presets.yaml"], "--presets-file /nonexistent/presets.yaml"),
    (["--device", "bogus"], "--device 'bogus'"),
    (["--out", "{bad}"], "exists and is not a directory"),
    (["--output-stride", "0"], "output_stride"),
    (["--prompt", "no placeholder"], "'{{}}' placeholder"),
    (["/nonexistent/image.png"], "/nonexistent/image.png"),
]


@pytest.mark.parametrize("case", range(len(RELEVANCY_CASES)), ids=[n for _, n in RELEVANCY_CASES])
def test_relevancy_cli_refuses_before_loading_clip(case, probes, bad_yaml):
    argvs = [["--labels", "car", "road", "--clip-model", "random-tiny", *[a.format(bad=bad_yaml) for a in extra]]
             for extra, _ in RELEVANCY_CASES]
    states, _ = probes("occ_audit_ros.tools.relevancy_cli", argvs)
    state = states[case]
    assert state["code"] == 2 and not state["exited"]
    _one_error_line(state["stderr"], RELEVANCY_CASES[case][1].format())
    assert not state["clip_imported"]


# ------------------------------------------------------------------------------------ bag_recorder

RECORDER_CASES = [
    (["--discovery-period", "-1"], "--discovery-period must be in"),
    (["--discovery-period", "nan"], "--discovery-period must be in"),
    (["--qos-depth", "0"], "--qos-depth must be in"),
    (["--ros-args", "-p", "qos_depth:=-5"], "qos_depth"),
    (["--ros-args", "--params-file", "{bad}"], "{bad}"),
]


@pytest.mark.parametrize("case", range(len(RECORDER_CASES)), ids=[n for _, n in RECORDER_CASES])
def test_bag_recorder_refuses_bad_arguments(case, probes, bad_yaml, out_dir):
    argvs = [["--output", str(out_dir / f"rec{i}"), *[a.format(bad=bad_yaml) for a in extra]]
             for i, (extra, _) in enumerate(RECORDER_CASES)]
    states, _ = probes("occ_audit_ros.nodes.bag_recorder", argvs)
    state = states[case]
    assert state["code"] == 2  # argparse's own errors exit with 2, as from the shell
    _one_error_line(state["stderr"], RECORDER_CASES[case][1].format(bad=bad_yaml))
    assert not (out_dir / f"rec{case}").exists() and not (out_dir / f"rec{case}.partial").exists()


# ------------------------------------------------------------------------------------ nuscenes_to_bag

BROKEN_TABLES = [
    ("sample", "[]", "is empty"),
    ("sample_data", None, "not valid JSON (line"),  # truncated
    ("ego_pose", "[]", "is empty"),
    ("calibrated_sensor", '{"a": 1}', "expected a JSON list"),
]
MODES = {"keyframe": [], "scene": ["--scene", "scene-0061"]}
#: (mode, row of BROKEN_TABLES)
CONVERTER_CASES = [(mode, row) for mode in MODES for row in range(len(BROKEN_TABLES))]


@pytest.fixture(scope="module")
def broken_tables(tmp_path_factory):
    """Per :data:`BROKEN_TABLES` row: a copy of the embedded nuScenes data root with that table broken,
    and the broken table's path."""
    out = []
    for i, (table, content, _) in enumerate(BROKEN_TABLES):
        root = tmp_path_factory.mktemp(f"broken{i}") / "nuscenes"
        shutil.copytree(KEYFRAME, root)
        f = root / "v1.0-test" / f"{table}.json"
        text = f.read_text()
        f.write_text(text[:len(text) // 2] if content is None else content)
        out.append((root, f))
    return out


@pytest.mark.parametrize("case", range(len(CONVERTER_CASES)),
                         ids=[f"{m}-{BROKEN_TABLES[row][0]}" for m, row in CONVERTER_CASES])
def test_converter_names_the_broken_table(case, probes, broken_tables, out_dir):
    argvs = [["--dataroot", str(broken_tables[row][0]), "--output", str(out_dir / f"bag{i}"), "--no-progress",
              *MODES[mode]] for i, (mode, row) in enumerate(CONVERTER_CASES)]
    states, _ = probes("occ_audit_ros.tools.nuscenes_to_bag", argvs)
    state, row = states[case], CONVERTER_CASES[case][1]
    assert state["code"] == 1
    line = _one_error_line(state["stderr"], str(broken_tables[row][1]))
    assert BROKEN_TABLES[row][2] in line
    assert not (out_dir / f"bag{case}").exists()


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
