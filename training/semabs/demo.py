"""SemAbs OVSSC + VOOL on the real ARKitScenes "vn_poster" RGB-D frame (data-path demo).

Reads ``../shared/data/semantic-abstraction-arkit-vn-poster/arkit_vn_poster.pkl`` (rgb, depth [m], cam_intr,
cam_extr = camera optical-frame pose in the SemAbs workspace frame, 14 OVSSC prompts, 3 VOOL
descriptions), computes relevancy with :class:`occ_audit_ros.relevancy.RelevancyExtractor` (prompt
"a photograph of a {} in a home.", SemAbs real-data template), builds the relevancy cloud, runs the
OVSSC and VOOL networks and writes a figure.

By default the shipped checkpoints (``models/semabs/*_sim.safetensors``, trained on the simulator's
SIMULATED relevancy) are used; ``--random-nets`` uses RANDOMLY INITIALISED 3D networks instead. With
``--clip random`` (no pretrained CLIP weights exist here) the relevancy is that of a random CLIP: the
picture then proves the data path (frames, shapes, units), not the method; the figure says so in a red
banner.

Usage:
    python -m training.semabs.demo [--clip random] [--random-nets] [--out docs/img/semabs_arkit_random.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from occ_audit_ros import paths
from occ_audit_ros.safe_pickle import load_numpy_pickle
from occ_audit_ros.clip_model import load_clip
from occ_audit_ros.relevancy import RelevancyConfig, RelevancyExtractor
from occ_audit_ros.semabs.inference import SemAbsPredictor
from occ_audit_ros.semabs.model import SemAbsConfig, SemAbsOVSSC, SemAbsVOOL
from occ_audit_ros.semabs.pointcloud import relevancy_point_cloud

ARKIT_PKL = "data/semantic-abstraction-arkit-vn-poster/arkit_vn_poster.pkl"
RANDOM_NETS_BANNER = "RANDOM WEIGHTS (CLIP and SemAbs 3D networks): data-path check only, not results"
RANDOM_CLIP_BANNER = "RANDOM CLIP WEIGHTS (3D nets trained on SIMULATED relevancy): data-path check only, not results"


def load_arkit_scene(path: str | Path | None = None) -> dict:
    """The vn_poster frame as a dict (see the data README); raises FileNotFoundError when absent."""
    path = Path(path) if path else paths.shared_dir() / ARKIT_PKL
    if not path.is_file():
        raise FileNotFoundError(f"ARKit demo frame {path} not found (set OCC_AUDIT_SHARED)")
    return load_numpy_pickle(path, "Semantic Abstraction demo frame")


def run(scene: dict, predictor: SemAbsPredictor, grid: int = 32) -> dict:
    """OVSSC over the scene's prompts and VOOL over its descriptions.

    Returns:
        dict with ``cloud`` (xyz (P, 3), r (L, P), before sampling), ``ovssc`` (OVSSCResult) and ``vool``
        (list of VOOLResult), all in the workspace frame.
    """
    labels = list(scene["ovssc_obj_classes"])
    rel = predictor.relevancy(scene["rgb"], labels)
    xyz, r = relevancy_point_cloud(rel, scene["depth"], scene["cam_intr"], scene["cam_extr"], predictor.workspace)
    ov = predictor.ovssc(scene["rgb"], scene["depth"], scene["cam_intr"], scene["cam_extr"], labels, grid=grid,
                         relevancy_maps=rel)
    # one CLIP pass serves every description whose target and reference are among the prompts (same label set)
    vools = [predictor.vool(scene["rgb"], scene["depth"], scene["cam_intr"], scene["cam_extr"], t, rel_name, ref,
                            context_labels=labels, grid=grid,
                            **({"relevancy_maps": rel, "map_labels": labels} if {t, ref} <= set(labels) else {}))
             for t, rel_name, ref in scene["descriptions"]]
    return {"relevancy": rel, "cloud": (xyz, r), "ovssc": ov, "vool": vools}


def save_figure(scene: dict, out: dict, path, random_weights: bool, banner: str | None = None) -> Path:
    """2 x 3 panel figure: RGB, depth, relevancy of one label, cloud, OVSSC argmax, VOOL probability.

    ``banner``: text of the red banner drawn when ``random_weights`` (default: random CLIP and 3D networks).
    """
    from matplotlib.figure import Figure

    from occ_audit_ros.viz import _save_figure_atomically, label_palette, random_weights_banner

    labels = out["ovssc"].labels
    pal = label_palette(len(labels))
    fig = Figure(figsize=(15, 9.5))
    ax = fig.add_subplot(2, 3, 1)
    ax.imshow(scene["rgb"])
    ax.set_title("RGB (ARKitScenes vn_poster)")
    ax = fig.add_subplot(2, 3, 2)
    im = ax.imshow(scene["depth"], cmap="viridis")
    fig.colorbar(im, ax=ax, label="depth [m]")
    ax.set_title("depth")
    ax = fig.add_subplot(2, 3, 3)
    im = ax.imshow(out["relevancy"][0], cmap="jet")
    fig.colorbar(im, ax=ax, label="relevancy (x50, mean-subtracted)")
    ax.set_title(f"relevancy: '{labels[0]}'")
    xyz, r = out["cloud"]
    ax = fig.add_subplot(2, 3, 4, projection="3d")
    sub = slice(None, None, max(1, len(xyz) // 6000))
    ax.scatter(*xyz[sub].T, c=pal[np.argmax(r[:, sub], axis=0)], s=1)
    ax.set_title(f"relevancy cloud, workspace frame ({len(xyz)} pts)\ncolour = argmax label")
    ov = out["ovssc"]
    ax = fig.add_subplot(2, 3, 5, projection="3d")
    occ = ov.label_ids >= 0
    title = f"OVSSC argmax at 32^3 (empty if max logit < {ov.empty_logit:g})\n{int(occ.sum())} occupied cells"
    if random_weights:  # with random weights the cutoff is meaningless: show the 10 % most confident cells
        best = ov.logits.max(axis=0)
        n_cut = int(occ.sum())
        occ = best >= np.quantile(best, 0.9)
        title = (f"OVSSC argmax at 32^3, random weights ({n_cut} cells >= cutoff {ov.empty_logit:g}):\n"
                 "top 10% cells by max logit")
    ax.scatter(*ov.queries[occ].T, c=pal[ov.label_ids[occ].clip(0)], s=4, marker="s")
    ax.set_title(title)
    v = out["vool"][1] if len(out["vool"]) > 1 else out["vool"][0]
    ax = fig.add_subplot(2, 3, 6, projection="3d")
    p = v.probabilities
    top = p >= np.quantile(p, 0.95)
    ax.scatter(*v.queries[top].T, c=p[top], cmap="magma", s=4, marker="s")
    ax.set_title(f"VOOL top 5%: '{v.target}' {v.relation} '{v.reference}'", fontsize=9)
    for a in fig.axes:
        if hasattr(a, "set_zlim"):
            lo, up = ov.queries.min(0), ov.queries.max(0)
            a.set_xlim(lo[0], up[0]), a.set_ylim(lo[1], up[1]), a.set_zlim(lo[2], up[2])
            a.set_xlabel("x [m]"), a.set_ylabel("y [m]"), a.set_zlabel("z [m]")
    handles = [__import__("matplotlib.patches", fromlist=["Patch"]).Patch(color=pal[i], label=l[:28])
               for i, l in enumerate(labels)]
    fig.legend(handles=handles, loc="lower center", ncol=7, fontsize=8)
    if random_weights:
        random_weights_banner(fig, banner or RANDOM_NETS_BANNER, fontsize=14)
    fig.subplots_adjust(top=0.92, bottom=0.1)
    return _save_figure_atomically(fig, path, 90)


def main(argv: list[str] | None = None) -> int:
    """CLI (see module docstring); prints a ``RESULT`` line."""
    ap = argparse.ArgumentParser(description="SemAbs OVSSC + VOOL on the real ARKit vn_poster frame")
    ap.add_argument("--clip", default="random", help="CLIP model (directory, hub id, 'random', 'random-tiny')")
    ap.add_argument("--ovssc-checkpoint", default="models/semabs/ovssc_sim.safetensors")
    ap.add_argument("--vool-checkpoint", default="models/semabs/vool_sim.safetensors")
    ap.add_argument("--random-nets", action="store_true", help="randomly initialised 3D networks")
    ap.add_argument("--config", default=None, help="YAML with a 'model' section for random networks "
                                                   "(default training/config/semabs_cpu.yaml)")
    ap.add_argument("--num-points", type=int, default=None, help="default: the checkpoint card's (random nets: 80000)")
    ap.add_argument("--out", default="docs/img/semabs_arkit_random.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        scene = load_arkit_scene()
        clip = load_clip(args.clip, seed=args.seed)
    except Exception as err:  # noqa: BLE001 - CLI reports any loading failure
        print(f"error: {err}", file=sys.stderr)
        return 2
    extractor = RelevancyExtractor(clip, RelevancyConfig(prompt_template="a photograph of a {} in a home."))
    if not args.random_nets:
        kw = {} if args.num_points is None else {"num_points": args.num_points}
        predictor = SemAbsPredictor.from_checkpoints(extractor, paths.resource(args.ovssc_checkpoint),
                                                     paths.resource(args.vool_checkpoint),
                                                     random_weights=clip.random_weights, **kw)
        random_nets = False
    else:
        import yaml

        cfg_path = args.config or paths.resource("training/config/semabs_cpu.yaml")
        with open(cfg_path) as f:
            mcfg = SemAbsConfig.from_dict(yaml.safe_load(f)["model"])
        torch.manual_seed(args.seed)
        predictor = SemAbsPredictor(extractor, SemAbsOVSSC(mcfg), SemAbsVOOL(mcfg), num_points=args.num_points or 80000,
                                    empty_logit=0.0, random_weights=True)
        random_nets = True
    t0 = time.time()
    out = run(scene, predictor)
    dt = time.time() - t0
    banner = RANDOM_NETS_BANNER if random_nets else RANDOM_CLIP_BANNER
    path = save_figure(scene, out, args.out, clip.random_weights or random_nets, banner)
    xyz, _ = out["cloud"]
    print(f"wrote {path}")
    print(f"RESULT cloud_points={len(xyz)} labels={len(out['ovssc'].labels)} "
          f"occupied_cells={int((out['ovssc'].label_ids >= 0).sum())} vool_queries={len(out['vool'])} "
          f"num_points={predictor.num_points} random_clip={clip.random_weights} random_nets={random_nets} "
          f"random_weights={clip.random_weights or random_nets} seconds={dt:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
