"""The perception node over real rclpy with sensor faults and broken model files: all-invalid depth,
depth not registered to its image, streams that never synchronise and one bad camera in a set each
give a warning naming the camera and pipeline diagnostics above OK, the good cameras still being
published; a pickled, non-finite or missing checkpoint and a CLIP directory without config.json end
``perception_node`` with one line naming the file and exit code 1, never a traceback."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from safetensors import safe_open
from safetensors.torch import save_file

from occ_audit_ros import paths
from occ_audit_ros.nodes.conversions import numpy_to_image
from node_checks import InputDriver, synthetic_frame, wait_until
from node_fixtures import RosContext, small_node


@pytest.fixture
def ros():
    ctx = RosContext()
    yield ctx
    ctx.close()


def _pipeline_status(node):
    return next(s for s in node.diagnostics().status if s.name.endswith("pipeline"))


def _start(ros, cameras=("CAM_FRONT",), **params):
    node = ros.add(small_node(cameras=list(cameras), **params))
    drivers = {c: ros.add(InputDriver(c, name=f"driver_{c.lower()}")) for c in cameras}
    goods = {c: synthetic_frame(c) for c in cameras}
    for c in cameras:
        drivers[c].send({"tf_static": goods[c].tf_static})
        assert drivers[c].wait_for_subscribers()
    node.diagnostics()  # start a diagnostics period
    return node, drivers, goods


def _send_until(node, drivers, frames_of, pred, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not pred():
        stamp = time.time_ns()  # stamps advance with wall time, as a live driver's do (sync.timeout_s)
        for cam, driver in drivers.items():
            driver.send(frames_of(cam, stamp))
        wait_until(pred, 0.1)  # 10 Hz: each camera speaks well within sync.timeout_s
    return pred()


def _warned(node, cam, kind):
    return node.warn_counts.get(f"sensor:{cam}:{kind}", [0, 0])[0] > 0


@pytest.mark.parametrize("fault, kind", [("nan_depth", "no_valid_depth"), ("other_frame", "unregistered_depth")])
def test_depth_faults_warn_and_raise_diagnostics(ros, fault, kind):
    """Before: an empty (or wrongly fused) grid with "ok" diagnostics and no warning."""
    node, drivers, goods = _start(ros)

    def frames(cam, stamp):
        f = goods[cam].restamped(stamp)
        if fault == "nan_depth":
            f.depth = numpy_to_image(np.full((f.depth.height, f.depth.width), np.nan, np.float32), "32FC1",
                                     stamp, f.depth.header.frame_id)
        else:
            f.depth.header.frame_id = "lidar_top"
        return {"info": f.info, "depth": f.depth, "image": f.image}

    assert _send_until(node, drivers, frames, lambda: _warned(node, "CAM_FRONT", kind)), node.counters
    status = _pipeline_status(node)
    assert status.level == DiagnosticStatus.WARN and "CAM_FRONT" in status.message, status.message


def test_streams_that_never_synchronise_are_named(ros):
    """Before: never processed, no warning, diagnostics "ok" (every topic delivers)."""
    node, drivers, goods = _start(ros)

    def frames(cam, stamp):
        f = goods[cam].restamped(stamp)
        late = goods[cam].restamped(stamp + 250_000_000)  # depth always 0.25 s late: beyond the slop
        return {"info": f.info, "depth": late.depth, "image": f.image}

    assert _send_until(node, drivers, frames, lambda: _warned(node, "CAM_FRONT", "not_synchronised")), node.counters
    assert node.counters["processed"] == 0
    status = _pipeline_status(node)
    assert status.level == DiagnosticStatus.WARN and "CAM_FRONT: not synchronised" in status.message


def test_one_bad_camera_is_named_and_the_others_published(ros):
    """Before: the whole set was skipped with a warning that did not name the camera."""
    node, drivers, goods = _start(ros, cameras=("CAM_FRONT", "CAM_BACK"))

    def frames(cam, stamp):
        f = goods[cam].restamped(stamp)
        if cam == "CAM_BACK":
            f.image.data = bytes(f.image.data)[:100]  # truncated image
        return {"info": f.info, "depth": f.depth, "image": f.image}

    assert _send_until(node, drivers, frames, lambda: node.counters["processed"] > 0
                       and _warned(node, "CAM_BACK", "bad_input")), node.counters
    assert not _warned(node, "CAM_FRONT", "bad_input")
    assert node.last_result.points_per_camera.keys() == {"CAM_FRONT"}
    status = _pipeline_status(node)
    assert status.level == DiagnosticStatus.WARN and "CAM_BACK: bad input" in status.message


def _node_cli(*params, timeout=240):
    cmd = [sys.executable, "-m", "occ_audit_ros.nodes.perception_node", "--ros-args"]
    for p in params:
        cmd += ["-p", p]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_broken_model_files_end_the_node_with_one_line(tmp_path):
    """Before: a traceback not naming the file (pickle, missing file) or a silent start (NaN weights)."""
    ovssc = paths.resource("models/semabs/ovssc_sim.safetensors")
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.zeros(3)}, pickled)
    nan = tmp_path / "nan.safetensors"
    with safe_open(str(ovssc), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    key = sorted(k for k in tensors if k.endswith("weight"))[0]
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(nan), metadata=meta)
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    (clip_dir / "model.safetensors").write_bytes(b"")
    cases = [
        (("model:=semabs", "clip_model:=random-tiny", f"semabs.ovssc_checkpoint:={pickled}"), str(pickled), "pickle"),
        (("model:=semabs", "clip_model:=random-tiny", f"semabs.ovssc_checkpoint:={nan}"), str(nan), "non-finite"),
        (("model:=ago", f"ago.checkpoint:={tmp_path / 'no_run'}"), str(tmp_path / "no_run"), "does not exist"),
        ((f"clip_model:={clip_dir}",), str(clip_dir / "config.json"), "does not exist"),
    ]
    for params, path, problem in cases:
        res = _node_cli(*params)
        assert res.returncode == 1, (params, res.returncode, res.stderr[-2000:])
        assert "Traceback" not in res.stderr, res.stderr
        line = next(ln for ln in res.stderr.splitlines() if ln.startswith("perception_node:"))
        assert path in line and problem in line, line


@pytest.mark.parametrize("args, problem", [
    (["--rate", "-1"], "--rate must be >= 0"),
    (["--loop", "-2"], "--loop must be >= 0"),
    (["--rate", "nan"], "--rate must be >= 0"),
    (["--ros-args", "--params-file", "BAD_YAML"], "invalid ROS arguments or parameter file"),
])
def test_bag_player_argument_errors_are_one_line_exit_2(tmp_path, args, problem):
    """Before: a traceback (negative rate / loop at play time, malformed YAML in rcl's parser)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("bag_player:\n  ros__parameters:\n    rate: [1,\n")
    args = [str(bad) if a == "BAD_YAML" else a for a in args]
    res = subprocess.run([sys.executable, "-m", "occ_audit_ros.nodes.bag_player", "--bag", str(tmp_path / "none"),
                          *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert problem in res.stderr.splitlines()[-1]
