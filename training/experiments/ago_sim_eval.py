"""AGO evaluation on the driving simulator's validation split: closed-world Occ3D table and the
open-world zero-shot table, for trained checkpoints, with prompt / identifier variants.

Usage::

    python training/experiments/ago_sim_eval.py --val data_sim/ago/val --closed runs/ago_sim_closed \
        [--open runs/ago_sim_open]

Variants per checkpoint: the Occ3D vocabulary queried with sub-category phrases (synonyms) or with
class names only, with the open-world identifier (min entropy, AGO Eq. 9); for the open-world run
also phrases with the grounding branch only (no identifier).
Prints the tables; last line ``RESULT k=v ...`` (IoU in %). One run = one seed: repeat training with
other seeds and pass each run to get mean +- std (not done by this script).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


import numpy as np  # noqa: E402

from occ_audit_ros.ago.classes import load_class_config  # noqa: E402
from training.ago.data import _find_gt, sample_tokens  # noqa: E402
from occ_audit_ros.ago.infer import AgoPredictor  # noqa: E402
from training.ago.metrics import OccConfusion, occ3d_table, open_world_table  # noqa: E402
from occ_audit_ros.nuscenes_io import load_keyframe  # noqa: E402


def run(ckpt, keyframes, gts, cfg, names_only: bool, identifier):
    """Confusion of one checkpoint / variant over the split."""
    pred = AgoPredictor.from_checkpoint(ckpt, identifier=identifier)
    pred.set_vocabulary(list(cfg.classes) if names_only else {n: cfg.phrases[n] for n in cfg.classes})
    conf = OccConfusion()
    for kf, (sem, mask) in zip(keyframes, gts):
        conf.update(pred.predict_keyframe(kf).labels, sem, mask)
    return conf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--val", required=True, help="simulator dataroot (v1.0-test, sim_infos.pkl, gts/)")
    ap.add_argument("--closed", default=None, help="run dir trained with vocabulary: closed")
    ap.add_argument("--open", default=None, help="run dir trained with vocabulary: open_world_pretrain")
    args = ap.parse_args()
    cfg = load_class_config()
    val = Path(args.val)
    t0 = time.time()
    keyframes, gts = [], []
    for tok in sample_tokens(val):
        keyframes.append(load_keyframe(val, val / "sim_infos.pkl", tok))
        with np.load(_find_gt(val / "gts", tok)) as z:
            gts.append((z["semantics"], z["mask_camera"]))
    print(f"{len(keyframes)} validation keyframes from {val}")
    result = {}
    for tag, ckpt in (("closed", args.closed), ("open", args.open)):
        if not ckpt:
            continue
        variants = [(False, "entropy"), (True, "entropy")] + ([(False, None)] if tag == "open" else [])
        for names_only, ident in variants:
            if True:
                conf = run(ckpt, keyframes, gts, cfg, names_only, ident)
                key = f"{tag}_{'names' if names_only else 'phrases'}_{'ident' if ident else 'noident'}"
                print(f"\n== {key} ==")
                t = occ3d_table(conf.matrix, cfg)
                if tag == "closed" and not names_only and ident:
                    print(t.format())
                d = t.as_dict()
                result[f"{key}_miou"] = d["mIoU (17)"]
                result[f"{key}_geo_iou"] = d["geometric IoU"]
                ow = open_world_table(conf.matrix, cfg, "zeroshot")
                print(f"mIoU {d['mIoU (17)']:.2f}  mIoU* {d['mIoU* (15)']:.2f}  geometric IoU {d['geometric IoU']:.2f}")
                print(ow.format())
                if tag == "open":
                    o = ow.as_dict()
                    result[f"{key}_known"], result[f"{key}_unknown"] = o["known mIoU"], o["unknown mIoU"]
    print(f"\nwall {time.time() - t0:.1f} s")
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
