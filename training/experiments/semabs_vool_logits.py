"""Where the VOOL logits lie, per relation: the band the single evaluation cutoff has to fall in.

For each item (view, description) of a split: the largest max-pooled logit of its 32^3 cells, the largest
logit on its ground-truth cells, its number of ground-truth cells, and the item's IoU at a few cutoffs
(protocol of ``training/experiments/semabs_sim.py``: queries max-pooled into cells, NaN items skipped). Prints
medians and mean IoU per relation. It shows why the cutoff sweep needs a step finer than 0.25: the
logits lie in a band about two logits wide. The relevancy is SIMULATED (training.sim.relevancy_sim).

Usage:
    python training/experiments/semabs_vool_logits.py --config training/config/semabs_sim_gpu.yaml \
        --checkpoint /tmp/semabs_final/vool_s0.safetensors [--split val] [--cutoffs 3 4 4.5 5 5.5 6]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np


from occ_audit_ros.semabs.checkpoint import load_checkpoint  # noqa: E402
from training.semabs.metrics import voxel_iou, voxel_max  # noqa: E402
from training.train_semabs import SceneSet, load_config, predict_items  # noqa: E402


def main(argv=None) -> int:
    """CLI (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--cutoffs", nargs="+", type=float, default=[3.0, 4.0, 4.5, 5.0, 5.5, 6.0])
    args = ap.parse_args(argv)
    cfg = load_config(args.config, [])
    model, task, mcfg, _, _ = load_checkpoint(args.checkpoint)
    if task != "vool":
        raise SystemExit(f"{args.checkpoint} is a {task} checkpoint; this reads VOOL logits")
    scenes = SceneSet(cfg, args.split)
    rng = np.random.default_rng([cfg["seed"], 7])  # the same input points as semabs_sim
    rows: dict[str, list] = {}
    for i in range(len(scenes)):
        for rel, q, logits, gt in predict_items(model, task, scenes[i], cfg["eval"]["num_input_points"], rng):
            pv, gv = voxel_max(q, logits, mcfg.workspace, 32), voxel_max(q, gt, mcfg.workspace, 32)
            occ = gv > 0.5
            rows.setdefault(rel, []).append((voxel_iou(pv, gv, args.cutoffs), pv[np.isfinite(pv)].max(),
                                             pv[occ].max() if occ.any() else np.nan, int(occ.sum())))
    print(f"{args.checkpoint} split={args.split}: per relation, medians over items, then mean IoU % per cutoff")
    print(f"{'relation':<17}{'items':>6}{'max logit':>10}{'max on GT':>10}{'GT cells':>9}  "
          + " ".join(f"{c:>6g}" for c in args.cutoffs))
    for rel, r in sorted(rows.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a cutoff where every item is undefined
            iou = np.nanmean(np.array([x[0] for x in r]), axis=0) * 100
        print(f"{rel:<17}{len(r):>6}{np.median([x[1] for x in r]):>10.2f}{np.nanmedian([x[2] for x in r]):>10.2f}"
              f"{np.median([x[3] for x in r]):>9.0f}  " + " ".join(f"{v:>6.1f}" for v in iou))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
