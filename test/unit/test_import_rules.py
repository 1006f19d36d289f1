"""What the robot-side modules pull in when imported: checked in a fresh interpreter (``sys.modules``
of a subprocess), so modules imported earlier by other tests cannot hide a dependency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: module -> top-level packages it must not import (directly or through anything it imports).
FORBIDDEN = {
    "occ_audit_ros.palette": ("matplotlib", "training", "rclpy"),
    "occ_audit_ros.geometry": ("matplotlib", "training", "rclpy"),
    "occ_audit_ros.nodes.conversions": ("matplotlib", "training", "open3d"),
    "occ_audit_ros.nodes.perception_node": ("matplotlib", "training", "open3d"),
    "occ_audit_ros.tools.nuscenes_to_bag": ("matplotlib", "training", "open3d"),
}


def modules_after_import(module: str) -> set[str]:
    """Names in ``sys.modules`` after ``import module`` in a new interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named 'rclpy'" in proc.stderr:
        pytest.skip(f"{module} needs rclpy, which is not installed")
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert module in loaded
    return loaded


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_does_not_import_forbidden_packages(module):
    found = top_level(modules_after_import(module)) & set(FORBIDDEN[module])
    assert not found, f"importing {module} imports {sorted(found)}"


def test_probe_sees_indirect_imports():
    """The check can fail: viz draws with matplotlib, and importing it is seen."""
    assert "matplotlib" in top_level(modules_after_import("occ_audit_ros.viz"))


def _imported_top_level_names(path):
    """Top-level package names a source file imports (absolute imports, anywhere in the file)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_runtime_module_imports_training_and_rclpy_stays_in_ros_modules():
    """The house rule, on every source file: nothing under occ_audit_ros/ imports ``training``; rclpy
    (and the ROS message packages) only in occ_audit_ros/nodes and occ_audit_ros/tools."""
    from occ_audit_ros import paths

    package = paths.REPO_ROOT / "occ_audit_ros"
    files = [p for p in package.rglob("*.py") if not {"msg", "srv", "_generated"} & set(p.relative_to(package).parts)]
    assert len(files) > 40
    ros_names = {"rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "visualization_msgs", "tf2_msgs",
                 "diagnostic_msgs", "rosgraph_msgs", "builtin_interfaces", "rcl_interfaces", "tf2_ros"}
    bad_training, bad_ros = [], []
    for path in files:
        names = _imported_top_level_names(path)
        rel = path.relative_to(package)
        if "training" in names:
            bad_training.append(str(rel))
        if names & ros_names and rel.parts[0] not in ("nodes", "tools"):
            bad_ros.append(f"{rel}: {sorted(names & ros_names)}")
    assert bad_training == [], bad_training
    assert bad_ros == [], bad_ros
