"""nuScenes-format samples -> AGO training tensors (real keyframes and the driving simulator alike).

Everything goes through :func:`occ_audit_ros.nuscenes_io.load_keyframe`, so any nuScenes-format
dataroot (the real scene-0061 keyframe, or the simulator's nuScenes export with an MMDetection3D
info pickle for its boxes) plugs in unchanged. GT is :func:`.occ_gt.keyframe_occupancy_gt`, or an
Occ3D ``labels.npz`` when one is given per sample token (``gt_dir/<token>.npz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from occ_audit_ros.atomic import atomic_path
from occ_audit_ros.geometry import invert_transform, transform_points
from occ_audit_ros.voxel_grid import VoxelGridSpec
from occ_audit_ros.ago.classes import FREE_LABEL, IGNORE_LABEL, ClassConfig
from occ_audit_ros.ago.network import LiftGeometry, lift_geometry, resize_image
from training.ago.occ_gt import OccupancyGT, keyframe_occupancy_gt

__all__ = ["AgoSample", "sample_from_keyframe", "load_samples", "sample_tokens", "training_vocabulary", "collate",
           "save_samples_file", "load_samples_file", "load_gt_file"]


@dataclass
class AgoSample:
    """One training/evaluation sample.

    Attributes:
        token: sample token.
        images: (Ncam, 3, H, W) float32 in [0, 1] (resized by ``image_scale``).
        depth: (Ncam, H, W) float32 LiDAR depth [m along the optical axis] at the resized
            resolution, NaN = no return.
        geom: voxel-to-camera :class:`LiftGeometry` (grid in ``base_link`` at the LiDAR time).
        semantics: (X, Y, Z) int64 Occ3D labels (0-16, 17 free, 255 unobserved).
        mask_camera: (X, Y, Z) bool.
        cams: the ``(K (3, 3), T_base_cam (4, 4), width, height)`` per camera the geometry was built
            from (full-resolution intrinsics and size), or None; kept so a sample can be stored
            without its (large) geometry (:func:`save_samples_file`).
    """

    token: str
    images: torch.Tensor
    depth: torch.Tensor
    geom: LiftGeometry
    semantics: torch.Tensor
    mask_camera: torch.Tensor
    cams: list | None = None


def sample_from_keyframe(kf, spec: VoxelGridSpec, image_scale: float = 0.1, gt: OccupancyGT | None = None,
                         pixel_stride: int = 16) -> AgoSample:
    """Build an :class:`AgoSample` from a loaded :class:`nuscenes_io.Keyframe`.

    Args:
        kf: keyframe (cameras, LiDAR, boxes).
        spec: voxel grid (``base_link`` at the LiDAR timestamp).
        image_scale: image resize factor (0.1: 160 x 90 px for nuScenes).
        gt: precomputed GT; built from LiDAR + boxes when None.
        pixel_stride: camera ray spacing of the GT visibility mask (when building GT).
    """
    T_base_map = invert_transform(kf.lidar.T_map_base)
    cams, images, depths = [], [], []
    pts_base = transform_points(kf.lidar.T_base_lidar, kf.lidar.points[:, :3])
    from occ_audit_ros.geometry import points_to_depth_image

    for cam in kf.cameras.values():
        T = T_base_map @ cam.T_map_cam
        cams.append((cam.K, T, cam.width, cam.height))
        img = resize_image(cam.image, image_scale)
        h, w = img.shape[:2]
        images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0)
        K = cam.K.copy()
        K[0] *= w / cam.width
        K[1] *= h / cam.height
        pc = transform_points(invert_transform(T), pts_base)
        depths.append(torch.from_numpy(points_to_depth_image(pc, K, w, h, min_depth=1.0)))
    if gt is None:
        gt = keyframe_occupancy_gt(kf, spec, pixel_stride)
    if gt.semantics.shape != spec.dims:
        raise ValueError(f"GT grid {gt.semantics.shape} != spec dims {spec.dims}")
    return AgoSample(kf.sample_token, torch.stack(images), torch.stack(depths), lift_geometry(spec, cams),
                     torch.from_numpy(gt.semantics.astype(np.int64)), torch.from_numpy(gt.mask_camera.astype(bool)),
                     cams)


def load_gt_file(path, spec: VoxelGridSpec) -> OccupancyGT:
    """Read an Occ3D-style GT file (``semantics``, ``mask_camera``, optional ``mask_lidar``; the
    simulator's and :meth:`OccupancyGT.save`'s ``.npz``) on the grid ``spec``.

    Raises:
        ValueError: the file's grid is not ``spec.dims`` (another voxel size).
    """
    with np.load(path) as z:
        if z["semantics"].shape != spec.dims:
            raise ValueError(f"GT {path} has grid {z['semantics'].shape}, expected {spec.dims} "
                             f"(voxel_size {spec.voxel_size} m)")
        return OccupancyGT(spec, z["semantics"], z["mask_lidar"] if "mask_lidar" in z else z["mask_camera"],
                           z["mask_camera"])


def _find_gt(gt_dir, token: str):
    """``gt_dir/<token>.npz`` or an Occ3D-layout ``gt_dir/**/<token>/labels.npz`` (the simulator's
    ``gts/<scene>/<token>/labels.npz``), else None."""
    gt_dir = Path(gt_dir)
    flat = gt_dir / f"{token}.npz"
    if flat.is_file():
        return flat
    hits = list(gt_dir.glob(f"**/{token}/labels.npz"))
    return hits[0] if hits else None


def sample_tokens(dataroot=None) -> list[str]:
    """All sample tokens of a nuScenes-format dataroot, ordered by (scene, timestamp)."""
    from occ_audit_ros import paths
    from occ_audit_ros.nuscenes_io import _open_nuscenes

    nusc = _open_nuscenes(Path(dataroot) if dataroot is not None else paths.nuscenes_keyframe_dir())
    return [s["token"] for s in sorted(nusc.sample, key=lambda s: (s["scene_token"], s["timestamp"]))]


def load_samples(dataroot=None, annotations_pkl=None, tokens=None, spec: VoxelGridSpec | None = None,
                 image_scale: float = 0.1, gt_dir=None, pixel_stride: int = 16, progress: bool = False) -> list[AgoSample]:
    """Samples of a nuScenes-format dataroot.

    Args:
        dataroot, annotations_pkl: as :func:`nuscenes_io.load_keyframe` (defaults: the embedded keyframe).
        tokens: sample tokens; None = the first sample of the table; ``"all"`` = every sample.
        spec: grid (default Occ3D's).
        image_scale: image resize factor.
        gt_dir: optional GT directory: ``<token>.npz`` or ``**/<token>/labels.npz`` (Occ3D layout,
            e.g. the simulator's ``gts/``); when absent, built from LiDAR + boxes and written as
            ``<gt_dir>/<token>.npz``.

    Raises:
        FileNotFoundError / ValueError: from the loader, or a GT file whose grid is not ``spec``'s.
    """
    from occ_audit_ros.nuscenes_io import load_keyframe
    from training.ago.occ_gt import OCC3D_SPEC

    spec = spec or OCC3D_SPEC
    if tokens == "all":
        tokens = sample_tokens(dataroot)
    out = []
    from tqdm import tqdm

    for tok in tqdm(tokens or [None], desc="load samples", disable=not progress):
        kf = load_keyframe(dataroot, annotations_pkl, tok)
        gt = None
        found = _find_gt(gt_dir, kf.sample_token) if gt_dir is not None else None
        if found is not None:
            gt = load_gt_file(found, spec)
        elif gt_dir is not None:
            gt = keyframe_occupancy_gt(kf, spec, pixel_stride)
            gt.save(Path(gt_dir) / f"{kf.sample_token}.npz")
        out.append(sample_from_keyframe(kf, spec, image_scale, gt, pixel_stride))
    return out


def save_samples_file(path, samples: list[AgoSample]) -> Path:
    """Store samples compactly (no nuScenes devkit needed to read them back): one safetensors file,
    written atomically (temp + ``os.replace``), with per sample ``<i>/images`` (Ncam, 3, H, W) uint8
    (``round(255 * images)``: lossless for images resized from uint8), ``<i>/depth`` float32 [m],
    ``<i>/semantics`` uint8 Occ3D labels, ``<i>/mask_camera`` uint8, and the tokens and cameras
    (K, T_base_cam, width, height) as JSON metadata; the lift geometry is recomputed on loading.

    Raises:
        ValueError: a sample without ``cams``, or labels outside 0-255.
    """
    import json

    from safetensors.torch import save_file

    tensors, meta = {}, []
    for i, s in enumerate(samples):
        if s.cams is None:
            raise ValueError(f"sample {s.token} has no cams (build it with sample_from_keyframe)")
        if int(s.semantics.min()) < 0 or int(s.semantics.max()) > 255:
            raise ValueError(f"sample {s.token}: semantics outside 0-255")
        tensors[f"{i}/images"] = (s.images.cpu() * 255).round().clamp(0, 255).to(torch.uint8).contiguous()
        tensors[f"{i}/depth"] = s.depth.cpu().float().contiguous()
        tensors[f"{i}/semantics"] = s.semantics.cpu().to(torch.uint8).contiguous()
        tensors[f"{i}/mask_camera"] = s.mask_camera.cpu().to(torch.uint8).contiguous()
        meta.append({"token": s.token, "cams": [[np.asarray(K, float).tolist(), np.asarray(T, float).tolist(), int(w), int(h)]
                                                for K, T, w, h in s.cams]})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"ago_samples": json.dumps(meta)})
    return path


def load_samples_file(path, spec: VoxelGridSpec) -> list[AgoSample]:
    """Samples written by :func:`save_samples_file`, lift geometry rebuilt for ``spec``.

    Raises:
        FileNotFoundError: no file; ValueError: not a samples file, or a grid that is not ``spec``'s.
    """
    import json

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} not found")
    with safe_open(str(path), "pt") as f:
        md = f.metadata() or {}
        if "ago_samples" not in md:
            raise ValueError(f"{path} is not an AGO samples file")
        out = []
        for i, m in enumerate(json.loads(md["ago_samples"])):
            sem = f.get_tensor(f"{i}/semantics").long()
            if tuple(sem.shape) != tuple(spec.dims):
                raise ValueError(f"{path}: sample {i} grid {tuple(sem.shape)} != {spec.dims}")
            cams = [(np.array(K), np.array(T), w, h) for K, T, w, h in m["cams"]]
            out.append(AgoSample(m["token"], f.get_tensor(f"{i}/images").float() / 255.0, f.get_tensor(f"{i}/depth"),
                                 lift_geometry(spec, cams), sem, f.get_tensor(f"{i}/mask_camera").bool(), cams))
    return out


def training_vocabulary(cfg: ClassConfig, mode: str) -> tuple[dict, np.ndarray]:
    """Training vocabulary and the Occ3D-label -> training-target map.

    Args:
        cfg: class config.
        mode: ``"closed"`` — the 17 Occ3D classes (target = Occ3D label, free 17);
            ``"open_world_pretrain"`` — AGO's pre-training space (AGO §4.1, Table 2): the 3 known classes
            + 2 supercategories (5 categories, free = 5); fully unknown classes are **ignored**
            (no pseudo-labels exist for them; our choice).

    Returns:
        ``(vocabulary, label_map)``: name -> phrases, and (256,) int64 map with 255 = ignore.

    Raises:
        ValueError: unknown mode.
    """
    lm = np.full(256, IGNORE_LABEL, np.int64)
    if mode == "closed":
        vocab = {n: cfg.phrases[n] for n in cfg.classes}
        lm[: FREE_LABEL + 1] = np.arange(FREE_LABEL + 1)
    elif mode == "open_world_pretrain":
        vocab = {cfg.classes[i]: cfg.phrases[cfg.classes[i]] for i in cfg.ow_known}
        for i in cfg.ow_known:
            lm[i] = list(vocab).index(cfg.classes[i])
        for name, members in cfg.ow_super.items():
            vocab[name] = [name.replace("_", " ")]
            for i in members:
                lm[i] = len(vocab) - 1
        lm[FREE_LABEL] = len(vocab)
    else:
        raise ValueError(f"vocabulary mode must be 'closed' or 'open_world_pretrain', got {mode!r}")
    return vocab, lm


def collate(samples: list[AgoSample], label_map: np.ndarray | None = None) -> dict:
    """Stack samples into a batch dict (``images``, ``depth``, ``geoms``, ``semantics``, ``target``,
    ``mask_camera``, ``tokens``); ``target`` = ``label_map[semantics]`` (identity when None)."""
    sem = torch.stack([s.semantics for s in samples])
    lm = (torch.from_numpy(label_map) if label_map is not None else torch.arange(256)).to(sem.device)
    return {"images": torch.stack([s.images for s in samples]), "depth": torch.stack([s.depth for s in samples]),
            "geoms": [s.geom for s in samples], "semantics": sem, "target": lm[sem],
            "mask_camera": torch.stack([s.mask_camera for s in samples]), "tokens": [s.token for s in samples]}
