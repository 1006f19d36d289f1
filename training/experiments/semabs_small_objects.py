"""Where does a SemAbs OVSSC network put a small object? Peak cell vs the object's GT cells.

For every (view, label) item whose object covers 1..``--max-cells`` cells of the 32^3 evaluation grid,
compare the cell of the highest network logit and the cell of the highest relevancy-cloud score (the
baseline) with the centroid of the GT cells: the fraction of items whose peak lies within one cell
(Chebyshev distance), and the median offset per axis (x, y, z in cells of 6.25 cm; z up). This is the
diagnosis behind docs/semabs.md "Small objects"; the relevancy is SIMULATED.

Usage:
    python training/experiments/semabs_small_objects.py --checkpoint models/semabs/ovssc_sim.safetensors [--split val]
Last line: ``RESULT k=v ...``.
"""

from __future__ import annotations

import argparse

import numpy as np

from occ_audit_ros.paths import REPO_ROOT as ROOT  # noqa: E402

from training.experiments.semabs_sim import baseline_items  # noqa: E402

from occ_audit_ros.semabs.checkpoint import load_checkpoint  # noqa: E402
from training.semabs.metrics import voxel_max  # noqa: E402
from occ_audit_ros.semabs.model import SemAbsConfig  # noqa: E402
from training.train_semabs import SceneSet, load_config, predict_items  # noqa: E402


def peak_offsets(checkpoint: str, cfg: dict, split: str, max_cells: int, grid: int = 32):
    """(K, 3) offsets (cells) of the network's and of the baseline's peak cell from the GT centroid,
    for the K items with 1..max_cells GT cells."""
    ws = SemAbsConfig().workspace
    model, task, _, _, _ = load_checkpoint(checkpoint)
    if task != "ovssc":
        raise ValueError(f"{checkpoint} holds a {task} network; this diagnosis is for OVSSC")
    scenes = SceneSet(cfg, split)
    rng = np.random.default_rng([cfg["seed"], 7])
    net_off, base_off = [], []
    for i in range(len(scenes)):
        scene = scenes[i]
        for net, base in zip(predict_items(model, task, scene, cfg["eval"]["num_input_points"], rng),
                             baseline_items(task, scene, 0.3)):
            gt = voxel_max(net[1], net[3].astype(np.float32), ws, grid).reshape(grid, grid, grid)
            n_cells = int((gt > 0).sum())
            if not 0 < n_cells <= max_cells:
                continue
            centroid = np.argwhere(gt > 0).mean(0)
            pn = voxel_max(net[1], net[2], ws, grid).reshape(grid, grid, grid)
            pb = voxel_max(base[1], np.nan_to_num(base[2], nan=-np.inf), ws, grid).reshape(grid, grid, grid)
            net_off.append(np.array(np.unravel_index(np.argmax(pn), pn.shape)) - centroid)
            base_off.append(np.array(np.unravel_index(np.argmax(pb), pb.shape)) - centroid)
    return np.array(net_off).reshape(-1, 3), np.array(base_off).reshape(-1, 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--config", default=str(ROOT / "training/config/semabs_sim_gpu.yaml"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-cells", type=int, default=6)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    cfg = load_config(args.config, [])
    net, base = peak_offsets(args.checkpoint, cfg, args.split, args.max_cells)
    if not len(net):
        print("no small-object item in this split")
        return 1
    within = {k: float(np.mean(np.abs(o).max(1) <= 1.0 + 1e-6)) for k, o in (("net", net), ("base", base))}
    med = {k: np.median(o, 0) for k, o in (("net", net), ("base", base))}
    print(f"{len(net)} items with 1-{args.max_cells} GT cells ({args.split}); peak within 1 cell of the GT centroid: "
          f"network {within['net']:.2f}, relevancy-cloud baseline {within['base']:.2f}")
    print(f"median peak offset (x, y, z cells): network {np.round(med['net'], 2)}, baseline {np.round(med['base'], 2)}")
    print(f"RESULT items={len(net)} net_within1={within['net']:.3f} base_within1={within['base']:.3f} "
          f"net_median_dz={med['net'][2]:.2f} base_median_dz={med['base'][2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
