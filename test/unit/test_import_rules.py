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
