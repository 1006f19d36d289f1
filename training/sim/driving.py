"""nuScenes-like driving sequences with exact ground truth (research tool, simulated data).

A sequence: a straight road along the ``map`` x axis (driveable_surface) with traffic islands
(other_flat), sidewalks, terrain, buildings and poles (manmade), trees and bushes (vegetation),
and the ten nuScenes detection classes as simple composite shapes inside their 3D boxes, with
class-typical sizes (car, truck, bus, trailer, construction_vehicle, pedestrian, motorcycle,
bicycle moving at constant speed along lanes / sidewalks; traffic cones and barriers static). The
ego drives in the right lane. Sensors are the real nuScenes calibration of the embedded keyframe
(:func:`occ_audit_ros.nuscenes_io.load_keyframe`): six cameras (intrinsics scaled to the configured
image size) and LIDAR_TOP (32 beams, one sweep per keyframe), all at the sample's timestamp.
Between keyframes, :func:`simulate_sweep` renders the sensor-only sweeps (12 Hz cameras, 20 Hz
LiDAR) that the writer adds as non-key ``sample_data`` when the config's ``sweeps.enabled`` is set.

Per keyframe (2 Hz) :func:`simulate_sample` gives camera images, the LiDAR sweep, 3D boxes with
instance tracks, ``num_lidar_pts`` and nuScenes visibility levels, and Occ3D-style ground truth
(ego frame, ``semantics`` uint8 with the 17 lidarseg classes + 17 = free, ``mask_camera`` and
``mask_lidar`` uint8 from rays marched to their first hit). :func:`generate_driving` writes the
nuScenes tables through :mod:`.nuscenes_writer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from occ_audit_ros import conventions
from occ_audit_ros.geometry import invert_transform, make_transform, transform_points
from training.sim.primitives import Primitive, RayScene, SceneObject, camera_rays

__all__ = ["OCC3D_CLASSES", "FREE", "THINGS", "DrivingWorld", "build_world", "simulate_sample", "simulate_sweep",
           "occ3d_semantics", "thing_parts", "Track",
           "sensor_rig", "voxel_centers", "generate_driving"]

#: Occ3D-nuScenes labels in lidarseg order (Occ3D README); 17 = free.
OCC3D_CLASSES = ("others", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle",
                 "pedestrian", "traffic_cone", "trailer", "truck", "driveable_surface",
                 "other_flat", "sidewalk", "terrain", "manmade", "vegetation", "free")
FREE = 17
_CLS = {n: i for i, n in enumerate(OCC3D_CLASSES)}
#: Label priority when several classes occupy one voxel (higher wins).
_PRIORITY = np.zeros(18, dtype=np.int64)
for _n, _p in {"driveable_surface": 1, "terrain": 2, "sidewalk": 3, "other_flat": 4, "manmade": 5,
               "vegetation": 6}.items():
    _PRIORITY[_CLS[_n]] = _p
for _i in range(11):
    _PRIORITY[_i] = 10

#: Detection class -> (nuScenes category, mean size (l, w, h) m, size std (m)). Means are the
#: usual nuScenes class averages.
THINGS = {
    "car": ("vehicle.car", (4.63, 1.96, 1.74), 0.25),
    "truck": ("vehicle.truck", (6.94, 2.51, 2.84), 0.6),
    "bus": ("vehicle.bus.rigid", (11.0, 2.95, 3.47), 0.8),
    "trailer": ("vehicle.trailer", (12.3, 2.9, 3.87), 0.8),
    "construction_vehicle": ("vehicle.construction", (6.37, 2.85, 3.19), 0.5),
    "pedestrian": ("human.pedestrian.adult", (0.73, 0.67, 1.77), 0.06),
    "motorcycle": ("vehicle.motorcycle", (2.11, 0.77, 1.47), 0.1),
    "bicycle": ("vehicle.bicycle", (1.7, 0.6, 1.28), 0.08),
    "traffic_cone": ("movable_object.trafficcone", (0.41, 0.41, 1.07), 0.04),
    "barrier": ("movable_object.barrier", (2.5, 0.5, 0.98), 0.1),
}
#: Base colours per Occ3D class (RGB 0-1) for the rendered images.
_COLORS = {
    "barrier": (0.55, 0.55, 0.6), "bicycle": (0.85, 0.1, 0.25), "bus": (0.95, 0.75, 0.1),
    "car": (0.2, 0.35, 0.8), "construction_vehicle": (0.9, 0.6, 0.2), "motorcycle": (0.9, 0.3, 0.4),
    "pedestrian": (0.8, 0.3, 0.7), "traffic_cone": (1.0, 0.45, 0.0), "trailer": (0.7, 0.7, 0.75),
    "truck": (0.85, 0.25, 0.2), "driveable_surface": (0.35, 0.35, 0.37),
    "other_flat": (0.55, 0.5, 0.45), "sidewalk": (0.7, 0.68, 0.65), "terrain": (0.45, 0.6, 0.3),
    "manmade": (0.75, 0.6, 0.5), "vegetation": (0.15, 0.55, 0.15), "others": (0.5, 0.5, 0.5),
}


def _pose(x, y, z, yaw) -> np.ndarray:
    return make_transform([x, y, z], [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def thing_parts(cls: str, size) -> list[tuple[str, tuple, np.ndarray]]:
    """Primitives of a detection-class object in its box frame (origin = box centre, x = heading).

    All parts lie inside the box ``[-l/2, l/2] x [-w/2, w/2] x [-h/2, h/2]``.

    Returns:
        list of ``(kind, params, T_box_part (4, 4))``.
    """
    l, w, h = (float(v) for v in size)
    z0 = -h / 2
    if cls in ("car", "construction_vehicle", "truck"):
        cab_l = 0.5 * l if cls == "car" else 0.3 * l
        cab_x = -0.05 * l if cls == "car" else l / 2 - cab_l / 2
        return [("box", (l, w, 0.55 * h), _pose(0, 0, z0 + 0.275 * h, 0)),
                ("box", (cab_l, 0.92 * w, 0.45 * h), _pose(cab_x, 0, z0 + 0.775 * h, 0))]
    if cls in ("bus", "trailer"):
        return [("box", (l, w, 0.85 * h), _pose(0, 0, z0 + 0.575 * h, 0)),
                ("box", (0.9 * l, 0.8 * w, 0.15 * h), _pose(0, 0, z0 + 0.075 * h, 0))]
    if cls == "pedestrian":
        r = 0.3 * min(l, w)
        head = 0.12 * h
        return [("cylinder", (r, h - 2 * head), _pose(0, 0, z0 + (h - 2 * head) / 2, 0)),
                ("sphere", (head,), _pose(0, 0, h / 2 - head, 0))]
    if cls in ("bicycle", "motorcycle"):
        tube = 0.06 * h
        ring = min(0.22 * l, 0.5 * 0.45 * h) - tube
        wheel_x = l / 2 - ring - tube
        rx = math.pi / 2
        T1 = make_transform([wheel_x, 0, z0 + ring + tube],
                            [math.cos(rx / 2), math.sin(rx / 2), 0.0, 0.0])
        T2 = make_transform([-wheel_x, 0, z0 + ring + tube],
                            [math.cos(rx / 2), math.sin(rx / 2), 0.0, 0.0])
        return [("torus", (ring, tube), T1), ("torus", (ring, tube), T2),
                ("box", (0.7 * l, 0.5 * w, 0.45 * h), _pose(0, 0, z0 + 0.7 * h, 0))]
    if cls == "traffic_cone":
        return [("cone", (0.45 * min(l, w), h), _pose(0, 0, z0, 0))]
    return [("box", (l, w, h), np.eye(4))]  # barrier


@dataclass
class Track:
    """A detection-class object over the sequence: box size, start pose and constant velocity.

    Attributes:
        cls: detection class (key of :data:`THINGS`). size: (3,) l, w, h (m).
        start: (3,) box centre in ``map`` at t = 0 (m). yaw: heading in ``map`` (rad).
        speed: m/s along the heading.
    """

    cls: str
    size: np.ndarray
    start: np.ndarray
    yaw: float
    speed: float

    def center(self, t: float) -> np.ndarray:
        """(3,) box centre in ``map`` at time ``t`` (s)."""
        d = np.array([math.cos(self.yaw), math.sin(self.yaw), 0.0])
        return self.start + self.speed * t * d


@dataclass
class DrivingWorld:
    """A sequence's static scene, tracks and ego motion.

    Attributes:
        static: static stuff objects (SceneObject, ``attrs['cls']`` = Occ3D class index).
        tracks: moving or static detection-class objects.
        ego_y: ego lateral position (m). ego_speed: m/s along +x.
    """

    static: list[SceneObject]
    tracks: list[Track]
    ego_y: float
    ego_speed: float

    def T_map_base(self, t: float) -> np.ndarray:
        """(4, 4) ego pose at time ``t`` (base_link on the road surface, heading +x)."""
        return _pose(self.ego_speed * t, self.ego_y, 0.0, 0.0)

    def objects(self, t: float) -> list[SceneObject]:
        """All objects at time ``t``: static ones, then one per track (instance id = position)."""
        out = [SceneObject(i, o.category, o.primitives, o.label, o.shape, o.color, o.attrs)
               for i, o in enumerate(self.static)]
        for k, tr in enumerate(self.tracks):
            T = _pose(*tr.center(t), tr.yaw)
            prims = [Primitive(kind, p, T @ Tp) for kind, p, Tp in thing_parts(tr.cls, tr.size)]
            out.append(SceneObject(len(out), tr.cls, prims, tr.cls, tr.cls,
                                   np.asarray(_COLORS[tr.cls]), {"cls": _CLS[tr.cls], "track": k}))
        return out


def build_world(cfg: dict, rng: np.random.Generator) -> DrivingWorld:
    """Lay out one sequence (see the module docstring); ``cfg`` is the ``world`` config section
    plus ``duration`` (s)."""
    w = cfg
    L = float(w["length"])
    road = rng.uniform(*w["road_width"])
    side = rng.uniform(*w["sidewalk_width"])
    terr = rng.uniform(*w["terrain_width"])
    x0 = 0.25 * L  # road centre: the ego starts at x = 0, a quarter along the road
    static: list[SceneObject] = []

    def stuff(cls, parts, color_jitter=0.05):
        color = np.clip(np.asarray(_COLORS[cls]) + rng.normal(0, color_jitter, 3), 0, 1)
        static.append(SceneObject(len(static), cls, parts, cls, cls, color, {"cls": _CLS[cls]}))

    def slab(cls, y_lo, y_hi, top, x_lo=x0 - L / 2, x_hi=x0 + L / 2):
        bottom = -0.19  # thin: with Occ3D's z grid (-1 + 0.4 k) the ground is one layer thick
        stuff(cls, [Primitive("box", (x_hi - x_lo, y_hi - y_lo, top - bottom),
                              _pose(0.5 * (x_lo + x_hi), 0.5 * (y_lo + y_hi), 0.5 * (top + bottom),
                                    0))])

    slab("driveable_surface", -road / 2, road / 2, 0.0)
    for s in (-1, 1):
        a, b = road / 2, road / 2 + side
        slab("sidewalk", *sorted((s * a, s * b)), 0.15)
        c = road / 2 + side + terr
        slab("terrain", *sorted((s * b, s * c)), 0.05)
    rint = lambda lohi: int(rng.integers(int(lohi[0]), int(lohi[1]) + 1))  # noqa: E731
    for _ in range(rint(w["other_flat_patches"])):  # traffic islands on the centre line
        xc = rng.uniform(15, 80)
        ln = rng.uniform(4, 12)
        slab("other_flat", -0.6, 0.6, 0.12, xc - ln / 2, xc + ln / 2)
    edge = road / 2 + side + terr
    for s in (-1, 1):
        x = x0 - L / 2 + rng.uniform(0, 10)
        for _ in range(rint(w["buildings_per_side"])):
            bl, bd = rng.uniform(8, 25), rng.uniform(6, 15)
            bh = rng.uniform(*w["building_height"])
            stuff("manmade", [Primitive("box", (bl, bd, bh),
                                        _pose(x + bl / 2, s * (edge + 0.5 + bd / 2), bh / 2, 0))])
            x += bl + rng.uniform(2, 15)
        for _ in range(rint(w["poles_per_side"])):
            px = rng.uniform(-40, 90)
            stuff("manmade", [Primitive("cylinder", (0.15, 6.0),
                                        _pose(px, s * (road / 2 + 0.4), 3.15, 0))])
        for _ in range(rint(w["trees_per_side"])):
            tx = rng.uniform(-40, 90)
            ty = s * (road / 2 + side + rng.uniform(0.8, max(terr - 0.8, 0.9)))
            th = rng.uniform(2.0, 4.0)
            cr = rng.uniform(1.0, 2.2)
            stuff("vegetation", [Primitive("cylinder", (0.2, th), _pose(tx, ty, th / 2, 0)),
                                 Primitive("sphere", (cr,), _pose(tx, ty, th + 0.7 * cr, 0))])
    tracks: list[Track] = []

    def size_of(cls):
        mean = np.asarray(THINGS[cls][1])
        return np.maximum(mean + rng.normal(0, THINGS[cls][2], 3) * mean / mean.max(), 0.2 * mean)

    vehicles = ["car"] * 6 + ["truck", "bus", "trailer", "construction_vehicle"]
    ego_speed = rng.uniform(*w["ego_speed"])
    opp_speed = rng.uniform(*w["opposite_speed"])
    for lane_y, yaw, speed in ((-road / 4, 0.0, ego_speed), (road / 4, math.pi, opp_speed)):
        x = -40 + rng.uniform(0, 10)
        for _ in range(rint(w["vehicles_per_lane"])):
            cls = vehicles[rng.integers(len(vehicles))]
            size = size_of(cls)
            cx = x + size[0] / 2
            if lane_y < 0 and abs(cx) < size[0] / 2 + 6:  # keep the ego's own spot free
                cx += size[0] + 12
            tracks.append(Track(cls, size, np.array([cx, lane_y, size[2] / 2]), yaw, speed))
            x = cx + size[0] / 2 + rng.uniform(6, 30)
    for _ in range(rint(w["parked_vehicles"])):
        cls = ["car", "car", "truck"][rng.integers(3)]
        size = size_of(cls)
        s = -1 if rng.random() < 0.5 else 1
        y = s * (road / 2 - size[1] / 2 - 0.1)
        cx = rng.uniform(-40, 80)
        if s < 0 and abs(cx) < 12:
            cx += 25
        tracks.append(Track(cls, size, np.array([cx, y, size[2] / 2]), 0.0, 0.0))
    for _ in range(rint(w["pedestrians"])):
        size = size_of("pedestrian")
        s = -1 if rng.random() < 0.5 else 1
        y = s * (road / 2 + rng.uniform(0.5, side - 0.5))
        yaw = 0.0 if rng.random() < 0.5 else math.pi
        tracks.append(Track("pedestrian", size,
                            np.array([rng.uniform(-40, 60), y, 0.15 + size[2] / 2]), yaw,
                            rng.uniform(0.0, 1.6)))
    for _ in range(rint(w["cyclists"])):
        cls = "bicycle" if rng.random() < 0.5 else "motorcycle"
        size = size_of(cls)
        tracks.append(Track(cls, size, np.array([rng.uniform(-30, 60),
                                                 -road / 2 + 0.6, size[2] / 2]), 0.0,
                            rng.uniform(2.0, 6.0) if cls == "bicycle" else rng.uniform(5, 12)))
    for key, n in (("traffic_cone", rint(w["cones"])), ("barrier", rint(w["barriers"]))):
        for _ in range(n):
            size = size_of(key)
            s = -1 if rng.random() < 0.5 else 1
            y = s * (road / 2 + 0.3 + size[1] / 2)
            tracks.append(Track(key, size, np.array([rng.uniform(-30, 70), y,
                                                     0.15 + size[2] / 2]), 0.0, 0.0))
    return DrivingWorld(static, tracks, -road / 4, ego_speed)


def sensor_rig(image_scale: float, keyframe=None) -> dict:
    """Calibration of the six cameras and LIDAR_TOP, from the embedded real nuScenes keyframe.

    Args:
        image_scale: factor applied to the 1600 x 900 images (intrinsics scaled to match).
        keyframe: a loaded :class:`Keyframe` (default: :func:`load_keyframe` without annotations).

    Returns:
        ``{"cameras": {channel: {"K": (3, 3), "T_base_cam": (4, 4), "width", "height"}},
        "T_base_lidar": (4, 4)}``, float64.
    """
    if keyframe is None:
        from occ_audit_ros.nuscenes_io import load_keyframe

        keyframe = load_keyframe(load_annotations=False)
    cams = {}
    for ch in conventions.CAMERA_CHANNELS:
        cam = keyframe.cameras[ch]
        w, h = int(round(cam.width * image_scale)), int(round(cam.height * image_scale))
        S = np.diag([w / cam.width, h / cam.height, 1.0])
        K = S @ cam.K
        # Pixel centres at integers: scaling maps centre c to (c + 0.5) * s - 0.5.
        K[0, 2] = (cam.K[0, 2] + 0.5) * w / cam.width - 0.5
        K[1, 2] = (cam.K[1, 2] + 0.5) * h / cam.height - 0.5
        cams[ch] = {"K": K, "T_base_cam": cam.T_base_cam.copy(), "width": w, "height": h}
    return {"cameras": cams, "T_base_lidar": keyframe.lidar.T_base_lidar.copy()}


def voxel_centers(occ_cfg: dict, sub: int = 1) -> np.ndarray:
    """(X * Y * Z * sub^3, 3) float32 sub-voxel sample points in the ego frame, voxel-major C
    order over (x, y, z) then sub-points (sub = 1: voxel centres)."""
    r = np.asarray(occ_cfg["range"], dtype=np.float64)
    dims = np.asarray(occ_cfg["dims"], dtype=np.int64)
    vs = (r[3:] - r[:3]) / dims
    ijk = np.stack(np.meshgrid(*[np.arange(d) for d in dims], indexing="ij"), -1).reshape(-1, 1, 3)
    o = (np.arange(sub) + 0.5) / sub
    offs = np.stack(np.meshgrid(o, o, o, indexing="ij"), -1).reshape(1, -1, 3)
    return (r[:3] + (ijk + offs) * vs).reshape(-1, 3).astype(np.float32)


def _mark_rays(mask, origins, dirs, t_hit, occ_cfg, T_base_map) -> None:
    """Mark voxels traversed by rays from the origin up to just past their first hit.

    Args:
        mask: (X, Y, Z) uint8, set to 1 in place. origins, dirs: (N, 3) map rays (dirs any
            length). t_hit: (N,) ray parameter of the hit (inf: marched to the grid's far edge).
        occ_cfg: Occ3D config. T_base_map: (4, 4) map -> ego.
    """
    r = np.asarray(occ_cfg["range"], dtype=np.float64)
    dims = np.asarray(occ_cfg["dims"])
    vs = (r[3:] - r[:3]) / dims
    step = 0.5 * vs.min()
    norm = np.linalg.norm(dirs, axis=1)
    o_b = transform_points(T_base_map, origins)
    d_b = (dirs / norm[:, None]) @ T_base_map[:3, :3].T
    # Distance to where each ray leaves the grid box (slab test; origins are inside the grid).
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (r[:3] - o_b) / d_b
        t2 = (r[3:] - o_b) / d_b
    exit_len = np.nanmin(np.where(np.isnan(t1), np.inf, np.maximum(t1, t2)), axis=1)
    length = np.minimum(np.where(np.isfinite(t_hit), t_hit * norm + 0.5 * step, np.inf), exit_len)
    length = np.nan_to_num(length, posinf=0.0)
    order = np.argsort(length)
    budget = 4_000_000
    a = 0
    while a < len(order):
        n_steps = int(math.ceil(length[order[min(a + 1023, len(order) - 1)]] / step)) + 1
        b = min(len(order), a + max(1024, budget // n_steps))
        n_steps = int(math.ceil(length[order[b - 1]] / step)) + 1
        sel = order[a:b]
        s = np.arange(n_steps) * step
        pts = o_b[sel, None, :] + d_b[sel, None, :] * s[None, :, None]
        keep = s[None, :] <= length[sel, None]
        ijk = np.floor((pts[keep] - r[:3]) / vs).astype(np.int64)
        ok = np.all((ijk >= 0) & (ijk < dims), axis=1)
        ijk = ijk[ok]
        mask[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = 1
        a = b


def _shade(objects, inst, normal, light, ambient, sky, noise, rng) -> np.ndarray:
    colors = np.stack([o.color for o in objects] + [np.asarray(sky) / 255.0])
    idx = np.where(inst < 0, len(objects), inst)
    shade = ambient + (1 - ambient) * np.abs(normal @ light)
    img = colors[idx] * np.where(inst < 0, 1.0, shade)[..., None] * 255.0
    img += rng.normal(0, noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def occ3d_semantics(scene: RayScene, T_map_base, occ_cfg: dict) -> np.ndarray:
    """Occ3D-style semantic labels of the ego-frame grid.

    Each voxel is sampled at ``supersample^3`` sub-points; every object's occupancy there comes
    from :meth:`RayScene.occupancy` (only the voxels overlapping its bounds are queried). Voxels
    its surface passes through (lattice samples every half voxel,
    :meth:`Primitive.surface_points`) count as occupied by it as well. A voxel takes the
    highest-priority class among the objects occupying any of its sub-points (things >
    vegetation > manmade > other_flat > sidewalk > terrain > driveable_surface; among equal
    priorities the object with more occupied sub-points), else :data:`FREE`.

    Args:
        scene: the scene at the sample time; ``objects[k].attrs['cls']`` = Occ3D class index.
        T_map_base: (4, 4) ego pose. occ_cfg: ``range`` (6,), ``dims`` (3,), ``supersample``.

    Returns:
        (X, Y, Z) uint8 labels in [0, 17].
    """
    objects = scene.objects
    dims = tuple(int(d) for d in occ_cfg["dims"])
    T_base_map = invert_transform(T_map_base)
    s = int(occ_cfg["supersample"])
    sub_pts = transform_points(T_map_base, voxel_centers(occ_cfg, s)).astype(np.float32)
    n_vox = int(np.prod(dims))
    best = np.full(n_vox, -1, dtype=np.int64)  # priority * 10^6 + occupied sub-point count
    label = np.full(n_vox, FREE, dtype=np.uint8)
    rng_lo = np.asarray(occ_cfg["range"][:3], dtype=np.float64)
    vsize = (np.asarray(occ_cfg["range"][3:], dtype=np.float64) - rng_lo) / np.asarray(dims)
    spacing = 0.7 * float(vsize.min())
    gc = np.array([[x, y, z] for x in (0, 3) for y in (1, 4) for z in (2, 5)])
    gcorners = transform_points(T_map_base, np.asarray(occ_cfg["range"], dtype=np.float64)[gc])
    grid_box = (gcorners.min(0), gcorners.max(0))  # the grid's bounds in map
    for k, obj in enumerate(objects):
        # Candidate voxels: those overlapping the object's bounds seen from the ego frame.
        lo, hi = obj.aabb()
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])])
        cb = transform_points(T_base_map, corners)
        i0 = np.maximum(np.floor((cb.min(0) - rng_lo) / vsize).astype(np.int64), 0)
        i1 = np.minimum(np.floor((cb.max(0) - rng_lo) / vsize).astype(np.int64) + 1, dims)
        if np.any(i1 <= i0):
            continue
        ii = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(i0, i1)], indexing="ij"), -1)
        vox = ((ii[..., 0] * dims[1] + ii[..., 1]) * dims[2] + ii[..., 2]).reshape(-1)
        sub_idx = (vox[:, None] * s ** 3 + np.arange(s ** 3)[None, :]).reshape(-1)
        occ_sub = scene.occupancy(sub_pts[sub_idx], [k])[0].reshape(len(vox), s ** 3).sum(1)
        # Voxels the object's surface passes through count as occupied too (a thin part or a face
        # near a voxel's border may miss every sub-point): Occ3D labels voxels holding a return.
        surf = np.concatenate([p.surface_points(spacing, grid_box) for p in obj.primitives])
        sijk = np.floor((transform_points(T_base_map, surf) - rng_lo) / vsize).astype(np.int64)
        sijk = sijk[np.all((sijk >= 0) & (sijk < dims), axis=1)]
        svox = (sijk[:, 0] * dims[1] + sijk[:, 1]) * dims[2] + sijk[:, 2]
        ids = np.unique(np.concatenate([vox[occ_sub > 0], svox]))
        extra = np.zeros(len(ids), dtype=np.int64)
        pos = np.searchsorted(vox, ids)  # vox is sorted (C order of a box of voxels)
        inb = (pos < len(vox))
        inb[inb] = vox[pos[inb]] == ids[inb]
        extra[inb] = occ_sub[pos[inb]]
        score = _PRIORITY[int(obj.attrs["cls"])] * 1_000_000 + extra + (extra == 0)
        win = score > best[ids]
        best[ids[win]] = score[win]
        label[ids[win]] = int(obj.attrs["cls"])
    return label.reshape(dims)


def _lidar_scan(scene: RayScene, objects, T_map_lidar: np.ndarray, lc: dict, rng: np.random.Generator):
    """One LiDAR sweep: beams x azimuths from the sensor origin, ring = beam index (0 = lowest).

    Returns:
        ``(points, rays)``: (N, 5) float32 x, y, z (lidar frame), class-coded intensity, ring; and
        ``(origins, dirs, t_hit, instance, hit)`` of all rays in ``map``.
    """
    elev = np.radians(np.linspace(*lc["elevation_deg"], int(lc["beams"])))
    az = np.radians(np.arange(0.0, 360.0, float(lc["azimuth_step_deg"])))
    E, A = np.meshgrid(elev, az, indexing="ij")
    d_l = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], -1).reshape(-1, 3)
    ring = np.repeat(np.arange(len(elev)), len(az)).astype(np.float32)
    d_m = d_l @ T_map_lidar[:3, :3].T
    o_m = np.broadcast_to(T_map_lidar[:3, 3], d_m.shape)
    t_l, inst_l, _ = scene.cast(o_m, d_m)
    hit = np.isfinite(t_l) & (t_l >= lc["min_range"]) & (t_l <= lc["max_range"])
    pts = d_l[hit] * t_l[hit, None]
    cls_l = np.array([o.attrs["cls"] for o in objects])[inst_l[hit]]
    intensity = (40 + 8 * cls_l + rng.integers(0, 8, hit.sum())).astype(np.float32)
    lidar = np.concatenate([pts.astype(np.float32), intensity[:, None], ring[hit, None]], axis=1)
    return lidar, (o_m, d_m, t_l, inst_l, hit)


def simulate_sweep(world: DrivingWorld, t: float, rig: dict, cfg: dict, rng: np.random.Generator,
                   channels) -> dict:
    """Sensor data only (no ground truth) of the given channels at time ``t``: a sweep.

    Args:
        world: the sequence. t: seconds since the sequence start. rig: :func:`sensor_rig`.
        cfg: the full driving config. rng: generator for image and intensity noise.
        channels: camera channels and/or ``"LIDAR_TOP"`` to render.

    Returns:
        ``T_map_base`` (4, 4); ``images`` {channel: (H, W, 3) uint8} for the cameras asked for;
        ``lidar`` (N, 5) float32 as in :func:`simulate_sample` when ``LIDAR_TOP`` is asked for.
    """
    objects = world.objects(t)
    scene = RayScene(objects)
    T_map_base = world.T_map_base(t)
    r = cfg["render"]
    light = np.asarray(r["light_dir"], dtype=np.float64)
    light /= np.linalg.norm(light)
    out: dict = {"T_map_base": T_map_base, "images": {}}
    for ch in channels:
        if ch == conventions.LIDAR_CHANNEL:
            out["lidar"], _ = _lidar_scan(scene, objects, T_map_base @ rig["T_base_lidar"], cfg["lidar"], rng)
            continue
        cam = rig["cameras"][ch]
        _, inst, normal, _ = scene.render(cam["K"], T_map_base @ cam["T_base_cam"], cam["width"], cam["height"])
        out["images"][ch] = _shade(objects, inst, normal, light, r["ambient"], r["sky"], r["noise_std"], rng)
    return out


def simulate_sample(world: DrivingWorld, t: float, rig: dict, cfg: dict,
                    rng: np.random.Generator) -> dict:
    """Sensors and ground truth of one keyframe at time ``t``.

    Args:
        world: the sequence. t: seconds since the sequence start. rig: :func:`sensor_rig`.
        cfg: the full driving config. rng: generator for image noise.

    Returns:
        dict with ``T_map_base`` (4, 4); ``images`` {channel: (H, W, 3) uint8};
        ``lidar`` (N, 5) float32 x, y, z (lidar_top frame), intensity (40 + 8 * Occ3D class +
        U{0..7}, so ``(intensity - 40) // 8`` is the hit's class), ring (beam index);
        ``boxes`` list of dicts (track, cls, center_map (3,), size (l, w, h), yaw_map,
        num_lidar_pts, visibility (0-1)); ``occ`` {"semantics", "mask_camera", "mask_lidar"}:
        (X, Y, Z) uint8 in the ego frame.
    """
    objects = world.objects(t)
    scene = RayScene(objects)
    T_map_base = world.T_map_base(t)
    T_base_map = invert_transform(T_map_base)
    r = cfg["render"]
    light = np.asarray(r["light_dir"], dtype=np.float64)
    light /= np.linalg.norm(light)
    occ_cfg = cfg["occ3d"]
    dims = tuple(int(d) for d in occ_cfg["dims"])
    mask_cam = np.zeros(dims, dtype=np.uint8)
    mask_lidar = np.zeros(dims, dtype=np.uint8)
    n_static = len(world.static)
    track_ids = np.arange(n_static, len(objects))
    vis_pixels = np.zeros(len(objects), dtype=np.int64)
    alone_pixels = np.zeros(len(objects), dtype=np.int64)
    singles = {int(i): RayScene([SceneObject(0, "x", objects[i].primitives)]) for i in track_ids}
    images = {}
    stride = int(occ_cfg["camera_ray_stride"])
    for ch, cam in rig["cameras"].items():
        T_map_cam = T_map_base @ cam["T_base_cam"]
        depth, inst, normal, _ = scene.render(cam["K"], T_map_cam, cam["width"], cam["height"])
        images[ch] = _shade(objects, inst, normal, light, r["ambient"], r["sky"], r["noise_std"], rng)
        o, d = camera_rays(cam["K"], T_map_cam, cam["width"], cam["height"])
        sub = (slice(None, None, stride), slice(None, None, stride))
        _mark_rays(mask_cam, o[sub].reshape(-1, 3).astype(np.float64),
                   d[sub].reshape(-1, 3).astype(np.float64),
                   np.nan_to_num(depth[sub], nan=np.inf).ravel(), occ_cfg, T_base_map)
        # nuScenes visibility: visible fraction of the object's unoccluded pixels over 6 cameras.
        counts = np.bincount(inst[inst >= n_static].ravel(), minlength=len(objects))
        vis_pixels += counts
        T_cam_map = invert_transform(T_map_cam)
        for i in track_ids:
            lo, hi = objects[i].aabb()
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                                for z in (lo[2], hi[2])])
            pc = transform_points(T_cam_map, corners)
            if np.all(pc[:, 2] <= 0.1):
                continue
            pc = pc[pc[:, 2] > 0.1]
            uv = pc @ cam["K"].T
            uv = uv[:, :2] / uv[:, 2:3]
            u0, v0 = np.clip(np.floor(uv.min(0)).astype(int), 0, [cam["width"] - 1, cam["height"] - 1])
            u1, v1 = np.clip(np.ceil(uv.max(0)).astype(int) + 1, 0, [cam["width"], cam["height"]])
            if u1 <= u0 or v1 <= v0:
                continue
            t_alone, _, _ = singles[int(i)].cast(o[v0:v1, u0:u1], d[v0:v1, u0:u1])
            alone_pixels[i] += int(np.isfinite(t_alone).sum())
    # LiDAR: beams x azimuths from the sensor origin, ring = beam index (0 = lowest).
    lidar, (o_m, d_m, t_l, inst_l, hit) = _lidar_scan(scene, objects, T_map_base @ rig["T_base_lidar"],
                                                      cfg["lidar"], rng)
    _mark_rays(mask_lidar, o_m.astype(np.float64), d_m, np.where(hit, t_l, np.inf), occ_cfg,
               T_base_map)
    lidar_counts = np.bincount(inst_l[hit], minlength=len(objects))
    label = occ3d_semantics(scene, T_map_base, occ_cfg)
    boxes = []
    ego_xy = T_map_base[:2, 3]
    for i in track_ids:
        tr = world.tracks[int(objects[i].attrs["track"])]
        c = tr.center(t)
        if np.linalg.norm(c[:2] - ego_xy) > cfg["world"]["annotation_range"]:
            continue
        vis = vis_pixels[i] / alone_pixels[i] if alone_pixels[i] else 0.0
        boxes.append({"track": int(objects[i].attrs["track"]), "cls": tr.cls, "center_map": c,
                      "size": tr.size.copy(), "yaw_map": tr.yaw, "speed": tr.speed,
                      "num_lidar_pts": int(lidar_counts[i]), "visibility": float(min(vis, 1.0))})
    occ = {"semantics": label, "mask_camera": mask_cam, "mask_lidar": mask_lidar}
    return {"T_map_base": T_map_base, "images": images, "lidar": lidar, "boxes": boxes, "occ": occ}


def generate_driving(cfg: dict, out, scenes: int, seed: int, shard=(0, 1),
                     progress: bool = True) -> dict:
    """Generate driving sequences in nuScenes table format (see :mod:`.nuscenes_writer`).

    Returns:
        ``{"written", "skipped", "bytes", "seconds"}`` for this process.
    """
    from training.sim.nuscenes_writer import write_driving_dataset

    return write_driving_dataset(cfg, out, scenes, seed, shard, progress)
