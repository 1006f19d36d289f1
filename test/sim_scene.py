"""A small simulated nuScenes scene with sweeps (training.sim.driving), generated once per test
process and shared by the converter, simulator and demo tests."""

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import yaml

from occ_audit_ros import paths

#: Tiny driving config: 160 x 90 images, a coarse LiDAR, 50 x 50 x 16 Occ3D grid.
TINY = {
    "image_scale": 0.1,
    "lidar": {"azimuth_step_deg": 2.0},
    "world": {"length": 120.0, "buildings_per_side": [2, 3], "trees_per_side": [1, 2],
              "pedestrians": [2, 3], "vehicles_per_lane": [1, 2], "cones": [1, 2],
              "barriers": [1, 2]},
    "occ3d": {"dims": [50, 50, 16], "camera_ray_stride": 4},
}


def tiny_config(samples: int, sweeps: bool) -> dict:
    """The driving config with :data:`TINY`, ``samples`` keyframes per scene and sweeps on/off."""
    from training.sim.shards import load_config, merge

    extra = dict(TINY, samples_per_scene=samples, sweeps={"enabled": bool(sweeps)})
    return merge(load_config(paths.resource("training/config/sim_driving.yaml")), extra)


@functools.lru_cache(maxsize=None)
def simulated_scene(samples: int = 3, sweeps: bool = True, seed: int = 3) -> tuple[Path, dict]:
    """(dataroot, config) of one generated scene (``sim-<seed>-00000``), removed at exit."""
    from training.sim import generate

    root = Path(tempfile.mkdtemp(prefix="sim_scene_"))
    atexit.register(shutil.rmtree, root, True)
    cfg = tiny_config(samples, sweeps)
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(dict(cfg)))
    out = root / "data"
    rc = generate.main(["driving", "--out", str(out), "--scenes", "1", "--seed", str(seed),
                        "--config", str(cfg_path), "--no-progress"])
    if rc != 0:
        raise RuntimeError(f"simulated scene generation failed (rc {rc})")
    return out, cfg
