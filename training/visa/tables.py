"""Instances and crop views from nuScenes-format tables (nuScenes, Lyft Level 5, the driving
simulator's output), read with ``nuscenes-devkit`` (docs/visa.md §3, §5).

Every ``sample_annotation`` of an instance is seen from every camera of its sample: the box
(``NuScenes.get_box``, global frame) goes global -> ego at the image's ``ego_pose`` -> camera
(``calibrated_sensor``), as the devkit's own rendering does; visibility bins come from
``visibility_token`` ("1"-"4"; empty -> unknown).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ_audit_ros.geometry import invert_transform, make_transform, transform_points
from training.visa.crops import BoxView
from training.visa.taxonomy import category_to_class


def open_tables(dataroot, version: str):
    """``NuScenes`` handle of a table set.

    Raises:
        FileNotFoundError: when ``dataroot/version`` has no ``sample_annotation.json``.
    """
    table_dir = Path(dataroot) / version
    if not (table_dir / "sample_annotation.json").is_file():
        raise FileNotFoundError(f"no nuScenes tables at {table_dir} (sample_annotation.json missing)")
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


def table_instances(nusc) -> list[tuple[str, str, str]]:
    """(instance token, category name, K_obj class) of every K_obj instance, sorted by token."""
    out = []
    for inst in nusc.instance:
        name = nusc.get("category", inst["category_token"])["name"]
        cls = category_to_class(name)
        if cls is not None:
            out.append((inst["token"], name, cls))
    return sorted(out)


def annotation_views(nusc, ann: dict) -> list[BoxView]:
    """The camera views of one ``sample_annotation`` row (one per camera of its sample)."""
    box = nusc.get_box(ann["token"])
    corners_global = box.corners().T  # (8, 3), nuScenes corner order
    vis = str(ann.get("visibility_token", ""))
    vis_bin = int(vis) if vis in ("1", "2", "3", "4") else None
    sample = nusc.get("sample", ann["sample_token"])
    views = []
    for channel, sd_token in sorted(sample["data"].items()):
        sd = nusc.get("sample_data", sd_token)
        if sd["sensor_modality"] != "camera":
            continue
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        T_global_cam = make_transform(pose["translation"], pose["rotation"]) @ make_transform(
            cs["translation"], cs["rotation"])
        views.append(BoxView(ann["token"], channel, sd_token,
                             transform_points(invert_transform(T_global_cam), corners_global),
                             np.asarray(cs["camera_intrinsic"], np.float64), int(sd["width"]),
                             int(sd["height"]), vis_bin))
    return views


def instance_views(nusc, instance_token: str) -> list[BoxView]:
    """Views of all annotations of an instance that are in the table (any order)."""
    views = []
    for ann in nusc.sample_annotation:
        if ann["instance_token"] == instance_token:
            views.extend(annotation_views(nusc, ann))
    return views


def load_camera_image(nusc, sample_data_token: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a camera ``sample_data``.

    Raises:
        FileNotFoundError: when the image file is not in the dataroot.
    """
    from PIL import Image

    path = Path(nusc.dataroot) / nusc.get("sample_data", sample_data_token)["filename"]
    if not path.is_file():
        raise FileNotFoundError(f"camera image {path} not found")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
