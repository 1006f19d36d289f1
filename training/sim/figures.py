"""Pictures of simulated scenes for ``docs/simulator.md`` (matplotlib, PNG).

Usage::

    python -m training.sim.figures --indoor DIR_INDOOR --driving DIR_DRIVING --out docs/img

Reads datasets written by :mod:`.generate` and draws: indoor RGB / depth / instances / simulated
relevancy of one label, per-object GT occupancy and one VOOL description's GT (points of the grid
seen from the camera side); driving six-camera mosaic, LiDAR bird's-eye view with boxes and the
Occ3D semantics / camera mask bird's-eye views.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from occ_audit_ros.atomic import write_bytes_atomic
from training.sim.shards import read_shard

__all__ = ["indoor_figure", "driving_figure", "main"]


def _save(fig, path: Path) -> None:
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70, bbox_inches="tight")
    buf.seek(0)
    small = io.BytesIO()  # 256-colour palette PNG: a third of the size, fine for figures
    Image.open(buf).convert("RGB").quantize(256).save(small, format="PNG", optimize=True)
    write_bytes_atomic(path, small.getvalue())


def indoor_figure(shard_path, out_path, scene_key: str | None = None) -> None:
    """Draw one indoor scene (first of the shard by default) into ``out_path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.sim.indoor import grid_points, unpack_bits

    scenes = read_shard(shard_path)
    key = scene_key or sorted(scenes)[0]
    s = scenes[key]
    meta = s["meta"]
    view = meta["views"][0]
    grid = grid_points(meta["workspace"]["lower"], meta["workspace"]["upper"], meta["grid"])
    occ = unpack_bits(s["occ_grid"], len(grid))
    fig, ax = plt.subplots(2, 3, figsize=(13, 7.5))
    ax[0, 0].imshow(s["rgb"][0])
    ax[0, 0].set_title(f"RGB (scene {key})")
    im = ax[0, 1].imshow(s["depth"][0], cmap="viridis")
    fig.colorbar(im, ax=ax[0, 1], fraction=0.035, label="depth [m]")
    ax[0, 1].set_title("depth along the optical axis")
    ax[0, 2].imshow(np.where(s["instance"][0] < 0, np.nan, s["instance"][0]), cmap="tab20",
                    interpolation="nearest")
    ax[0, 2].set_title("instance ids")
    labels = view["relevancy_labels"]
    objs = meta["objects"]
    small = [o["label"] for o in objs if o["category"] not in ("floor", "wall", "table")
             and view["visible_pixels"][o["id"]] > 50]
    pick = small[0] if small else labels[0]
    k = labels.index(pick)
    im = ax[1, 0].imshow(s["relevancy"][0, k].astype(np.float32), cmap="jet")
    fig.colorbar(im, ax=ax[1, 0], fraction=0.035)
    ax[1, 0].set_title(f"SIMULATED relevancy (not CLIP): '{pick}'")
    # GT occupancy: occupied grid and random query points projected into the view.
    pts = np.concatenate([grid, s["query_points"]])
    occ_all = np.concatenate([occ, unpack_bits(s["occ_points"], len(s["query_points"]))], axis=1)
    T, K = s["T_world_cam"][0], s["K"][0]
    cam = (pts - T[:3, 3]) @ T[:3, :3]
    front = cam[:, 2] > 0.05
    uv = np.full((len(pts), 2), np.nan)
    uv[front] = (cam[front] @ K.T)[:, :2] / cam[front, 2:3]
    far_first = np.argsort(-cam[:, 2])
    non_struct = np.array([o["category"] not in ("floor", "wall") for o in objs])
    ids = np.argmax(occ_all, axis=0)
    show = occ_all.any(0) & non_struct[ids] & front
    dim = (0.35 * s["rgb"][0]).astype(np.uint8)
    sel = far_first[show[far_first]]
    ax[1, 1].imshow(dim)
    ax[1, 1].scatter(uv[sel, 0], uv[sel, 1], c=ids[sel], cmap="tab20", s=1.5,
                     vmin=0, vmax=max(len(objs) - 1, 1))
    ax[1, 1].set_xlim(0, dim.shape[1])
    ax[1, 1].set_ylim(dim.shape[0], 0)
    ax[1, 1].set_title("GT occupancy at query points (objects), projected")
    descs = view["descriptions"]
    if descs:
        d = next((i for i, dd in enumerate(descs) if dd["relation"] not in ("on",)), 0)
        gt = np.concatenate([unpack_bits(s["vool_grid"][0, d], len(grid)),
                             unpack_bits(s["vool_points"][0, d], len(s["query_points"]))])
        ref_ids = [o["id"] for o in objs if o["label"] == descs[d]["reference"]]
        ref = occ_all[ref_ids].any(0)
        ax[1, 2].imshow(dim)
        for mask, color, name in ((ref, "tab:blue", "reference"), (gt, "tab:red", "VOOL GT")):
            m = mask & front
            ax[1, 2].scatter(uv[m, 0], uv[m, 1], c=color, s=1.5, label=name)
        ax[1, 2].set_xlim(0, dim.shape[1])
        ax[1, 2].set_ylim(dim.shape[0], 0)
        ax[1, 2].legend(loc="lower right", fontsize=8, markerscale=4)
        dd = descs[d]
        ax[1, 2].set_title(f"'{dd['target']}' {dd['relation']} '{dd['reference']}'")
    for a in ax.ravel():
        a.axis("off")
    fig.tight_layout()
    _save(fig, Path(out_path))
    plt.close(fig)


def driving_figure(dataroot, out_path, sample_index: int = 1) -> None:
    """Draw one driving keyframe (cameras, LiDAR + boxes, Occ3D semantics and camera mask BEV)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from occ_audit_ros import conventions
    from occ_audit_ros.geometry import transform_points
    from occ_audit_ros.nuscenes_io import load_keyframe
    from training.sim.driving import OCC3D_CLASSES

    dataroot = Path(dataroot)
    cfg = json.loads((dataroot / "dataset.json").read_text())["config"]
    samples = json.loads((dataroot / cfg["version"] / "sample.json").read_text())
    sample = sorted(samples, key=lambda r: r["timestamp"])[sample_index]
    kf = load_keyframe(dataroot, dataroot / "sim_infos.pkl", sample_token=sample["token"])
    scene = {r["token"]: r for r in json.loads((dataroot / cfg["version"] / "scene.json").read_text())}
    name = scene[sample["scene_token"]]["name"]
    labels = np.load(dataroot / "gts" / name / sample["token"] / "labels.npz")
    fig = plt.figure(figsize=(15, 8.5))
    order = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK",
             "CAM_BACK_LEFT"]
    for i, ch in enumerate(order):
        a = fig.add_subplot(4, 3, i + 1)
        a.imshow(kf.cameras[ch].image)
        a.set_title(ch, fontsize=8)
        a.axis("off")
    a = fig.add_subplot(2, 3, 4)
    pts = transform_points(kf.lidar.T_base_lidar, kf.lidar.points[:, :3])
    a.scatter(pts[:, 0], pts[:, 1], s=0.2, c=pts[:, 2], cmap="viridis", vmin=-0.5, vmax=4)
    for b in kf.boxes:
        c = b.corners_base()[[0, 1, 5, 4, 0], :2]
        a.plot(c[:, 0], c[:, 1], "r-", lw=0.8)
    a.set_xlim(-40, 40)
    a.set_ylim(-40, 40)
    a.set_aspect("equal")
    a.set_title(f"LiDAR ({len(pts)} pts) + {len(kf.boxes)} GT boxes, base_link", fontsize=9)
    sem = labels["semantics"]
    cmap = plt.get_cmap("tab20", 18)
    # Bird's-eye view: the highest non-free voxel of each column.
    occupied = sem != 17
    top = np.where(occupied.any(2), sem[np.arange(sem.shape[0])[:, None],
                                         np.arange(sem.shape[1])[None, :],
                                         sem.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)],
                   17)
    r = cfg["occ3d"]["range"]
    ext = [r[0], r[3], r[1], r[4]]
    a = fig.add_subplot(2, 3, 5)
    a.imshow(np.where(top == 17, np.nan, top).T, origin="lower", extent=ext, cmap=cmap,
             vmin=-0.5, vmax=17.5,
             interpolation="nearest")
    present = sorted(set(np.unique(top)) - {17})
    for c in present:
        a.plot([], [], "s", color=cmap(c), label=OCC3D_CLASSES[c])
    a.legend(fontsize=6, loc="upper left", ncol=2)
    a.set_title(f"Occ3D-style GT {tuple(sem.shape)}, top view (white = free)", fontsize=9)
    a = fig.add_subplot(2, 3, 6)
    a.imshow(labels["mask_camera"].max(2).T, origin="lower", extent=ext, cmap="gray",
             interpolation="nearest")
    a.set_title("mask_camera (any layer observed)", fontsize=9)
    fig.suptitle(f"simulated {name}, sample {sample_index} (cameras with the real nuScenes "
                 f"calibration, {conventions.LIDAR_CHANNEL})", fontsize=10)
    fig.tight_layout()
    _save(fig, Path(out_path))
    plt.close(fig)


def main(argv=None) -> int:
    """Command-line entry point; returns 0 on success, 1 on a data error."""
    p = argparse.ArgumentParser(prog="python -m training.sim.figures", description=__doc__)
    p.add_argument("--indoor", type=Path, help="indoor dataset folder")
    p.add_argument("--driving", type=Path, help="driving dataset folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("--count", type=int, default=2, help="indoor scenes to draw")
    args = p.parse_args(argv)
    try:
        if args.indoor:
            shard = sorted(args.indoor.glob("indoor_*.npz"))[0]
            keys = sorted(read_shard(shard))[: args.count]
            for i, key in enumerate(keys):
                indoor_figure(shard, args.out / f"sim_indoor_{i}.png", key)
        if args.driving:
            driving_figure(args.driving, args.out / "sim_driving.png")
    except (FileNotFoundError, IndexError, ValueError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
