"""Occ3D / AGO evaluation CLI: print the closed-world and open-world tables of a split.

Usage::

    python -m training.ago.eval eval --gt GT_DIR --pred PRED_DIR [--open-world STAGE]
    python -m training.ago.eval rare-classes --gt GT_DIR
    python -m training.ago.eval predict --checkpoint RUN_DIR --out PRED_DIR
        [--dataroot D --annotations PKL --tokens T1 T2 ...] [--names-only] [--identifier entropy|confidence|none]

``predict`` runs a trained checkpoint on nuScenes-format samples with the **Occ3D vocabulary given as
text** (the 17 classes with their sub-category phrases from ``config/ago_classes.yaml``, or only the
class names with ``--names-only``) and writes ``PRED_DIR/<token>.npz`` (``semantics``, labels 0-17).
A model pre-trained on the open-world label space is thus evaluated zero-shot on the full space.

Files: every ``*.npz`` under ``GT_DIR`` (Occ3D ``labels.npz`` layout: ``semantics`` uint8
(200, 200, 16), ``mask_camera`` 0/1; 255 = unobserved is also accepted) is matched with the file of
the same relative path under ``PRED_DIR`` holding ``semantics`` (labels 0-17). One confusion matrix
is summed over all pairs (:mod:`training.ago.metrics`). Exit status 2 with a message on missing
or malformed files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from occ_audit_ros.ago.classes import load_class_config
from training.ago.metrics import OccConfusion, occ3d_table, open_world_table


def _load(path: Path, key: str) -> np.ndarray:
    with np.load(path) as z:
        if key not in z:
            raise ValueError(f"{path} has no array {key!r} (has {list(z.keys())})")
        return z[key]


def evaluate_dirs(gt_dir, pred_dir, use_camera_mask: bool = True) -> OccConfusion:
    """Confusion of all GT/prediction pairs under two directories.

    Args:
        gt_dir: directory of GT ``*.npz`` (``semantics``, ``mask_camera``).
        pred_dir: directory with a prediction ``*.npz`` (``semantics``) per GT file, same relative path.
        use_camera_mask: evaluate inside ``mask_camera`` only (the Occ3D protocol).

    Returns:
        the accumulated :class:`OccConfusion`.

    Raises:
        FileNotFoundError: no GT files, or a prediction missing.
        ValueError: malformed arrays (see :meth:`OccConfusion.update`).
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    files = sorted(gt_dir.rglob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no .npz GT files under {gt_dir}")
    conf = OccConfusion()
    for f in files:
        p = pred_dir / f.relative_to(gt_dir)
        if not p.is_file() and f.name == "labels.npz":  # Occ3D / simulator layout <...>/<token>/labels.npz
            p = pred_dir / f"{f.parent.name}.npz"
        if not p.is_file():
            raise FileNotFoundError(f"prediction {p} for GT {f} not found")
        mask = _load(f, "mask_camera") if use_camera_mask else None
        conf.update(_load(p, "semantics"), _load(f, "semantics"), mask)
    return conf


def rare_classes(gt_dir, cfg) -> list[str]:
    """Object classes whose voxel frequency (inside ``mask_camera``) is below the median object-class
    frequency over the GT files of ``gt_dir`` (design choice, docs/visa.md §2). Freeze the result in the config."""
    counts = np.zeros(len(cfg.classes), dtype=np.int64)
    for f in sorted(Path(gt_dir).rglob("*.npz")):
        sem = _load(f, "semantics")
        try:
            sem = sem[_load(f, "mask_camera").astype(bool)]
        except ValueError:
            pass
        counts += np.bincount(sem[sem < len(cfg.classes)].ravel(), minlength=len(cfg.classes))
    obj = np.array(cfg.object_classes)
    med = np.median(counts[obj])
    return [cfg.classes[i] for i in obj if counts[i] < med]


def predict_dir(checkpoint, out_dir, dataroot=None, annotations=None, tokens=None, names_only=False,
                identifier: str | None = "entropy", cfg=None) -> list:
    """Write Occ3D-label predictions of a checkpoint for nuScenes-format samples.

    Returns:
        the written paths.

    Raises:
        FileNotFoundError / ValueError: missing checkpoint or data.
    """
    from occ_audit_ros.ago.infer import AgoPredictor
    from occ_audit_ros.nuscenes_io import load_keyframe

    cfg = cfg or load_class_config()
    pred = AgoPredictor.from_checkpoint(checkpoint, identifier=identifier)
    pred.set_vocabulary(list(cfg.classes) if names_only else {n: cfg.phrases[n] for n in cfg.classes})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if tokens == ["all"] or tokens == "all":
        from training.ago.data import sample_tokens

        tokens = sample_tokens(dataroot)
    for tok in tokens or [None]:
        kf = load_keyframe(dataroot, annotations, tok)
        labels = pred.predict_keyframe(kf).labels.astype(np.uint8)  # free = K = 17
        path = out / f"{kf.sample_token}.npz"
        tmp = out / f".{kf.sample_token}.tmp.npz"
        np.savez_compressed(tmp, semantics=labels)
        tmp.replace(path)
        written.append(path)
    return written


def main(argv=None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("eval", help="print Occ3D (and open-world) tables")
    ev.add_argument("--gt", required=True)
    ev.add_argument("--pred", required=True)
    ev.add_argument("--classes", default=None, help="class config YAML (default config/ago_classes.yaml)")
    ev.add_argument("--open-world", choices=["pretrain", "zeroshot", "fewshot"], default=None)
    ev.add_argument("--no-camera-mask", action="store_true", help="evaluate every observed voxel")
    rc = sub.add_parser("rare-classes", help="compute the rare object classes of a GT split")
    rc.add_argument("--gt", required=True)
    rc.add_argument("--classes", default=None)
    pr = sub.add_parser("predict", help="write Occ3D-label predictions of a checkpoint")
    pr.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    pr.add_argument("--out", required=True)
    pr.add_argument("--dataroot", default=None)
    pr.add_argument("--annotations", default=None)
    pr.add_argument("--tokens", nargs="*", default=None, help="sample tokens, or 'all'")
    pr.add_argument("--names-only", action="store_true", help="query class names, not sub-category phrases")
    pr.add_argument("--identifier", choices=["entropy", "confidence", "none"], default="entropy")
    pr.add_argument("--classes", default=None)
    args = ap.parse_args(argv)
    try:
        cfg = load_class_config(args.classes)
        if args.cmd == "predict":
            paths = predict_dir(args.checkpoint, args.out, args.dataroot, args.annotations, args.tokens,
                                args.names_only, None if args.identifier == "none" else args.identifier, cfg)
            print(f"wrote {len(paths)} predictions to {args.out}")
            return 0
        if args.cmd == "rare-classes":
            print("rare_classes:", rare_classes(args.gt, cfg))
            return 0
        conf = evaluate_dirs(args.gt, args.pred, not args.no_camera_mask)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{conf.frames} frames, {int(conf.matrix.sum())} evaluated voxels")
    print(occ3d_table(conf.matrix, cfg).format())
    print(f"rare classes: {[cfg.classes[i] for i in cfg.rare_classes]} ({cfg.rare_source})")
    if args.open_world:
        print()
        print(open_world_table(conf.matrix, cfg, args.open_world).format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
