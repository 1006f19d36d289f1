"""Primitive meshes, composite objects and ray casting with open3d (depth, ids, occupancy).

Every object of a simulated scene is a union of closed, watertight primitives (box, cylinder,
sphere, cone, torus), each with its own pose. Open receptacles (bins, bowls, tables) are composites
of closed slabs, so the occupancy of an object is exactly the OR of its primitives' occupancies and
open3d's parity-based ``compute_occupancy`` is valid per primitive even where primitives of one
object overlap.

Frames: ``world`` is z up, metres. Camera frames are optical frames (x right, y down, z forward),
pixel centres at integer ``(u, v)`` as in :mod:`occ_audit_ros.geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

__all__ = [
    "PRIMITIVE_KINDS",
    "Primitive",
    "SceneObject",
    "RayScene",
    "camera_rays",
    "look_at",
]

#: Supported primitive kinds and their parameters (metres):
#: box (sx, sy, sz) centred; cylinder (radius, height) centred, axis z; sphere (radius,);
#: cone (radius, height) base at local z = 0, apex at z = height; torus (ring radius, tube radius)
#: centred, in the local xy plane.
PRIMITIVE_KINDS = ("box", "cylinder", "sphere", "cone", "torus")

_RESOLUTION = {"cylinder": 24, "sphere": 12, "cone": 24, "torus": (24, 12)}


@dataclass
class Primitive:
    """One closed primitive with a rigid pose.

    Attributes:
        kind: one of :data:`PRIMITIVE_KINDS`.
        params: (k,) float64 size parameters in metres (see :data:`PRIMITIVE_KINDS`).
        T_world_prim: (4, 4) float64 pose, primitive local frame -> ``world``.
    """

    kind: str
    params: np.ndarray
    T_world_prim: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in PRIMITIVE_KINDS:
            raise ValueError(f"unknown primitive kind {self.kind!r}; have {PRIMITIVE_KINDS}")
        self.params = np.asarray(self.params, dtype=np.float64).reshape(-1)
        need = {"box": 3, "cylinder": 2, "sphere": 1, "cone": 2, "torus": 2}[self.kind]
        if self.params.size != need or np.any(self.params <= 0):
            raise ValueError(f"{self.kind} needs {need} positive parameters, got {self.params}")
        self.T_world_prim = np.asarray(self.T_world_prim, dtype=np.float64).reshape(4, 4)

    def legacy_mesh(self) -> o3d.geometry.TriangleMesh:
        """The primitive as a watertight open3d legacy mesh in ``world`` (vertices float64, m)."""
        G = o3d.geometry.TriangleMesh
        p = self.params
        if self.kind == "box":
            mesh = G.create_box(p[0], p[1], p[2])
            mesh.translate(-0.5 * p)
        elif self.kind == "cylinder":
            mesh = G.create_cylinder(p[0], p[1], resolution=_RESOLUTION["cylinder"], split=1)
        elif self.kind == "sphere":
            mesh = G.create_sphere(p[0], resolution=_RESOLUTION["sphere"])
        elif self.kind == "cone":
            mesh = G.create_cone(p[0], p[1], resolution=_RESOLUTION["cone"], split=1)
        else:
            radial, tubular = _RESOLUTION["torus"]
            mesh = G.create_torus(p[0], p[1], radial_resolution=radial, tubular_resolution=tubular)
        mesh.transform(self.T_world_prim)
        return mesh

    def triangles(self) -> tuple[np.ndarray, np.ndarray]:
        """``(vertices (V, 3) float32 m in world, triangles (F, 3) uint32)`` of the mesh."""
        mesh = self.legacy_mesh()
        return (np.asarray(mesh.vertices, dtype=np.float32),
                np.asarray(mesh.triangles, dtype=np.uint32))

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounds ``(lo (3,), hi (3,))`` float64 of the mesh, metres."""
        v, _ = self.triangles()
        return v.min(0).astype(np.float64), v.max(0).astype(np.float64)

    def surface_points(self, spacing: float, bounds=None) -> np.ndarray:
        """Deterministic samples of the mesh surface: a barycentric lattice on every triangle with
        neighbours at most about ``spacing`` metres apart (vertices and edges included).

        Args:
            spacing: lattice step, metres.
            bounds: optional ``(lo (3,), hi (3,))`` world box; large triangles are first split
                into pieces of about 16 ``spacing`` and only pieces overlapping it are sampled.

        Returns:
            (N, 3) float64 world points.
        """
        v, f = self.triangles()
        tri = v.astype(np.float64)[f.astype(np.int64)]  # (F, 3, 3)
        tri = _split_triangles(tri, 16.0 * spacing)
        if bounds is not None:
            lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds)
            keep = np.all((tri.min(1) <= hi) & (tri.max(1) >= lo), axis=1)
            tri = tri[keep]
        out = []
        steps = np.maximum(1, np.ceil(
            np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(1) / spacing)).astype(np.int64)
        for m in np.unique(steps):
            i, j = np.meshgrid(np.arange(m + 1), np.arange(m + 1), indexing="ij")
            keep = (i + j) <= m
            a, b = i[keep] / m, j[keep] / m
            w = np.stack([1 - a - b, a, b], axis=1)  # (P, 3) barycentric weights
            out.append(np.einsum("pk,fkd->fpd", w, tri[steps == m]).reshape(-1, 3))
        return np.concatenate(out) if out else np.zeros((0, 3))


def _split_triangles(tri: np.ndarray, max_edge: float) -> np.ndarray:
    """Split (F, 3, 3) triangles uniformly (k^2 pieces each) until edges are <= ``max_edge``."""
    edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(1)
    ks = np.maximum(1, np.ceil(edges / max_edge)).astype(np.int64)
    out = [tri[ks == 1]]
    for k in np.unique(ks[ks > 1]):
        t = tri[ks == k]
        i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
        pts = lambda ii, jj: (t[:, 0, None] * (1 - (ii + jj)[None, :, None] / k)  # noqa: E731
                              + t[:, 1, None] * (ii[None, :, None] / k)
                              + t[:, 2, None] * (jj[None, :, None] / k))
        up = (i + j) <= k - 1
        iu, ju = i[up], j[up]
        out.append(np.stack([pts(iu, ju), pts(iu + 1, ju), pts(iu, ju + 1)], axis=2).reshape(-1, 3, 3))
        dn = (i + j) <= k - 2
        idn, jdn = i[dn], j[dn]
        out.append(np.stack([pts(idn + 1, jdn), pts(idn, jdn + 1), pts(idn + 1, jdn + 1)],
                            axis=2).reshape(-1, 3, 3))
    return np.concatenate(out)


@dataclass
class SceneObject:
    """An object (instance) of a scene: a union of primitives with a class.

    Attributes:
        instance_id: id >= 0, unique in the scene; ray casting returns it per pixel.
        category: canonical class name (e.g. ``"mug"``, ``"table"``, ``"car"``).
        primitives: the primitives whose union is the object.
        label: text used to query it (the class name or a synonym, by split).
        shape: shape recipe name (e.g. ``"mug"``, ``"open_box"``).
        color: (3,) float64 base RGB in [0, 1].
        attrs: free-form metadata (support / container parent, role, track data...).
    """

    instance_id: int
    category: str
    primitives: list[Primitive]
    label: str = ""
    shape: str = ""
    color: np.ndarray = field(default_factory=lambda: np.full(3, 0.5))
    attrs: dict = field(default_factory=dict)

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounds ``(lo (3,), hi (3,))`` float64 over all primitives, metres."""
        boxes = [p.aabb() for p in self.primitives]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera pose looking from ``eye`` at ``target``.

    Args:
        eye, target: (3,) world positions, metres.
        up: world up vector; the image's -y (up in the picture) is aligned with it.

    Returns:
        (4, 4) float64 ``T_world_cam`` (optical frame: z toward ``target``, x right, y down).

    Raises:
        ValueError: when ``eye`` equals ``target`` or the view direction is parallel to ``up``.
    """
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    if np.linalg.norm(z) < 1e-9:
        raise ValueError("look_at: eye and target coincide")
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: view direction parallel to up")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


def camera_rays(K, T_world_cam, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Rays through every pixel centre of a pinhole camera.

    Args:
        K: (3, 3) intrinsics; pixel centres are at integer ``(u, v)``.
        T_world_cam: (4, 4) optical frame -> world.
        width, height: image size in pixels.

    Returns:
        ``origins`` (H, W, 3) and ``dirs`` (H, W, 3) float32 in world. Directions are
        ``R @ K^-1 [u, v, 1]`` (not normalised: their optical-axis component is 1), so a ray
        parameter ``t`` equals the depth along the optical axis in metres.
    """
    K = np.asarray(K, dtype=np.float64)
    T = np.asarray(T_world_cam, dtype=np.float64)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    d_cam = pix @ np.linalg.inv(K).T
    d_cam /= d_cam[..., 2:3]
    dirs = d_cam @ T[:3, :3].T
    origins = np.broadcast_to(T[:3, 3], dirs.shape)
    return origins.astype(np.float32), dirs.astype(np.float32)


class RayScene:
    """open3d ``RaycastingScene`` of a list of objects: ray casting and per-object occupancy.

    Args:
        objects: the scene's objects; their ``instance_id`` values are reported by :meth:`cast`.

    Raises:
        ValueError: on duplicate or negative instance ids.
    """

    def __init__(self, objects: list[SceneObject]) -> None:
        ids = [o.instance_id for o in objects]
        if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
            raise ValueError(f"instance ids must be unique and >= 0, got {ids}")
        self.objects = list(objects)
        self._scene = o3d.t.geometry.RaycastingScene()
        geom_to_obj = []
        self._prim_meshes: list[list[tuple[np.ndarray, np.ndarray]]] = []
        for obj in self.objects:
            meshes = []
            for prim in obj.primitives:
                v, f = prim.triangles()
                gid = self._scene.add_triangles(o3d.core.Tensor(v), o3d.core.Tensor(f))
                if gid != len(geom_to_obj):
                    raise RuntimeError("open3d returned non-sequential geometry ids")
                geom_to_obj.append(obj.instance_id)
                meshes.append((v, f))
            self._prim_meshes.append(meshes)
        self._geom_to_obj = np.asarray(geom_to_obj + [-1], dtype=np.int32)

    def cast(self, origins, dirs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cast rays.

        Args:
            origins, dirs: (..., 3) float world rays (``dirs`` need not be unit length).

        Returns:
            ``t`` (...,) float32 ray parameter of the first hit (inf for a miss; metres along the
            optical axis for :func:`camera_rays`), ``instance`` (...,) int32 object id (-1 for a
            miss), ``normal`` (..., 3) float32 unit world normal of the hit triangle (0 for a miss).
        """
        o = np.asarray(origins, dtype=np.float32)
        d = np.asarray(dirs, dtype=np.float32)
        shape = np.broadcast_shapes(o.shape, d.shape)
        rays = np.concatenate([np.broadcast_to(o, shape), np.broadcast_to(d, shape)], axis=-1)
        out = self._scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays.reshape(-1, 6))),
                                    nthreads=1)
        t = out["t_hit"].numpy().reshape(shape[:-1])
        gid = out["geometry_ids"].numpy().astype(np.int64).reshape(shape[:-1])
        gid = np.where(gid == o3d.t.geometry.RaycastingScene.INVALID_ID, len(self._geom_to_obj) - 1,
                       gid)
        normal = out["primitive_normals"].numpy().reshape(shape)
        return t.astype(np.float32), self._geom_to_obj[gid], normal.astype(np.float32)

    def render(self, K, T_world_cam, width: int, height: int, max_depth: float = np.inf):
        """Depth and instance images of a pinhole camera.

        Args:
            K: (3, 3) intrinsics. T_world_cam: (4, 4) optical frame -> world.
            width, height: image size, pixels. max_depth: hits beyond it count as misses (m).

        Returns:
            ``depth`` (H, W) float32 metres along the optical axis (NaN = no hit), ``instance``
            (H, W) int32 (-1 = no hit), ``normal`` (H, W, 3) float32 world normals, and ``points``
            (H, W, 3) float32 world hit points (NaN for misses).
        """
        origins, dirs = camera_rays(K, T_world_cam, width, height)
        t, inst, normal = self.cast(origins, dirs)
        miss = ~np.isfinite(t) | (t > max_depth)
        depth = np.where(miss, np.nan, t).astype(np.float32)
        inst = np.where(miss, -1, inst).astype(np.int32)
        points = origins + dirs * depth[..., None]
        return depth, inst, normal, points.astype(np.float32)

    def occupancy(self, points, objects: list[int] | None = None) -> np.ndarray:
        """Which objects contain each query point.

        Each primitive is queried on its own (open3d ``compute_occupancy`` on a one-mesh scene,
        parity of ray crossings) after an axis-aligned-bounds prefilter, and an object's occupancy
        is the OR over its primitives.

        Args:
            points: (M, 3) float world query points, metres.
            objects: indices into ``self.objects`` to evaluate (default all).

        Returns:
            (len(objects), M) bool, row i for ``self.objects[objects[i]]``.
        """
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        which = range(len(self.objects)) if objects is None else objects
        out = np.zeros((len(which), len(pts)), dtype=bool)
        for row, k in enumerate(which):
            for v, f in self._prim_meshes[k]:
                lo, hi = v.min(0), v.max(0)
                cand = np.flatnonzero(np.all((pts >= lo) & (pts <= hi), axis=1))
                if cand.size == 0:
                    continue
                one = o3d.t.geometry.RaycastingScene()
                one.add_triangles(o3d.core.Tensor(v), o3d.core.Tensor(f))
                occ = one.compute_occupancy(o3d.core.Tensor(pts[cand]), nthreads=1, nsamples=3)
                out[row, cand] |= occ.numpy().astype(bool)
        return out
