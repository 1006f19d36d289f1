"""Indoor / tabletop scenes in the Semantic Abstraction workspace, with exact ground truth.

A scene (Ha & Song, CoRL 2022, App. 6.2 workspace: a 2 m cube from (-1, -1, -0.1) to (1, 1, 1.9) m,
z up, floor top at z = 0): a floor slab, 1-2 walls just outside the workspace, 1-2 tables, open
receptacles (on tables or the floor) with objects inside, objects on tables, on the floor and
stacked on other objects; every object has a class from an open vocabulary (``config/
sim_indoor.yaml``) queried by its name or a synonym, by split. Each view is a random camera looking
at the workspace, rendered by ray casting (:mod:`.primitives`).

Per scene :func:`generate_indoor_scene` returns (V = views, O = objects, G = grid^3 lattice,
M = random query points, D = descriptions, K = relevancy labels):

* ``rgb`` (V, H, W, 3) uint8: class colour x Lambertian shading x checker texture + noise.
* ``depth`` (V, H, W) float32 metres along the optical axis, NaN = no hit.
* ``instance`` (V, H, W) int16 object index (-1 = no hit).
* ``K`` (V, 3, 3) float64, ``T_world_cam`` (V, 4, 4) float64 (optical frame -> world).
* ``occ_grid`` (O, ceil(G/8)) uint8: ``np.packbits`` of the per-object occupancy at the centres
  of a grid^3 lattice over the workspace (C order over x, y, z, as :class:`VoxelGridSpec`).
* ``query_points`` (M, 3) float32 uniform random workspace points, ``occ_points`` (O, ceil(M/8)).
* ``vool_grid`` (V, D, ceil(G/8)) / ``vool_points`` (V, D, ceil(M/8)) uint8 packed VOOL GT
  (D = the most descriptions of any view; rows past a view's own count are zero).
* ``relevancy`` (V, K, ceil(H/s), ceil(W/s)) float16: **simulated** relevancy (not CLIP), K = the
  largest label set of any view, zero-padded; each view's labels are in ``meta``.
* ``meta``: JSON with objects (category, label, shape, support / container, bounds, visible
  pixels per view), descriptions per view, relevancy labels per view, workspace, grid, split.
"""

from __future__ import annotations

import json
import math

import numpy as np

from occ_audit_ros.geometry import make_transform, yaw_to_matrix
from training.sim.primitives import Primitive, RayScene, SceneObject, look_at
from training.sim.relations import vool_descriptions
from training.sim.relevancy_sim import simulate_relevancy
from training.sim.shapes import Shape, build_shape
from training.sim.vocabulary import ClassSpec, Vocabulary

__all__ = ["grid_points", "class_color", "build_indoor_objects", "render_rgb",
           "generate_indoor_scene", "unpack_bits"]


def grid_points(lower, upper, n: int) -> np.ndarray:
    """(n^3, 3) float32 centres of an n x n x n lattice over the box [lower, upper], C order over
    (x, y, z) (flat index = (i * n + j) * n + k)."""
    lower = np.asarray(lower, dtype=np.float64)
    step = (np.asarray(upper, dtype=np.float64) - lower) / n
    axes = [lower[a] + (np.arange(n) + 0.5) * step[a] for a in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return g.reshape(-1, 3).astype(np.float32)


def unpack_bits(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of the shards' ``np.packbits(..., axis=-1)``: (..., ceil(count/8)) -> (..., count)
    bool."""
    return np.unpackbits(packed, axis=-1, count=count).astype(bool)


def class_color(name: str) -> np.ndarray:
    """Deterministic base RGB (3,) float64 in [0, 1] of a class name (hash -> hue)."""
    h = 0
    for ch in name.encode():
        h = (h * 131 + ch) % 1000003
    hue = (h % 360) / 360.0
    sat = 0.45 + 0.4 * ((h // 360) % 7) / 6.0
    val = 0.55 + 0.4 * ((h // 2520) % 5) / 4.0
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    return np.array([(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val),
                     (val, p, q)][i])


def _yaw_T(x, y, z, yaw) -> np.ndarray:
    """(4, 4) pose translated to (x, y, z) and rotated by ``yaw`` about +z."""
    return make_transform([x, y, z], yaw_to_matrix(yaw))


class _Surface:
    """A horizontal rectangle objects can be placed on, with its occupied discs."""

    def __init__(self, owner: int, center, half, yaw: float, z: float, kind: str):
        self.owner, self.center, self.half = owner, np.asarray(center, float), np.asarray(half, float)
        self.yaw, self.z, self.kind = yaw, z, kind
        self.discs: list[tuple[np.ndarray, float]] = []

    def sample(self, radius: float, rng, tries: int):
        """A free (x, y) centre for a disc of ``radius`` inside the rectangle, or None."""
        room = self.half - radius
        if np.any(room < 0):
            return None
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        for _ in range(tries):
            lx, ly = rng.uniform(-room, room) if np.all(room > 0) else (0.0, 0.0)
            xy = self.center + np.array([c * lx - s * ly, s * lx + c * ly])
            if all(np.linalg.norm(xy - d) >= radius + r for d, r in self.discs):
                self.discs.append((xy, radius))
                return xy
        return None


def build_indoor_objects(cfg: dict, vocab: Vocabulary, rng: np.random.Generator) -> list[SceneObject]:
    """Lay out one scene's objects (floor, walls, tables, receptacles, objects).

    Args:
        cfg: indoor config (``layout``, ``workspace``, ``split``, ``render``).
        vocab: the class vocabulary.
        rng: scene random generator.

    Returns:
        Objects with ``instance_id`` = list index; ``attrs`` hold ``on`` / ``in`` (instance id of
        the support / container), ``role`` and, for walls, ``normal`` (unit (2,) into the room).

    Raises:
        ValueError: on a vocabulary without the classes a layout needs.
    """
    lay, split = cfg["layout"], cfg["split"]
    lower, upper = np.asarray(cfg["workspace"]["lower"]), np.asarray(cfg["workspace"]["upper"])
    tries = int(lay["placement_tries"])
    jitter = float(cfg["render"]["color_jitter"])
    pool, required = vocab.pool(split)
    objects: list[SceneObject] = []

    def rint(lohi) -> int:
        return int(rng.integers(int(lohi[0]), int(lohi[1]) + 1))

    def add(category, label, shape_name, prims, **attrs) -> SceneObject:
        color = np.clip(class_color(category) + rng.normal(0, jitter, 3), 0, 1)
        obj = SceneObject(len(objects), category, prims, label, shape_name, color, attrs)
        objects.append(obj)
        return obj

    # Floor (top at z = 0, 10 cm thick so it fills the workspace's bottom slab) and walls.
    add("floor", "floor", "box",
        [Primitive("box", (8.0, 8.0, 0.1), _yaw_T(0, 0, -0.05, 0))], role="structure")
    sides = rng.permutation(4)[: rint(lay["walls"])]
    for side in sorted(int(v) for v in sides):
        ang = side * math.pi / 2
        n_out = np.array([math.cos(ang), math.sin(ang)])
        d = rng.uniform(*lay["wall_distance"])
        centre = n_out * (d + 0.05)
        add("wall", "wall", "box",
            [Primitive("box", (0.1, 8.0, 2.6), _yaw_T(centre[0], centre[1], 1.3, ang))],
            role="structure", normal=(-n_out).tolist())

    def pick(place: str) -> ClassSpec | None:
        cands = [c for c in pool if c.place == place]
        need = [c for c in required if c.place == place]
        if need and not any(o.attrs.get("novel") for o in objects) and rng.random() < 0.7:
            cands = need
        return cands[rng.integers(len(cands))] if cands else None

    def make(spec: ClassSpec):
        scale = rng.uniform(*spec.scale)
        return build_shape(spec.shape, rng, scale)

    def place_on(surface: _Surface, spec: ClassSpec, shape: Shape, extra_attrs=None):
        xy = surface.sample(shape.radius, rng, tries)
        if xy is None:
            return None
        yaw = rng.uniform(-math.pi, math.pi)
        T = _yaw_T(xy[0], xy[1], surface.z, yaw)
        label = vocab.label_for(spec, split, rng)
        attrs = {"role": spec.place, "novel": spec in required, "yaw": yaw,
                 "top": None if shape.top is None else surface.z + shape.top}
        attrs[surface.kind] = surface.owner
        attrs.update(extra_attrs or {})
        obj = add(spec.name, label, spec.shape, shape.primitives(T), **attrs)
        obj.attrs["shape_data"] = shape
        obj.attrs["pose"] = T
        return obj

    # Floor area inside the workspace (a margin keeps furniture inside the cube).
    floor = _Surface(0, 0.5 * (lower[:2] + upper[:2]), 0.5 * (upper[:2] - lower[:2]) - 0.05, 0.0,
                     0.0, "on")
    tables = []
    table_specs = [c for c in vocab.classes.values() if c.place == "table_furniture"]
    for _ in range(rint(lay["tables"])):
        spec = table_specs[rng.integers(len(table_specs))]
        shape = make(spec)
        obj = place_on(floor, spec, shape)
        if obj is not None:
            tables.append(obj)
    surfaces = []
    for t in tables:
        sd = t.attrs["shape_data"]
        hx, hy = sd.top_half or (sd.radius / np.sqrt(2),) * 2
        surfaces.append(_Surface(t.instance_id, t.attrs["pose"][:2, 3], (hx - 0.02, hy - 0.02),
                                 t.attrs["yaw"], t.attrs["top"], "on"))

    receptacles = []
    for _ in range(rint(lay["receptacles"])):
        spec = pick("receptacle")
        if spec is None:
            break
        shape = make(spec)
        where = surfaces + [floor] if surfaces else [floor]
        surf = where[rng.integers(len(where))]
        obj = place_on(surf, spec, shape)
        if obj is not None:
            receptacles.append(obj)

    supports = []
    for surf in surfaces:
        for _ in range(rint(lay["objects_per_table"])):
            spec = pick("table") if rng.random() < 0.7 else pick("support")
            if spec is None:
                continue
            obj = place_on(surf, spec, make(spec))
            if obj is not None and spec.place == "support" and obj.attrs["top"] is not None:
                supports.append(obj)
    for _ in range(rint(lay["floor_objects"])):
        spec = pick("floor")
        if spec is not None:
            place_on(floor, spec, make(spec))

    for rec in receptacles:
        hx, hy, fz = rec.attrs["shape_data"].interior
        inner = _Surface(rec.instance_id, rec.attrs["pose"][:2, 3], (hx, hy), rec.attrs["yaw"],
                         rec.attrs["pose"][2, 3] + fz, "in")
        for _ in range(rint(lay["objects_inside"])):
            spec = pick("table")
            if spec is None:
                continue
            shape = make(spec)
            obj = place_on(inner, spec, shape)
            if obj is not None:
                obj.attrs["on"] = None

    for _ in range(rint(lay["stacked"])):
        if not supports:
            break
        base = supports[rng.integers(len(supports))]
        lo, hi = base.aabb()
        top = _Surface(base.instance_id, 0.5 * (lo[:2] + hi[:2]),
                       0.5 * (hi[:2] - lo[:2]) * 0.7, 0.0, base.attrs["top"], "on")
        spec = pick("table")
        if spec is not None:
            place_on(top, spec, make(spec))
    for o in objects:  # placement-only data is not metadata
        o.attrs.pop("shape_data", None)
        o.attrs.pop("pose", None)
    return objects


def _camera(cfg: dict, objects: list[SceneObject], rng) -> tuple[np.ndarray, np.ndarray]:
    """Random intrinsics (3, 3) and pose (4, 4) looking at a table (or the workspace centre) from
    the open side of the room."""
    cam = cfg["camera"]
    w, h = int(cam["width"]), int(cam["height"])
    hfov = math.radians(rng.uniform(*cam["hfov_deg"]))
    f = 0.5 * w / math.tan(0.5 * hfov)
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=np.float64)
    tables = [o for o in objects if o.attrs.get("role") == "table_furniture"]
    if tables:
        lo, hi = tables[rng.integers(len(tables))].aabb()
        target = np.array([0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), hi[2]])
    else:
        target = np.array([0.0, 0.0, 0.4])
    target = target + rng.uniform(-1, 1, 3) * cam["target_jitter"]
    walls = [np.asarray(o.attrs["normal"]) for o in objects if "normal" in o.attrs]
    for _ in range(200):
        az = rng.uniform(-math.pi, math.pi)
        view = np.array([math.cos(az), math.sin(az)])  # from target to eye
        if all(view @ n > -0.2 for n in walls):  # eye on the room side of every wall
            break
    dist = rng.uniform(*cam["distance"])
    eye = np.array([target[0] + dist * view[0], target[1] + dist * view[1],
                    rng.uniform(*cam["height_range"])])
    return K, look_at(eye, target)


def render_rgb(cfg: dict, objects: list[SceneObject], instance, normal, points, rng) -> np.ndarray:
    """Colour image of a rendered view.

    Args:
        cfg: config with a ``render`` section. objects: the scene's objects.
        instance: (H, W) int object index (-1 = miss). normal: (H, W, 3) world normals.
        points: (H, W, 3) world hit points (NaN for misses). rng: generator for texture and noise.

    Returns:
        (H, W, 3) uint8 RGB: base colour x (ambient + diffuse |n . l|) x checker texture + noise;
        misses are black.
    """
    r = cfg["render"]
    light = np.asarray(r["light_dir"], dtype=np.float64)
    light /= np.linalg.norm(light)
    colors = np.stack([o.color for o in objects] + [np.zeros(3)])  # last row: miss
    periods = rng.uniform(*r["texture_period"], size=len(objects) + 1)
    inst = np.where(instance < 0, len(objects), instance)
    shade = r["ambient"] + (1 - r["ambient"]) * np.abs(normal @ light)
    pts = np.nan_to_num(points)
    per = periods[inst][..., None]
    checker = np.sign(np.sin(np.pi * pts / per)).prod(axis=-1)
    tex = 1.0 + r["texture_amplitude"] * checker
    img = colors[inst] * (shade * tex)[..., None] * 255.0
    img += rng.normal(0, r["noise_std"], img.shape)
    img[instance < 0] = 0
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    return v


def generate_indoor_scene(cfg: dict, vocab: Vocabulary, rng: np.random.Generator) -> dict:
    """One indoor scene with all its views and ground truth (layout in the module docstring).

    Args:
        cfg: the full indoor config (``training/config/sim_indoor.yaml`` merged over defaults).
        vocab: :meth:`Vocabulary.from_config` of ``cfg``.
        rng: the scene's generator (see :func:`shards.scene_rng`).

    Returns:
        name -> array, plus ``meta`` (JSON string).
    """
    objects = build_indoor_objects(cfg, vocab, rng)
    scene = RayScene(objects)
    ws = cfg["workspace"]
    n = int(cfg["queries"]["grid"])
    grid = grid_points(ws["lower"], ws["upper"], n)
    qpts = rng.uniform(ws["lower"], ws["upper"], size=(int(cfg["queries"]["random"]), 3))
    qpts = qpts.astype(np.float32)
    occ_grid = scene.occupancy(grid)
    occ_pts = scene.occupancy(qpts)
    cam_cfg = cfg["camera"]
    rel_cfg = dict(cfg.get("relevancy_sim") or {})
    cats = {o.instance_id: o.category for o in objects}
    views = {k: [] for k in ("rgb", "depth", "instance", "K", "T_world_cam", "vool_grid",
                             "vool_points", "relevancy")}
    view_meta = []
    all_labels = sorted({o.label for o in objects})
    vocab_labels = sorted({vocab.label_for(c, cfg["split"], rng) for c in vocab.pool(cfg["split"])[0]})
    for _ in range(int(cfg["views_per_scene"])):
        K, T = _camera(cfg, objects, rng)
        depth, inst, normal, pts = scene.render(K, T, int(cam_cfg["width"]), int(cam_cfg["height"]),
                                                float(cam_cfg["max_depth"]))
        rgb = render_rgb(cfg, objects, inst, normal, pts, rng)
        if cfg["render"].get("depth_noise_std", 0) > 0:
            depth = depth + rng.normal(0, cfg["render"]["depth_noise_std"], depth.shape).astype(np.float32)
        descs = vool_descriptions(objects, T, cfg["relations"], rng)
        vg = np.zeros((len(descs), len(grid)), dtype=bool)
        vp = np.zeros((len(descs), len(qpts)), dtype=bool)
        for d, desc in enumerate(descs):
            vg[d] = occ_grid[list(desc.positives)].any(axis=0)
            vp[d] = occ_pts[list(desc.positives)].any(axis=0)
        visible = np.bincount(inst[inst >= 0].ravel(), minlength=len(objects))
        # Queried set: visible objects' labels and every description's target / reference (VOOL
        # targets may be hidden), plus absent distractor classes.
        labels = sorted({objects[i].label for i in np.flatnonzero(visible)}
                        | {t for d in descs for t in (d.target, d.reference)})
        absent = [t for t in vocab_labels if t not in all_labels]
        k = min(int(rel_cfg.get("distractor_labels", 0)), len(absent))
        labels += [absent[i] for i in sorted(rng.choice(len(absent), size=k, replace=False))]
        if rel_cfg.get("enabled", True):
            params = {k2: v for k2, v in rel_cfg.items() if k2 not in ("enabled", "distractor_labels")}
            rel = simulate_relevancy(inst, cats, labels, vocab.categories_of, rng, params)
            views["relevancy"].append(rel.astype(np.float16))
        views["rgb"].append(rgb)
        views["depth"].append(depth)
        views["instance"].append(inst.astype(np.int16))
        views["K"].append(K)
        views["T_world_cam"].append(T)
        views["vool_grid"].append(np.packbits(vg, axis=-1))
        views["vool_points"].append(np.packbits(vp, axis=-1))
        view_meta.append({
            "visible_pixels": visible.tolist(),
            "descriptions": [{"target": d.target, "relation": d.relation, "reference": d.reference,
                              "positives": list(d.positives)} for d in descs],
            "relevancy_labels": labels,
        })
    meta = {
        "kind": "indoor",
        "split": cfg["split"],
        "workspace": {"lower": list(ws["lower"]), "upper": list(ws["upper"])},
        "grid": n,
        "num_query_points": len(qpts),
        "relevancy": "SIMULATED (training.sim.relevancy_sim), not CLIP",
        "objects": [{
            "id": o.instance_id, "category": o.category, "label": o.label, "shape": o.shape,
            "aabb": [o.aabb()[0].round(5).tolist(), o.aabb()[1].round(5).tolist()],
            "attrs": {k: _jsonable(v) for k, v in o.attrs.items()},
        } for o in objects],
        "views": view_meta,
    }
    out = {
        "occ_grid": np.packbits(occ_grid, axis=-1),
        "query_points": qpts,
        "occ_points": np.packbits(occ_pts, axis=-1),
        "meta": json.dumps(meta, sort_keys=True),
    }
    for key, vals in views.items():
        if vals:
            if key in ("vool_grid", "vool_points"):
                width = vals[0].shape[-1]
                dmax = max(v.shape[0] for v in vals)
                stack = np.zeros((len(vals), dmax, width), dtype=np.uint8)
                for i, v in enumerate(vals):
                    stack[i, : v.shape[0]] = v
                out[key] = stack
            elif key == "relevancy":
                kmax = max(v.shape[0] for v in vals)
                stack = np.zeros((len(vals), kmax) + vals[0].shape[1:], dtype=np.float16)
                for i, v in enumerate(vals):
                    stack[i, : v.shape[0]] = v
                out[key] = stack
            else:
                out[key] = np.stack(vals)
    return out
