"""Shape recipes: how an object class is built from primitives (local frame, base at z = 0).

Every recipe takes a random generator and a scale ``s`` (metres, the object's overall size: its
height for upright things, its diameter for round ones) and returns a :class:`Shape`: primitives in
the object's local frame (z up, resting on z = 0, centred on the z axis) plus what placement needs:
footprint radius, height, an optional flat top to put things on and an optional open interior to
put things in. Receptacles are unions of closed slabs, so they are open yet watertight per part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from occ_audit_ros.geometry import make_transform
from training.sim.primitives import Primitive

__all__ = ["Shape", "SHAPES", "build_shape"]


@dataclass
class Shape:
    """Primitives of one object in its local frame and its placement data.

    Attributes:
        parts: list of ``(kind, params, T_local_prim (4, 4))``.
        radius: footprint radius (m) about the local z axis, for collision-free placement.
        height: top of the object above its base (m).
        top: height (m) of a flat top others can rest on, or None.
        interior: ``(half_x, half_y, floor_z)`` of an open container's inner space (m), or None.
        top_half: ``(half_x, half_y)`` of the flat top's usable area (m), or None (then a square
            inscribed in the footprint is used).
    """

    parts: list = field(default_factory=list)
    radius: float = 0.0
    height: float = 0.0
    top: float | None = None
    interior: tuple[float, float, float] | None = None
    top_half: tuple[float, float] | None = None

    def primitives(self, T_world_obj) -> list[Primitive]:
        """The parts posed in ``world`` by the object pose ``T_world_obj`` (4, 4)."""
        return [Primitive(k, p, np.asarray(T_world_obj) @ T) for k, p, T in self.parts]


def _T(x=0.0, y=0.0, z=0.0, rx=0.0, ry=0.0, rz=0.0) -> np.ndarray:
    """(4, 4) local transform from a translation and XYZ Euler angles (radians)."""
    from scipy.spatial.transform import Rotation

    return make_transform([x, y, z], Rotation.from_euler("xyz", [rx, ry, rz]).as_matrix())


def _box(rng, s):
    sx, sy = s * rng.uniform(0.5, 1.2, size=2)
    sz = s * rng.uniform(0.4, 1.0)
    return Shape([("box", (sx, sy, sz), _T(z=sz / 2))], 0.5 * np.hypot(sx, sy), sz, top=sz)


def _flat_box(rng, s):  # books, laptops, trays of solid kind
    sx, sy = s * rng.uniform(0.6, 1.0), s * rng.uniform(0.4, 0.8)
    sz = s * rng.uniform(0.06, 0.15)
    return Shape([("box", (sx, sy, sz), _T(z=sz / 2))], 0.5 * np.hypot(sx, sy), sz, top=sz)


def _tall_box(rng, s):  # fridges, cabinets, bookcases
    sx, sy = s * rng.uniform(0.35, 0.6, size=2)
    return Shape([("box", (sx, sy, s), _T(z=s / 2))], 0.5 * np.hypot(sx, sy), s, top=s)


def _cylinder(rng, s):
    h = s
    r = 0.5 * s * rng.uniform(0.4, 0.9)
    return Shape([("cylinder", (r, h), _T(z=h / 2))], r, h, top=h)


def _disc(rng, s):  # plates, pucks: s is the diameter
    r = 0.5 * s
    h = s * rng.uniform(0.08, 0.2)
    return Shape([("cylinder", (r, h), _T(z=h / 2))], r, h, top=h)


def _sphere(rng, s):
    r = 0.5 * s
    return Shape([("sphere", (r,), _T(z=r))], r, 2 * r)


def _cone(rng, s):
    h = s
    r = 0.5 * s * rng.uniform(0.4, 0.8)
    return Shape([("cone", (r, h), _T())], r, h)


def _torus(rng, s):  # lying flat: s is the outer diameter
    tube = 0.5 * s * rng.uniform(0.15, 0.3)
    ring = 0.5 * s - tube
    return Shape([("torus", (ring, tube), _T(z=tube))], 0.5 * s, 2 * tube)


def _capsule(rng, s):
    r = 0.5 * s * rng.uniform(0.2, 0.35)
    body = max(s - 2 * r, 0.2 * s)
    return Shape(
        [("cylinder", (r, body), _T(z=r + body / 2)), ("sphere", (r,), _T(z=r)),
         ("sphere", (r,), _T(z=r + body))], r, body + 2 * r)


def _mug(rng, s):
    h = s
    r = 0.5 * s * rng.uniform(0.6, 0.8)
    tube = 0.08 * s
    ring = 0.25 * s
    return Shape(
        [("cylinder", (r, h), _T(z=h / 2)),
         ("torus", (ring, tube), _T(x=r + ring - 1.5 * tube, z=h / 2, rx=np.pi / 2))],
        r + 2 * ring, h, top=h)


def _bottle(rng, s):
    r = 0.5 * s * rng.uniform(0.25, 0.35)
    body = 0.6 * s
    shoulder = 0.15 * s
    neck_r = 0.35 * r
    neck = s - body - shoulder
    return Shape(
        [("cylinder", (r, body), _T(z=body / 2)), ("cone", (r, shoulder + 0.5 * neck), _T(z=body)),
         ("cylinder", (neck_r, neck), _T(z=body + shoulder + neck / 2))], r, s)


def _lamp(rng, s):
    base_r, base_h = 0.2 * s, 0.05 * s
    pole_r = 0.025 * s
    shade_r, shade_h = 0.25 * s * rng.uniform(0.8, 1.2), 0.3 * s
    pole = s - base_h - shade_h * 0.5
    return Shape(
        [("cylinder", (base_r, base_h), _T(z=base_h / 2)),
         ("cylinder", (pole_r, pole), _T(z=base_h + pole / 2)),
         ("cone", (shade_r, shade_h), _T(z=s - shade_h))], max(base_r, shade_r), s)


def _dumbbell(rng, s):  # lying along x: s is the length
    r = 0.15 * s * rng.uniform(0.8, 1.2)
    bar = s - 2 * r
    return Shape(
        [("cylinder", (0.25 * r, bar), _T(z=r, ry=np.pi / 2)), ("sphere", (r,), _T(x=-bar / 2, z=r)),
         ("sphere", (r,), _T(x=bar / 2, z=r))], 0.5 * s, 2 * r)


def _snowman(rng, s):  # stacked spheres (teddy bears, snowmen)
    r1 = 0.3 * s
    r2 = 0.2 * s
    return Shape([("sphere", (r1,), _T(z=r1)), ("sphere", (r2,), _T(z=2 * r1 + r2 * 0.8))],
                 r1, 2 * r1 + 1.8 * r2)


def _hourglass(rng, s):
    r = 0.5 * s * rng.uniform(0.4, 0.6)
    h = 0.5 * s
    return Shape([("cone", (r, h), _T(z=s, rx=np.pi)), ("cone", (r, h), _T())], r, s)


def _open_box(rng, s, flat=False):  # bins, baskets, trays: bottom + 4 walls, open on top
    sx, sy = s * rng.uniform(0.7, 1.2), s * rng.uniform(0.6, 1.0)
    sz = s * (rng.uniform(0.12, 0.2) if flat else rng.uniform(0.4, 0.7))
    t = max(0.008, 0.04 * s)
    parts = [("box", (sx, sy, t), _T(z=t / 2)),
             ("box", (t, sy, sz), _T(x=sx / 2 - t / 2, z=sz / 2)),
             ("box", (t, sy, sz), _T(x=-sx / 2 + t / 2, z=sz / 2)),
             ("box", (sx - 2 * t, t, sz), _T(y=sy / 2 - t / 2, z=sz / 2)),
             ("box", (sx - 2 * t, t, sz), _T(y=-sy / 2 + t / 2, z=sz / 2))]
    return Shape(parts, 0.5 * np.hypot(sx, sy), sz, interior=(sx / 2 - t, sy / 2 - t, t))


def _tray(rng, s):
    return _open_box(rng, s, flat=True)


def _table(rng, s):  # s is the height; top is larger than tall
    sx, sy = s * rng.uniform(1.2, 1.8), s * rng.uniform(0.9, 1.3)
    t = 0.04
    leg = 0.035
    parts = [("box", (sx, sy, t), _T(z=s - t / 2))]
    for cx in (-1, 1):
        for cy in (-1, 1):
            parts.append(("box", (leg, leg, s - t),
                          _T(x=cx * (sx / 2 - 2 * leg), y=cy * (sy / 2 - 2 * leg), z=(s - t) / 2)))
    return Shape(parts, 0.5 * np.hypot(sx, sy), s, top=s, top_half=(sx / 2, sy / 2))


def _chair(rng, s):  # s is the back height
    seat = 0.5 * s
    w = 0.45 * s * rng.uniform(0.9, 1.1)
    t = 0.04
    leg = 0.03
    parts = [("box", (w, w, t), _T(z=seat - t / 2)),
             ("box", (t, w, s - seat), _T(x=-w / 2 + t / 2, z=seat + (s - seat) / 2))]
    for cx in (-1, 1):
        for cy in (-1, 1):
            parts.append(("box", (leg, leg, seat - t),
                          _T(x=cx * (w / 2 - leg), y=cy * (w / 2 - leg), z=(seat - t) / 2)))
    return Shape(parts, 0.5 * np.hypot(w, w), s)


#: Recipe name -> function(rng, scale) -> Shape.
SHAPES = {
    "box": _box, "flat_box": _flat_box, "tall_box": _tall_box, "cylinder": _cylinder,
    "disc": _disc, "sphere": _sphere, "cone": _cone, "torus": _torus, "capsule": _capsule,
    "mug": _mug, "bottle": _bottle, "lamp": _lamp, "dumbbell": _dumbbell, "snowman": _snowman,
    "hourglass": _hourglass, "open_box": _open_box, "tray": _tray, "table": _table, "chair": _chair,
}


def build_shape(name: str, rng: np.random.Generator, scale: float) -> Shape:
    """Build one shape.

    Args:
        name: a key of :data:`SHAPES`. rng: random generator. scale: overall size, metres.

    Raises:
        ValueError: unknown recipe or non-positive scale.
    """
    if name not in SHAPES:
        raise ValueError(f"unknown shape recipe {name!r}; have {sorted(SHAPES)}")
    if not scale > 0:
        raise ValueError(f"shape scale must be > 0, got {scale}")
    return SHAPES[name](rng, float(scale))
