"""The base_link -> SemAbs workspace similarity of the nuScenes data-path run (training/config/semabs_nuscenes.yaml)."""

from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

from training.semabs.demo_nuscenes import workspace_transform  # noqa: E402


def test_workspace_transform_maps_the_cube_onto_the_workspace():
    cfg = yaml.safe_load((ROOT / "training/config/semabs_nuscenes.yaml").read_text())
    lo, up = np.array([-1.0, -1.0, -0.1]), np.array([1.0, 1.0, 1.9])
    c, size = np.array(cfg["workspace"]["center"], float), float(cfg["workspace"]["size"])
    T = workspace_transform(c, size, lo, up)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * size / 2 + c
    mapped = corners @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(mapped.min(0), lo, atol=1e-9)
    np.testing.assert_allclose(mapped.max(0), up, atol=1e-9)
    # isotropic scale 2 / size, no rotation; the ground (z = 0 in base_link) lands on the workspace floor region
    np.testing.assert_allclose(T[:3, :3], np.eye(3) * 2.0 / size)
    ground = T[:3, :3] @ np.array([c[0], c[1], 0.0]) + T[:3, 3]
    assert lo[2] <= ground[2] < lo[2] + 0.2
    with pytest.raises(ValueError):
        workspace_transform(c, 0.0, lo, up)
