"""Cost of the VISA training term on a full Occ3D grid, next to a per-voxel cross-entropy.

Builds the real keyframe's targets (SIMULATED audits from the CLI into a temporary folder, LiDAR
GT voxels, grounding), then times forward + backward of (a) cross-entropy over every voxel of a
[1, 18, 200, 200, 16] logit grid (a stand-in for the backbone's L_occ) and (b) the VISA term on
the same grid, mean and standard deviation over --repeats runs after one warm-up. The model's own
forward/backward is not included (VISA adds only the loss terms).

    .venv/bin/python benchmarks/visa_loss_cost.py [--repeats 10] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from occ_audit_ros.nuscenes_io import load_keyframe
from training.visa.generate import main as generate_audits
from training.visa.grounding import keyframe_semantics_from_lidar
from training.visa.integration import VisaTerm, keyframe_targets
from training.visa.store import read_store
from occ_audit_ros.voxel_grid import VoxelGridSpec

OCC3D = VoxelGridSpec(lower=(-40.0, -40.0, -1.0), upper=(40.0, 40.0, 5.4), voxel_size=0.4)


def _time(fn, repeats: int, device: torch.device) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    keyframe = load_keyframe()
    with tempfile.TemporaryDirectory() as tmp:
        if generate_audits(["--out", tmp, "--no-progress"]) != 0:
            return 1
        audits = read_store(os.path.join(tmp, "audits.jsonl"))
    sem, _, _ = keyframe_semantics_from_lidar(keyframe, OCC3D)
    targets, stats = keyframe_targets(keyframe, sem, OCC3D, audits)
    targets = targets.to(device)
    labels = torch.as_tensor(sem.astype("int64"), device=device)[None]  # [1, X, Y, Z]
    logits = torch.randn(1, 18, *OCC3D.dims, device=device, generator=None, requires_grad=True)
    term = VisaTerm()

    def ce():
        logits.grad = None
        torch.nn.functional.cross_entropy(logits, labels).backward()

    def visa():
        logits.grad = None
        term(logits, targets, epoch=None)["total"].backward()

    t_ce = _time(ce, args.repeats, device)
    t_visa = _time(visa, args.repeats, device)
    load = os.getloadavg()[0]
    print(f"device {device}, threads {torch.get_num_threads()}, 1-min load {load:.2f}")
    print(f"rows (instance, frame) {stats['rows']}, grounded voxels {int((targets.voxel_index >= 0).sum())}, "
          f"grid voxels {OCC3D.num_voxels}")
    print(f"cross-entropy over the grid: {statistics.mean(t_ce) * 1e3:.1f} ± {statistics.stdev(t_ce) * 1e3:.1f} ms")
    print(f"VISA term:                   {statistics.mean(t_visa) * 1e3:.1f} ± {statistics.stdev(t_visa) * 1e3:.1f} ms")
    ratio = statistics.mean(t_visa) / statistics.mean(t_ce)
    print(f"RESULT device={device.type} rows={stats['rows']} ce_ms={statistics.mean(t_ce) * 1e3:.2f} "
          f"visa_ms={statistics.mean(t_visa) * 1e3:.2f} visa_over_ce={ratio:.3f} load1={load:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
