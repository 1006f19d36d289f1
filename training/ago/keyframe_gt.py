"""Build the Occ3D-style GT of a nuScenes keyframe (LiDAR + boxes) and draw its bird's-eye view.

Usage::

    python -m training.ago.keyframe_gt --out OUT_DIR [--dataroot D --annotations PKL
        --sample-token T --voxel-size 0.4 --pixel-stride 8]

Writes ``OUT_DIR/<sample_token>.npz`` (Occ3D ``labels.npz`` layout, :class:`OccupancyGT`) and
``OUT_DIR/<sample_token>_bev.png`` (left: top-most label per column with GT box footprints; right:
``mask_camera`` coverage). Exit status 2 with a message on missing data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from occ_audit_ros.ago.classes import FREE_LABEL, IGNORE_LABEL, OCC3D_CLASSES
from training.ago.occ_gt import OCC3D_SPEC, OccupancyGT, keyframe_occupancy_gt
from occ_audit_ros.voxel_grid import VoxelGridSpec


def bev_labels(sem: np.ndarray) -> np.ndarray:
    """(X, Y) label of the highest occupied voxel per column; 17 if the column has free voxels
    only, 255 if unobserved."""
    occ = (sem < FREE_LABEL)
    top = np.where(occ.any(2), sem.shape[2] - 1 - np.argmax(occ[:, :, ::-1], axis=2), -1)
    out = np.where((sem == FREE_LABEL).any(2), FREE_LABEL, IGNORE_LABEL).astype(np.int64)
    has = top >= 0
    out[has] = np.take_along_axis(sem, np.maximum(top, 0)[..., None], 2)[..., 0][has]
    return out


def save_gt_bev_png(gt: OccupancyGT, boxes, path) -> Path:
    """Write the two-panel BEV PNG atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from occ_audit_ros.viz import _save_figure_atomically

    bev = bev_labels(gt.semantics)
    cmap = plt.get_cmap("tab20")
    rgb = np.zeros(bev.shape + (3,))
    rgb[bev == FREE_LABEL] = 0.85
    present = [c for c in range(len(OCC3D_CLASSES)) if (bev == c).any()]
    for c in present:
        rgb[bev == c] = cmap(c % 20)[:3]
    lo, hi = gt.spec.lower, gt.spec.upper
    fig, ax = plt.subplots(1, 2, figsize=(13, 6.5))
    # image rows = x (forward up), columns = y; flip y so left (+y) is on the left
    ax[0].imshow(rgb[::-1, ::-1], extent=(hi[1], lo[1], lo[0], hi[0]), interpolation="nearest")
    for b in boxes:
        c = b.corners_base()[[0, 1, 5, 4, 0], :2]
        ax[0].plot(c[:, 1], c[:, 0], "k-", lw=0.6)
    ax[0].set_xlim(hi[1], lo[1])
    ax[0].set_ylim(lo[0], hi[0])
    ax[0].set_title("GT occupancy (top label per column), GT boxes; grey = free, black = unobserved", fontsize=9)
    ax[0].legend(handles=[Patch(color=cmap(c % 20), label=OCC3D_CLASSES[c]) for c in present],
                 loc="lower left", fontsize=7)
    cover = gt.mask_camera.any(2)
    ax[1].imshow(cover[::-1, ::-1], extent=(hi[1], lo[1], lo[0], hi[0]), cmap="gray", interpolation="nearest")
    ax[1].set_xlim(hi[1], lo[1])
    ax[1].set_title("mask_camera (any voxel of the column visible)", fontsize=9)
    for a in ax:
        a.set_xlabel("y [m] (base_link, left +)")
        a.set_ylabel("x [m] (forward +)")
    return _save_figure_atomically(fig, path, dpi=90)


def main(argv=None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dataroot", default=None)
    ap.add_argument("--annotations", default=None)
    ap.add_argument("--sample-token", default=None)
    ap.add_argument("--voxel-size", type=float, default=0.4)
    ap.add_argument("--pixel-stride", type=int, default=8)
    args = ap.parse_args(argv)
    from occ_audit_ros.nuscenes_io import load_keyframe

    try:
        kf = load_keyframe(args.dataroot, args.annotations, args.sample_token)
        spec = OCC3D_SPEC if args.voxel_size == 0.4 else VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, args.voxel_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gt = keyframe_occupancy_gt(kf, spec, args.pixel_stride)
    out = Path(args.out)
    gt.save(out / f"{kf.sample_token}.npz")
    png = save_gt_bev_png(gt, kf.boxes, out / f"{kf.sample_token}_bev.png")
    counts = {k: v for k, v in gt.counts().items() if v}
    print(f"grid {spec.dims} @ {spec.voxel_size} m; voxels: {counts}; "
          f"mask_camera {int(gt.mask_camera.sum())}; wrote {out / (kf.sample_token + '.npz')} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
