"""Simulator ray casting and occupancy against brute force (analytic hits, point-in-mesh parity)."""

import numpy as np
import pytest

from occ_audit_ros.geometry import make_transform
from training.sim.primitives import Primitive, RayScene, SceneObject, camera_rays, look_at
from training.sim.shapes import SHAPES, build_shape


def _T(x, y, z):
    return make_transform([x, y, z], [1.0, 0.0, 0.0, 0.0])


def _ray_box(o, d, lo, hi):
    """Analytic slab intersection: t of the first hit per ray (inf for a miss)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - o) / d
        t2 = (hi - o) / d
    tmin = np.nanmax(np.minimum(t1, t2), axis=-1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.where((tmax >= tmin) & (tmin > 0), tmin, np.inf)


def _ray_sphere(o, d, c, r):
    oc = o - c
    a = (d * d).sum(-1)
    b = 2 * (oc * d).sum(-1)
    cc = (oc * oc).sum(-1) - r * r
    disc = b * b - 4 * a * cc
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def test_depth_and_ids_match_analytic_ray_hits():
    box_lo, box_hi = np.array([-0.3, -0.5, 0.0]), np.array([0.1, -0.1, 0.6])
    sph_c, sph_r = np.array([0.0, 0.4, 0.35]), 0.25
    objects = [
        SceneObject(0, "box", [Primitive("box", box_hi - box_lo, _T(*(0.5 * (box_lo + box_hi))))]),
        SceneObject(1, "ball", [Primitive("sphere", [sph_r], _T(*sph_c))]),
    ]
    scene = RayScene(objects)
    K = np.array([[120.0, 0, 63.5], [0, 120.0, 47.5], [0, 0, 1]])
    T = look_at([2.0, 0.3, 1.2], [0.0, 0.0, 0.3])
    depth, inst, normal, points = scene.render(K, T, 128, 96)
    o, d = camera_rays(K, T, 128, 96)
    o, d = o.astype(np.float64), d.astype(np.float64)
    t_box = _ray_box(o, d, box_lo, box_hi)
    t_sph = _ray_sphere(o, d, sph_c, sph_r)
    analytic = np.minimum(t_box, t_sph)
    hit_a = np.isfinite(analytic)
    assert 0.1 < hit_a.mean() < 0.9
    # Box faces are exact planes: same depth to float precision wherever the box is hit first.
    box_px = (t_box < t_sph) & (inst == 0)
    assert box_px.sum() > 500
    np.testing.assert_allclose(depth[box_px], t_box[box_px], atol=2e-5)
    # The sphere mesh is inscribed in the sphere: never nearer along the ray, and its hit points
    # lie at most the facets' sagitta (< 3.5 % of r at 12 rings) inside the sphere.
    sph_px = (t_sph < t_box) & (inst == 1)
    assert sph_px.sum() > 300
    assert (depth[sph_px] - t_sph[sph_px]).min() > -1e-5
    deficit = sph_r - np.linalg.norm(points[sph_px] - sph_c, axis=1)
    assert deficit.min() > -1e-5 and deficit.max() < 0.035 * sph_r
    # Instance ids agree except on a thin silhouette band of the tessellated sphere.
    ids_a = np.where(~hit_a, -1, np.where(t_box < t_sph, 0, 1))
    assert (ids_a == inst).mean() > 0.98
    # Depth is along the optical axis: back-projected hits are the world hit points.
    R, t = T[:3, :3], T[:3, 3]
    pts_cam = (points[box_px] - t) @ R
    np.testing.assert_allclose(pts_cam[:, 2], depth[box_px], atol=1e-4)


def _parity_inside(points, verts, tris, direction):
    """Brute-force point-in-mesh: odd number of crossings of a ray (Moller-Trumbore, all tris)."""
    v0, v1, v2 = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    e1, e2 = v1 - v0, v2 - v0
    p = np.cross(direction, e2)
    det = (e1 * p).sum(-1)
    inv = 1.0 / np.where(np.abs(det) < 1e-12, np.nan, det)
    s = points[:, None, :] - v0[None]
    u = (s * p[None]).sum(-1) * inv
    q = np.cross(s, e1[None])
    v = (q * direction).sum(-1) * inv
    t = (q * e2[None]).sum(-1) * inv
    hit = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    return hit.sum(axis=1) % 2 == 1


@pytest.mark.parametrize("shape", ["mug", "open_box", "bottle", "snowman"])
def test_occupancy_matches_point_in_mesh(shape):
    rng = np.random.default_rng(1)
    parts = build_shape(shape, rng, 0.3).primitives(_T(0.1, -0.2, 0.05))
    obj = SceneObject(0, shape, parts)
    lo, hi = obj.aabb()
    pts = rng.uniform(lo - 0.02, hi + 0.02, size=(1500, 3)).astype(np.float32)
    occ = RayScene([obj]).occupancy(pts)[0]
    direction = np.array([0.5377, 0.8253, 0.1722])  # generic, avoids edges
    ref = np.zeros(len(pts), dtype=bool)
    for prim in parts:  # an object is the union of its closed parts
        v, f = prim.triangles()
        ref |= _parity_inside(pts.astype(np.float64), v.astype(np.float64), f.astype(np.int64),
                              direction)
    assert 0.02 < ref.mean() < 0.9
    assert (occ == ref).mean() >= 0.998  # ties only for points within float eps of a face


def test_box_occupancy_fraction_equals_volume():
    size = np.array([0.37, 0.52, 0.23])
    obj = SceneObject(0, "box", [Primitive("box", size, _T(0.0, 0.0, 0.0))])
    n = 64
    axis = (np.arange(n) + 0.5) / n - 0.5  # unit cube lattice
    g = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    occ = RayScene([obj]).occupancy(g)[0]
    expected = np.prod(np.floor(size * n / 2 + 0.5) * 2) / n ** 3  # lattice points in the box
    assert occ.mean() == pytest.approx(expected, abs=1e-9)
    assert occ.mean() == pytest.approx(np.prod(size), rel=0.08)


def test_every_shape_is_closed_and_grounded():
    rng = np.random.default_rng(0)
    for name in SHAPES:
        shape = build_shape(name, rng, 0.4)
        obj = SceneObject(0, name, shape.primitives(np.eye(4)))
        lo, hi = obj.aabb()
        assert lo[2] == pytest.approx(0.0, abs=1e-6), name
        assert hi[2] == pytest.approx(shape.height, abs=0.02 * shape.height), name
        for prim in obj.primitives:
            assert prim.legacy_mesh().is_watertight(), (name, prim.kind)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown primitive"):
        Primitive("pyramid", [1.0], np.eye(4))
    with pytest.raises(ValueError, match="positive"):
        Primitive("box", [1.0, 0.0, 1.0], np.eye(4))
    with pytest.raises(ValueError, match="unique"):
        RayScene([SceneObject(0, "a", []), SceneObject(0, "b", [])])
    with pytest.raises(ValueError, match="unknown shape"):
        build_shape("blob", np.random.default_rng(0), 0.1)
