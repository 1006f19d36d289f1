"""Write simulated driving sequences in the nuScenes table format (+ Occ3D labels, + MMDet3D infos).

Layout under the output folder ``DIR`` (nuScenes devkit ``NuScenes(version, dataroot=DIR)``):

* ``DIR/<version>/*.json``: category, attribute, visibility, sensor (the official rows, copied from
  the embedded real keyframe), calibrated_sensor (the real calibration, camera intrinsics scaled),
  log, map, scene, sample, sample_data, ego_pose, instance, sample_annotation.
* ``DIR/samples/<CHANNEL>/sim-<seed>-<scene>__<CHANNEL>__<timestamp>.jpg|.pcd.bin``: keyframe
  images and LiDAR sweeps (float32 x, y, z, intensity, ring in the lidar_top frame).
* ``DIR/sweeps/<CHANNEL>/...``: with ``sweeps.enabled`` in the config, the non-key ``sample_data``
  between keyframes (cameras at ``sweeps.camera_hz``, default 12 Hz; LIDAR_TOP at
  ``sweeps.lidar_hz``, default 20 Hz), each with its own ``ego_pose``, chained by ``prev``/``next``
  per channel and belonging to the next keyframe's sample.
* ``DIR/gts/<scene name>/<sample token>/labels.npz``: Occ3D-style ``semantics``, ``mask_lidar``,
  ``mask_camera`` (uint8, ego frame, grid of the config's ``occ3d`` section).
* ``DIR/sim_infos.pkl``: MMDetection3D "info v1.1" pickle (boxes in the LiDAR frame) so
  :func:`occ_audit_ros.nuscenes_io.load_keyframe` and ``tools.nuscenes_to_bag`` read the boxes.
* ``DIR/.parts/scene_<index>.json``: finished sequences' table rows (resume / multi-process); the
  tables are (re)merged from them by whichever process finds all sequences done.

Each file is written atomically; a sequence counts as done once its part file exists.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from occ_audit_ros import conventions, paths
from occ_audit_ros.geometry import invert_transform, matrix_to_quaternion, transform_points, yaw_to_matrix
from training.sim.driving import THINGS, build_world, sensor_rig, simulate_sample, simulate_sweep
from occ_audit_ros.atomic import write_bytes_atomic
from training.sim.shards import check_dataset_record, scene_rng, token, write_npz

__all__ = ["write_driving_dataset", "MMDET_CATEGORIES"]

#: MMDetection3D nuScenes class ids (as in the embedded real annotation pickle).
MMDET_CATEGORIES = {"car": 0, "truck": 1, "trailer": 2, "bus": 3, "construction_vehicle": 4,
                    "bicycle": 5, "motorcycle": 6, "pedestrian": 7, "traffic_cone": 8,
                    "barrier": 9}
_STATIC_TABLES = ("category", "attribute", "visibility", "sensor")
_BASE_TIME_US = 1_600_000_000_000_000


def _static_rows() -> dict[str, list]:
    """Official category / attribute / visibility / sensor rows from the embedded keyframe."""
    root = paths.nuscenes_keyframe_dir() / "v1.0-test"
    return {t: json.loads((root / f"{t}.json").read_text()) for t in _STATIC_TABLES}


def _visibility_token(v: float) -> str:
    """nuScenes visibility bin token: '1' v0-40, '2' v40-60, '3' v60-80, '4' v80-100."""
    return "1" if v < 0.4 else "2" if v < 0.6 else "3" if v < 0.8 else "4"


def _attribute(cls: str, speed: float) -> str | None:
    if cls in ("pedestrian",):
        return "pedestrian.moving" if speed > 0.2 else "pedestrian.standing"
    if cls in ("bicycle", "motorcycle"):
        return "cycle.with_rider"
    if cls in ("traffic_cone", "barrier"):
        return None
    return "vehicle.moving" if speed > 0.2 else "vehicle.parked"


def _quat_yaw(yaw: float) -> list[float]:
    """nuScenes ``(w, x, y, z)`` quaternion of a heading ``yaw`` [rad] about +z (``w >= 0``)."""
    return matrix_to_quaternion(yaw_to_matrix(yaw)).tolist()


def _write_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    write_bytes_atomic(path, buf.getvalue())


def _sweep_times(cfg: dict, dt_us: int) -> list[tuple[int, list[str]]]:
    """Sweep offsets after a keyframe [us] strictly inside the keyframe interval, with the channels
    firing at each: cameras at ``sweeps.camera_hz`` (12), LIDAR_TOP at ``sweeps.lidar_hz`` (20).
    Empty unless ``sweeps.enabled``."""
    sweeps = cfg.get("sweeps") or {}
    if not sweeps.get("enabled", False):
        return []
    times: dict[int, list[str]] = {}
    for hz, chs in ((float(sweeps.get("camera_hz", 12.0)), list(conventions.CAMERA_CHANNELS)),
                    (float(sweeps.get("lidar_hz", 20.0)), [conventions.LIDAR_CHANNEL])):
        m = int(round(dt_us * hz / 1e6))
        for j in range(1, m):
            times.setdefault(int(round(j * dt_us / m)), []).extend(chs)
    return sorted(times.items())


def _link_sample_data(sample_data: list[dict], calibrated_sensor: list[dict]) -> None:
    """Set ``prev`` / ``next`` of each channel's ``sample_data`` chain in timestamp order."""
    by_calib: dict[str, list[dict]] = {}
    for sd in sample_data:
        by_calib.setdefault(sd["calibrated_sensor_token"], []).append(sd)
    for chain in by_calib.values():
        chain.sort(key=lambda sd: sd["timestamp"])
        for a, b in zip(chain, chain[1:]):
            a["next"], b["prev"] = b["token"], a["token"]


def _sequence(cfg: dict, out: Path, idx: int, seed: int, rig: dict, static: dict) -> dict:
    """Simulate and write one sequence's files; returns its table rows and info entries."""
    rng = scene_rng(seed, idx)
    world = build_world(cfg["world"], rng)
    name = f"sim-{seed}-{idx:05d}"
    tok = lambda *p: token("training.sim", seed, idx, *p)  # noqa: E731
    sensors = {r["channel"]: r["token"] for r in static["sensor"]}
    cats = {r["name"]: r["token"] for r in static["category"]}
    attrs = {r["name"]: r["token"] for r in static["attribute"]}
    log_token, scene_token = tok("log"), tok("scene")
    rows = {k: [] for k in ("calibrated_sensor", "ego_pose", "sample", "sample_data",
                            "sample_annotation", "instance")}
    rows["log"] = [{"token": log_token, "logfile": name, "vehicle": "sim",
                    "date_captured": "2020-09-13", "location": "simulated"}]
    channels = list(conventions.CAMERA_CHANNELS) + [conventions.LIDAR_CHANNEL]
    calib = {}
    for ch in channels:
        if ch == conventions.LIDAR_CHANNEL:
            T, K = rig["T_base_lidar"], []
        else:
            T, K = rig["cameras"][ch]["T_base_cam"], rig["cameras"][ch]["K"].tolist()
        calib[ch] = tok("calib", ch)
        rows["calibrated_sensor"].append({
            "token": calib[ch], "sensor_token": sensors[ch], "translation": T[:3, 3].tolist(),
            "rotation": matrix_to_quaternion(T[:3, :3]).tolist(), "camera_intrinsic": K})
    n = int(cfg["samples_per_scene"])
    dt = float(cfg["sample_interval_s"])
    dt_us = int(round(dt * 1e6))
    t0_us = _BASE_TIME_US + idx * 100_000_000
    sample_tokens = [tok("sample", k) for k in range(n)]
    sweep_times = _sweep_times(cfg, dt_us)
    sweep_rng = scene_rng(seed, idx, 1)  # sweeps never change the keyframes' bytes
    ann_by_track: dict[int, list[dict]] = {}
    infos = []

    def add_record(ch: str, sd_token: str, sample_token: str, ts: int, T_mb: np.ndarray, key: bool,
                   image=None, lidar=None) -> None:
        folder = "samples" if key else "sweeps"
        if ch == conventions.LIDAR_CHANNEL:
            fn = f"{folder}/{ch}/{name}__{ch}__{ts}.pcd.bin"
            write_bytes_atomic(out / fn, lidar.astype(np.float32).tobytes())
            w = h = 0
            fmt = "pcd"
        else:
            fn = f"{folder}/{ch}/{name}__{ch}__{ts}.jpg"
            _write_jpeg(out / fn, image, cfg["jpeg_quality"])
            h, w = image.shape[:2]
            fmt = "jpg"
        rows["ego_pose"].append({"token": sd_token, "timestamp": ts,
                                 "rotation": matrix_to_quaternion(T_mb[:3, :3]).tolist(),
                                 "translation": T_mb[:3, 3].tolist()})
        rows["sample_data"].append({
            "token": sd_token, "sample_token": sample_token, "ego_pose_token": sd_token,
            "calibrated_sensor_token": calib[ch], "timestamp": ts, "fileformat": fmt,
            "is_key_frame": key, "height": h, "width": w, "filename": fn, "prev": "", "next": ""})

    for k in range(n):
        t = k * dt
        ts = t0_us + k * dt_us
        if k:  # sweeps between keyframe k - 1 and k belong to sample k (the next keyframe)
            for offset_us, chs in sweep_times:
                sts = t0_us + (k - 1) * dt_us + offset_us
                sweep = simulate_sweep(world, (sts - t0_us) / 1e6, rig, cfg, sweep_rng, chs)
                for ch in chs:
                    add_record(ch, tok("sweep", sts, ch), sample_tokens[k], sts, sweep["T_map_base"], False,
                               image=sweep["images"].get(ch), lidar=sweep.get("lidar"))
        sim = simulate_sample(world, t, rig, cfg, rng)
        T_mb = sim["T_map_base"]
        rows["sample"].append({"token": sample_tokens[k], "timestamp": ts, "scene_token": scene_token,
                               "prev": sample_tokens[k - 1] if k else "",
                               "next": sample_tokens[k + 1] if k + 1 < n else ""})
        for ch in channels:
            add_record(ch, tok("sd", k, ch), sample_tokens[k], ts, T_mb, True,
                       image=sim["images"].get(ch), lidar=sim["lidar"])
        occ_path = out / "gts" / name / sample_tokens[k] / "labels.npz"
        write_npz(occ_path, sim["occ"])
        # Boxes: sample_annotation rows (map frame) and MMDet3D instances (lidar frame).
        T_map_lidar = T_mb @ rig["T_base_lidar"]
        T_lidar_map = invert_transform(T_map_lidar)
        instances = []
        for box in sim["boxes"]:
            ann = {"token": tok("ann", k, box["track"]), "sample_token": sample_tokens[k],
                   "instance_token": tok("instance", box["track"]),
                   "visibility_token": _visibility_token(box["visibility"]),
                   "attribute_tokens": [attrs[a] for a in [_attribute(box["cls"], box["speed"])] if a],
                   "translation": box["center_map"].tolist(),
                   "size": [float(box["size"][1]), float(box["size"][0]), float(box["size"][2])],
                   "rotation": _quat_yaw(box["yaw_map"]), "prev": "", "next": "",
                   "num_lidar_pts": box["num_lidar_pts"], "num_radar_pts": 0,
                   "category_name_sim": box["cls"]}
            track_anns = ann_by_track.setdefault(box["track"], [])
            if track_anns and track_anns[-1]["sample_token"] == sample_tokens[k - 1]:
                track_anns[-1]["next"] = ann["token"]
                ann["prev"] = track_anns[-1]["token"]
            track_anns.append(ann)
            rows["sample_annotation"].append(ann)
            heading = T_lidar_map[:3, :3] @ yaw_to_matrix(box["yaw_map"])[:, 0]
            c_l = transform_points(T_lidar_map, box["center_map"][None])[0]
            vel = T_lidar_map[:3, :3] @ (box["speed"] * yaw_to_matrix(box["yaw_map"])[:, 0])
            label = MMDET_CATEGORIES[box["cls"]]
            instances.append({
                "bbox_3d": [*c_l.tolist(), *(float(v) for v in box["size"]),
                            float(math.atan2(heading[1], heading[0]))],
                "bbox_label": label, "bbox_label_3d": label,
                "bbox_3d_isvalid": box["num_lidar_pts"] > 0,
                "num_lidar_pts": box["num_lidar_pts"], "num_radar_pts": 0,
                "velocity": vel[:2].tolist()})
        infos.append({"sample_idx": k, "token": sample_tokens[k], "timestamp": ts / 1e6,
                      "lidar_points": {"num_pts_feats": 5,
                                       "lidar_path": Path(f"{name}__LIDAR_TOP__{ts}.pcd.bin").name},
                      "instances": instances, "scene_name": name,
                      "occ_path": str(occ_path.relative_to(out))})
    _link_sample_data(rows["sample_data"], rows["calibrated_sensor"])
    for track, anns in sorted(ann_by_track.items()):
        rows["instance"].append({
            "token": tok("instance", track), "category_token": cats[THINGS[anns[0]["category_name_sim"]][0]],
            "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
            "last_annotation_token": anns[-1]["token"]})
    for ann in rows["sample_annotation"]:
        del ann["category_name_sim"]
    rows["scene"] = [{"token": scene_token, "log_token": log_token, "nbr_samples": n, "name": name,
                      "description": "simulated (training.sim.driving)",
                      "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1]}]
    return {"rows": rows, "infos": infos}


def _merge(cfg: dict, out: Path, scenes: int, static: dict) -> None:
    """Merge all part files into the nuScenes tables and the MMDet3D info pickle (atomically)."""
    tables = {t: list(rows) for t, rows in static.items()}
    infos = []
    for idx in range(scenes):
        part = json.loads((out / ".parts" / f"scene_{idx:05d}.json").read_text())
        for t, rows in part["rows"].items():
            tables.setdefault(t, []).extend(rows)
        infos.extend(part["infos"])
    tables["map"] = [{"category": "semantic_prior", "token": token("training.sim", "map"),
                      "filename": "", "log_tokens": [r["token"] for r in tables["log"]]}]
    version_dir = out / cfg["version"]
    for t in sorted(tables):
        write_bytes_atomic(version_dir / f"{t}.json", json.dumps(tables[t], indent=0).encode())
    pkl = {"metainfo": {"categories": dict(MMDET_CATEGORIES), "dataset": "nuscenes",
                        "version": cfg["version"], "info_version": "1.1",
                        "source": "training.sim (simulated)"},
           "data_list": infos}
    write_bytes_atomic(out / "sim_infos.pkl", pickle.dumps(pkl, protocol=4))


def write_driving_dataset(cfg: dict, out, scenes: int, seed: int, shard=(0, 1),
                          progress: bool = True) -> dict:
    """Generate ``scenes`` driving sequences into ``out`` (layout in the module docstring).

    Args:
        cfg: driving config (``training/config/sim_driving.yaml``). out: dataset root. scenes: number of
        sequences. seed: dataset seed. shard: (process index, process count). progress: tqdm bar.

    Returns:
        ``{"written", "skipped", "bytes", "seconds"}`` for this process (bytes = whole folder
        when the tables were merged by this process, else the sequences it wrote).

    Raises:
        ValueError: the folder holds another dataset.
    """
    out = Path(out)
    start = time.perf_counter()
    check_dataset_record(out, {"kind": "driving", "seed": seed, "scenes": scenes, "config": cfg})
    rig = sensor_rig(float(cfg["image_scale"]))
    static = _static_rows()
    mine = [i for i in range(scenes) if i % shard[1] == shard[0]]
    stats = {"written": 0, "skipped": 0, "bytes": 0, "seconds": 0.0}
    n = int(cfg["samples_per_scene"])
    bar = tqdm(total=len(mine) * n, unit="sample", desc=f"driving {shard[0]}/{shard[1]}",
               disable=not progress)
    for idx in mine:
        part = out / ".parts" / f"scene_{idx:05d}.json"
        if part.is_file():
            stats["skipped"] += 1
            bar.update(n)
            continue
        result = _sequence(cfg, out, idx, seed, rig, static)
        write_bytes_atomic(part, json.dumps(result, sort_keys=True).encode())
        stats["written"] += 1
        bar.update(n)
    bar.close()
    if all((out / ".parts" / f"scene_{i:05d}.json").is_file() for i in range(scenes)):
        _merge(cfg, out, scenes, static)
    stats["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    stats["seconds"] = time.perf_counter() - start
    return stats
