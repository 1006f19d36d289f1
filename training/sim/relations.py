"""VOOL ground truth: the six spatial relations of Semantic Abstraction's appendix.

Ha & Song, CoRL 2022, §3.4 and App. 6.1 (data generation): a description is
``<target, relation, reference>`` with relation in {in, on, behind, in front of, on the left of,
on the right of}. Behind / in front of / left of / right of are *viewer-centric*: computed from the
displacement between the target's and the reference's centres, its alignment with the viewing
direction, and its length relative to the reference's size. "On" and "in" come from the receptacle
metadata (here: the simulator's placement records). An ambiguous description (several target
instances, or several reference instances, of those classes) marks all consistent target instances
positive.

Our concrete thresholds (the paper gives the rule, not the numbers; they are in the YAML):
horizontal displacement ``d = c_target - c_ref`` in the camera's heading frame (forward = camera z
projected on the floor, right = camera x projected on the floor); a direction holds when
``cos(d, dir) >= min_alignment`` and ``|d| <= max_distance_factor * size_ref + max_distance_offset``,
with ``size_ref`` the larger horizontal side of the reference's bounding box. Directional relations
are not given between an object and its own support or container.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.sim.primitives import SceneObject
from training.sim.vocabulary import STRUCTURAL

__all__ = ["RELATIONS", "Description", "pairwise_relations", "vool_descriptions"]

#: Relation vocabulary in SemAbs' order (``net.py`` relation embeddings).
RELATIONS = ("in", "on", "behind", "in front of", "on the left of", "on the right of")


@dataclass(frozen=True)
class Description:
    """One VOOL description and its positives.

    Attributes:
        target: target query text. relation: one of :data:`RELATIONS`. reference: reference text.
        positives: indices (into the scene's object list) of every target instance consistent with
            the description; the GT occupancy is the union of their occupancies.
    """

    target: str
    relation: str
    reference: str
    positives: tuple[int, ...]


def _heading_frame(T_world_cam) -> tuple[np.ndarray, np.ndarray]:
    """Unit horizontal ``forward`` and ``right`` (2,) of a camera (optical z and x on the floor)."""
    R = np.asarray(T_world_cam, dtype=np.float64)[:3, :3]
    fwd = R[:2, 2].copy()
    if np.linalg.norm(fwd) < 1e-6:  # looking straight down: use the image's "up" as forward
        fwd = -R[:2, 1].copy()
    fwd /= np.linalg.norm(fwd)
    right = np.array([fwd[1], -fwd[0]])  # fwd x up = fwd rotated by -90 deg about +z
    return fwd, right


def pairwise_relations(a: SceneObject, b: SceneObject, T_world_cam, cfg: dict) -> set[str]:
    """Relations that hold for target ``a`` w.r.t. reference ``b`` from a camera's viewpoint.

    Args:
        a, b: objects (their ``attrs['on']`` / ``attrs['in']`` hold the instance id of the support /
            container, when any). T_world_cam: (4, 4) camera pose (optical frame -> world).
        cfg: ``min_alignment``, ``max_distance_factor``, ``max_distance_offset``.

    Returns:
        Subset of :data:`RELATIONS`.
    """
    out = set()
    if a.attrs.get("in") == b.instance_id:
        out.add("in")
    if a.attrs.get("on") == b.instance_id:
        out.add("on")
    related = (a.attrs.get("in") == b.instance_id or a.attrs.get("on") == b.instance_id
               or b.attrs.get("in") == a.instance_id or b.attrs.get("on") == a.instance_id)
    if related:
        return out
    lo_a, hi_a = a.aabb()
    lo_b, hi_b = b.aabb()
    d = 0.5 * (lo_a + hi_a)[:2] - 0.5 * (lo_b + hi_b)[:2]
    dist = float(np.linalg.norm(d))
    size_b = float(np.max(hi_b[:2] - lo_b[:2]))
    if dist < 1e-6 or dist > cfg["max_distance_factor"] * size_b + cfg["max_distance_offset"]:
        return out
    fwd, right = _heading_frame(T_world_cam)
    cos_f, cos_r = float(d @ fwd) / dist, float(d @ right) / dist
    thr = cfg["min_alignment"]
    if cos_f >= thr:
        out.add("behind")
    if -cos_f >= thr:
        out.add("in front of")
    if cos_r >= thr:
        out.add("on the right of")
    if -cos_r >= thr:
        out.add("on the left of")
    return out


def vool_descriptions(objects: list[SceneObject], T_world_cam, cfg: dict,
                      rng: np.random.Generator) -> list[Description]:
    """All distinct VOOL descriptions of a view, balanced over relations and subsampled.

    Target and reference are named by their query texts (``SceneObject.label``); descriptions whose
    target and reference texts coincide are skipped. Positives are all target-text instances that
    hold the relation to *some* reference-text instance (ambiguity -> all consistent positive).

    Args:
        objects: scene objects (structural floor / wall objects are ignored).
        T_world_cam: (4, 4) camera pose of the view.
        cfg: the ``relations`` config (see :func:`pairwise_relations`, plus ``max_descriptions``).
        rng: generator for the subsampling.

    Returns:
        Up to ``cfg['max_descriptions']`` descriptions, round-robin over relations in random order.
    """
    idx = [i for i, o in enumerate(objects) if o.category not in STRUCTURAL]
    found: dict[tuple[str, str, str], set[int]] = {}
    for i in idx:
        for j in idx:
            if i == j or objects[i].label == objects[j].label:
                continue
            for rel in pairwise_relations(objects[i], objects[j], T_world_cam, cfg):
                found.setdefault((objects[i].label, rel, objects[j].label), set()).add(i)
    by_rel: dict[str, list] = {r: [] for r in RELATIONS}
    for key in sorted(found):
        by_rel[key[1]].append(Description(key[0], key[1], key[2], tuple(sorted(found[key]))))
    for r in RELATIONS:
        rng.shuffle(by_rel[r])
    out = []
    limit = int(cfg.get("max_descriptions", 12))
    while len(out) < limit and any(by_rel.values()):
        for r in RELATIONS:
            if by_rel[r] and len(out) < limit:
                out.append(by_rel[r].pop())
    return out
