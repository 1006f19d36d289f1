"""Tiny procedural box scenes in the SemAbs sample format, for tests and smoke runs only.

NOT the project's simulator (``training.sim``) and not a benchmark: axis-aligned boxes on
a floor, seen by a camera from one side; the input cloud is the camera-facing faces (a partial view),
the "relevancy" of a label is high on its own box's visible points plus Gaussian noise, and the ground
truth is whole-box occupancy. It exercises the full code path (completion of unseen box parts, VOOL
relations computed from geometry) in a few milliseconds per scene.

Sample format (a dict, shared with the simulator adapter; frames: workspace frame, z up, metres):
    ``xyz`` (P, 3) float32 input points; ``relevancy`` (L, P) float32; ``labels`` list of L str;
    ``queries`` (M, 3) float32; ``occupancy`` (L, M) bool; ``valid`` (M,) bool (queries used for
    training/evaluation); ``T_ws_cam`` (4, 4) float64 camera pose; ``descriptions`` list of
    (target_label_index, relation, reference_label_index); ``vool_occupancy`` (Q, M) bool.
"""

from __future__ import annotations

import numpy as np

from occ_audit_ros.semabs.model import RELATIONS
from occ_audit_ros.semabs.pointcloud import Workspace

__all__ = ["toy_scene", "TOY_LABELS"]

TOY_LABELS = ("box", "crate", "chair", "lamp", "bin", "shelf")


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    f = target - eye
    f /= np.linalg.norm(f)
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, f, eye
    return T


def toy_scene(rng: np.random.Generator, workspace: Workspace | None = None, num_boxes: int = 3,
              points_per_face: int = 400, num_queries: int = 4000, noise: float = 0.3) -> dict:
    """One toy scene (see module docstring for the returned format).

    Args:
        rng: numpy generator (the scene is a pure function of its state).
        workspace: bounds (SemAbs default when None).
        num_boxes: boxes, one label each (<= len(TOY_LABELS)).
        points_per_face: input points per visible box face.
        num_queries: uniform query points in the workspace.
        noise: std of the Gaussian relevancy noise.

    Raises:
        ValueError: when ``num_boxes`` exceeds the toy vocabulary.
    """
    ws = workspace or Workspace()
    if not 1 <= num_boxes <= len(TOY_LABELS):
        raise ValueError(f"num_boxes must be in [1, {len(TOY_LABELS)}]")
    lo, up = np.asarray(ws.lower), np.asarray(ws.upper)
    floor_z = max(lo[2], 0.0)
    labels = [TOY_LABELS[i] for i in rng.choice(len(TOY_LABELS), num_boxes, replace=False)]
    boxes = []
    for _ in range(num_boxes):
        half = rng.uniform([0.1, 0.1, 0.1], [0.3, 0.3, 0.35])
        c = rng.uniform(lo[:2] + half[:2] + 0.05, up[:2] - half[:2] - 0.05)
        boxes.append((np.array([c[0], c[1], floor_z + half[2]]), half))
    yaw = rng.uniform(-np.pi, np.pi)
    eye = np.array([2.2 * np.cos(yaw), 2.2 * np.sin(yaw), rng.uniform(1.0, 1.6)])
    T = _look_at(eye, np.array([0.0, 0.0, 0.3]))
    pts, owner = [], []
    for b, (c, h) in enumerate(boxes):
        for axis in range(3):
            for sign in (-1.0, 1.0):
                normal = np.zeros(3)
                normal[axis] = sign
                face_c = c + normal * h
                if np.dot(eye - face_c, normal) <= 0:
                    continue  # back face
                u = rng.uniform(-1, 1, (points_per_face, 3)) * h
                u[:, axis] = sign * h[axis]
                pts.append(c + u)
                owner.append(np.full(points_per_face, b))
    floor = np.column_stack([rng.uniform(lo[0], up[0], 1500), rng.uniform(lo[1], up[1], 1500), np.full(1500, floor_z)])
    inside_any = np.zeros(len(floor), bool)
    for c, h in boxes:
        inside_any |= np.all(np.abs(floor[:, :2] - c[:2]) <= h[:2], axis=1)
    pts.append(floor[~inside_any])
    owner.append(np.full(int((~inside_any).sum()), -1))
    xyz = np.concatenate(pts).astype(np.float32)
    own = np.concatenate(owner)
    rel = rng.normal(0.0, noise, (num_boxes, len(xyz))).astype(np.float32)
    for b in range(num_boxes):
        rel[b, own == b] += 1.0
    queries = rng.uniform(lo, up, (num_queries, 3)).astype(np.float32)
    occ = np.stack([np.all(np.abs(queries - c) <= h, axis=1) for c, h in boxes])
    # VOOL: one description per ordered pair, relation from the displacement in the camera's heading frame.
    fwd = T[:3, 2].copy()
    fwd[2] = 0
    fwd /= np.linalg.norm(fwd)
    right = np.array([-fwd[1], fwd[0], 0.0]) * -1.0  # camera x axis projected on the floor
    descs, vool = [], []
    for t in range(num_boxes):
        for r in range(num_boxes):
            if t == r:
                continue
            d = boxes[t][0] - boxes[r][0]
            comps = {"behind": d @ fwd, "in front of": -(d @ fwd), "on the right of": d @ right,
                     "on the left of": -(d @ right)}
            rel_name = max(comps, key=comps.get)
            descs.append((t, rel_name, r))
            vool.append(occ[t])
    return {"xyz": xyz, "relevancy": rel, "labels": labels, "queries": queries, "occupancy": occ,
            "valid": np.ones(num_queries, bool), "T_ws_cam": T, "descriptions": descs,
            "vool_occupancy": np.array(vool, dtype=bool).reshape(len(descs), num_queries),
            "relations_vocab": RELATIONS}
