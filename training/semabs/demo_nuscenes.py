"""SemAbs OVSSC + VOOL on the embedded nuScenes keyframe (data-path run; workspace and grid from YAML).

Reads the keyframe (``paths.nuscenes_keyframe_dir()``, nuscenes-devkit), takes one camera's image and the
LIDAR_TOP sweep z-buffered into it as sparse depth (:func:`occ_audit_ros.nuscenes_io.lidar_depth_for_camera`),
computes relevancy over the YAML's label set, and runs the shipped OVSSC and VOOL networks.

Frames: the network works in its workspace frame (a 2 m cube, z up). ``training/config/semabs_nuscenes.yaml`` maps a
cube of ``workspace.size`` metres of ``base_link`` centred at ``workspace.center`` onto it with the similarity
``p_ws = s * (p_base - center) + c_ws`` (``s = 2 / size``, ``c_ws`` the workspace centre), so
``T_ws_cam = T_ws_base @ T_base_cam``; results are mapped back to ``base_link`` with the inverse. The query
lattice is ``grid``^3 cell centres over the cube.

No pretrained CLIP weights exist on the machines this was built on: with ``--clip random`` every output is
from a random CLIP (and the 3D networks were trained on SIMULATED relevancy); the picture and the printed
summary say so. It proves frames, shapes and units, nothing about quality.

Usage:
    python -m training.semabs.demo_nuscenes [--config training/config/semabs_nuscenes.yaml] [--clip random] \
        [--out docs/img/semabs_nuscenes_random.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from occ_audit_ros import paths

__all__ = ["workspace_transform", "run_keyframe", "main"]


def workspace_transform(center, size: float, ws_lower, ws_upper) -> np.ndarray:
    """(4, 4) float64 similarity ``T_ws_base``: a cube of side ``size`` [m] centred at ``center`` (base_link)
    onto the SemAbs workspace box (``ws_lower``..``ws_upper``, its workspace frame).

    The scale is ``(upper - lower).max() / size``, the same on every axis.

    Raises:
        ValueError: for a non-positive size.
    """
    if size <= 0:
        raise ValueError(f"workspace.size must be > 0, got {size}")
    lo, up = np.asarray(ws_lower, np.float64), np.asarray(ws_upper, np.float64)
    s = float((up - lo).max()) / float(size)
    T = np.eye(4)
    T[:3, :3] *= s
    T[:3, 3] = (lo + up) / 2 - s * np.asarray(center, np.float64)
    return T


def run_keyframe(cfg: dict, clip_name: str = "random", seed: int = 0) -> dict:
    """Run relevancy, OVSSC and VOOL on the keyframe's camera.

    Returns:
        dict: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) float32 [m] (NaN = no LiDAR return), ``relevancy``
        (L, h, w), ``ovssc`` (OVSSCResult, queries in the workspace frame), ``vool`` (list of VOOLResult),
        ``T_ws_base`` (4, 4), ``queries_base`` (M, 3) float [m] in base_link, ``boxes`` (GT boxes),
        ``cloud_points`` (in-workspace LiDAR pixels), ``random_clip``, ``seconds``.
    """
    from occ_audit_ros.clip_model import load_clip
    from occ_audit_ros.geometry import transform_points
    from occ_audit_ros.nuscenes_io import lidar_depth_for_camera, load_keyframe
    from occ_audit_ros.relevancy import RelevancyConfig, RelevancyExtractor
    from occ_audit_ros.semabs.inference import SemAbsPredictor
    from occ_audit_ros.semabs.pointcloud import lattice_points, relevancy_point_cloud

    kf = load_keyframe(paths.nuscenes_keyframe_dir(), paths.nuscenes_annotations_pkl())
    cam = kf.cameras[cfg["camera"]]
    depth = lidar_depth_for_camera(kf, cfg["camera"], min_depth=float(cfg.get("min_depth_m", 1.0)))
    clip = load_clip(clip_name, seed=seed)
    rcfg = RelevancyConfig(prompt_template=cfg["prompt_template"], **cfg.get("relevancy", {}))
    extractor = RelevancyExtractor(clip, rcfg)
    predictor = SemAbsPredictor.from_checkpoints(extractor, paths.resource(cfg["ovssc_checkpoint"]),
                                                 paths.resource(cfg["vool_checkpoint"]),
                                                 random_weights=clip.random_weights)
    ws = predictor.workspace
    T_ws_base = workspace_transform(cfg["workspace"]["center"], float(cfg["workspace"]["size"]), ws.lower, ws.upper)
    T_ws_cam = T_ws_base @ cam.T_base_cam
    labels = list(cfg["labels"])
    t0 = time.time()
    rel = predictor.relevancy(cam.image, labels)
    xyz, _ = relevancy_point_cloud(rel, depth, cam.K, T_ws_cam, ws)
    queries = lattice_points(ws, int(cfg["grid"]))
    ov = predictor.ovssc(cam.image, depth, cam.K, T_ws_cam, labels, queries=queries, relevancy_maps=rel)
    # one CLIP pass serves every query whose target and reference are YAML labels (same label set)
    vools = [predictor.vool(cam.image, depth, cam.K, T_ws_cam, t, r, f, context_labels=labels, queries=queries,
                            **({"relevancy_maps": rel, "map_labels": labels} if {t, f} <= set(labels) else {}))
             for t, r, f in cfg.get("vool", [])]
    q_base = transform_points(np.linalg.inv(T_ws_base), queries)  # similarity: general inverse, not rigid
    return {"rgb": cam.image, "depth": depth, "relevancy": rel, "ovssc": ov, "vool": vools, "T_ws_base": T_ws_base,
            "queries_base": q_base, "boxes": kf.boxes, "cloud_points": int(len(xyz)),
            "random_clip": bool(clip.random_weights), "seconds": time.time() - t0, "labels": labels}


def save_figure(out: dict, cfg: dict, path) -> Path:
    """Picture: image + LiDAR depth, relevancy of the first label, OVSSC BEV in base_link with GT boxes,
    VOOL BEV of each description; red banner when CLIP is random."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Polygon

    from occ_audit_ros.viz import _save_figure_atomically, label_palette, random_weights_banner
    from training.semabs.demo import RANDOM_CLIP_BANNER

    labels = out["labels"]
    pal = label_palette(len(labels))
    nv = len(out["vool"])
    fig = Figure(figsize=(18, 13))
    gs = fig.add_gridspec(3, max(4, nv + 1), height_ratios=[1, 1, 0.6])
    ax = fig.add_subplot(gs[0, 0:2])
    ax.imshow(out["rgb"])
    v, u = np.nonzero(np.isfinite(out["depth"]))
    ax.scatter(u, v, c=out["depth"][v, u], s=0.5, cmap="viridis")
    ax.set_title(f"{cfg['camera']} + LiDAR depth ({len(u)} px)", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(gs[0, 2])
    im = ax.imshow(out["relevancy"][0], cmap="jet")
    fig.colorbar(im, ax=ax, fraction=0.03, orientation="horizontal", pad=0.05)
    ax.set_title(f"relevancy '{labels[0]}'", fontsize=9)
    ax.axis("off")
    q = out["queries_base"]
    ov = out["ovssc"]
    c = np.asarray(cfg["workspace"]["center"], float)
    h = float(cfg["workspace"]["size"]) / 2

    def bev(ax, title):
        for b in out["boxes"]:
            corners = b.corners_base()[:4, :2] if hasattr(b, "corners_base") else None
            if corners is not None and np.all(np.abs(corners - c[:2]) < 2.5 * h):
                ax.add_patch(Polygon(corners, fill=False, ec="k", lw=0.6))
        ax.set_xlim(c[0] - h, c[0] + h), ax.set_ylim(c[1] - h, c[1] + h)
        ax.set_aspect("equal")
        ax.set_xlabel("x base_link [m]"), ax.set_ylabel("y [m]")
        ax.set_title(title, fontsize=9)

    ax = fig.add_subplot(gs[0, 3])
    occ = ov.label_ids >= 0
    best = ov.logits.max(axis=0)
    ids = ov.logits.argmax(axis=0)
    title = f"OVSSC argmax, BEV ({int(occ.sum())} of {len(q)} cells;\nempty if max logit < {ov.empty_logit:g}); GT boxes"
    if not occ.any():  # nothing passes the card's cutoff: show the most confident cells, and say so
        occ = best >= np.quantile(best, 0.98)
        title = (f"OVSSC: no cell above the cutoff {ov.empty_logit:g}\n(max logit {best.max():.2f}); "
                 f"shown: top 2% cells by max logit")
    ax.scatter(q[occ, 0], q[occ, 1], c=pal[ids[occ]], s=3, marker="s")
    bev(ax, title)
    for i, vr in enumerate(out["vool"]):
        ax = fig.add_subplot(gs[1, i])
        p = vr.probabilities
        top = p >= max(0.5, float(np.quantile(p, 0.98)))
        ax.scatter(q[top, 0], q[top, 1], c=p[top], cmap="magma", s=3, marker="s", vmin=0, vmax=1)
        bev(ax, f"VOOL '{vr.target}' {vr.relation} '{vr.reference}'\ncells p >= max(0.5, 98th pct): {int(top.sum())}")
    # side view (x-z) of the OVSSC result
    ax = fig.add_subplot(gs[2, :])
    ax.scatter(q[occ, 0], q[occ, 2], c=pal[ids[occ]], s=3, marker="s")
    ax.set_xlabel("x base_link [m]"), ax.set_ylabel("z [m]")
    ax.set_title("OVSSC argmax, side view (x-z, base_link)", fontsize=9)
    ax.set_xlim(c[0] - h, c[0] + h), ax.set_ylim(c[2] - h, c[2] + h)
    fig.legend(handles=[Patch(color=pal[i], label=l) for i, l in enumerate(labels)], loc="lower center",
               ncol=len(labels), fontsize=8)
    if out["random_clip"]:
        random_weights_banner(fig, RANDOM_CLIP_BANNER, fontsize=13)
    fig.subplots_adjust(top=0.94, bottom=0.08, hspace=0.4, wspace=0.3)
    return _save_figure_atomically(fig, path, 80)


def main(argv=None) -> int:
    """CLI (see module docstring); prints a summary and a ``RESULT`` line."""
    ap = argparse.ArgumentParser(description="SemAbs OVSSC + VOOL on the embedded nuScenes keyframe")
    ap.add_argument("--config", default="training/config/semabs_nuscenes.yaml")
    ap.add_argument("--clip", default="random")
    ap.add_argument("--out", default="docs/img/semabs_nuscenes_random.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        with open(paths.resource(args.config)) as f:
            cfg = yaml.safe_load(f)
        out = run_keyframe(cfg, args.clip, args.seed)
    except Exception as err:  # noqa: BLE001 - CLI reports any loading failure
        print(f"error: {err}", file=sys.stderr)
        return 2
    if out["random_clip"]:
        print("!! RANDOM CLIP WEIGHTS: relevancy (and so every label below) is from a randomly initialised CLIP; "
              "the 3D networks were trained on SIMULATED relevancy. Data-path check only, NOT a perception result.")
    ov = out["ovssc"]
    counts = {l: int((ov.label_ids == i).sum()) for i, l in enumerate(out["labels"])}
    print(f"camera {cfg['camera']}: {out['cloud_points']} LiDAR pixels inside the {cfg['workspace']['size']} m "
          f"cube at {cfg['workspace']['center']} (base_link); {len(ov.label_ids)} query cells")
    print(f"OVSSC occupied cells per label (cutoff {ov.empty_logit:g}): {counts}")
    print(f"OVSSC max logit over cells: {ov.logits.max():.2f} (cutoff {ov.empty_logit:g})")
    for v in out["vool"]:
        print(f"VOOL '{v.target}' {v.relation} '{v.reference}': max p {v.probabilities.max():.3f}, "
              f"cells p>=0.5: {int((v.probabilities >= 0.5).sum())}")
    path = save_figure(out, cfg, args.out)
    print(f"picture: {path}")
    print(f"RESULT cloud_points={out['cloud_points']} occupied_cells={int((ov.label_ids >= 0).sum())} "
          f"vool_queries={len(out['vool'])} random_clip={out['random_clip']} seconds={out['seconds']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
