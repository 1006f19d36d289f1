"""Baselines without learning (SemAbs evaluation, paper §4).

* OVSSC: the relevancy cloud itself: a query's score is the largest relevancy of the input points in
  its 32^3 cell (cells with no input point score -inf), thresholded like the network's logits.
* VOOL: a hand rule: the reference label's relevancy cloud is shifted along the relation direction
  (viewer-centric: behind = camera forward, in front of = backward, left/right of = camera -x/+x,
  all projected on the floor; on = +z; in = no shift) by ``shift`` metres, then scored like the OVSSC
  baseline.
"""

from __future__ import annotations

import numpy as np

from occ_audit_ros.semabs.pointcloud import Workspace

__all__ = ["relation_direction", "relevancy_cloud_scores", "shifted_reference_scores"]


def relation_direction(relation: str, T_ws_cam: np.ndarray) -> np.ndarray:
    """(3,) float64 unit direction (or zero for "in") of a spatial relation in the workspace frame.

    Args:
        relation: one of in, on, behind, in front of, on the left of, on the right of.
        T_ws_cam: (4, 4) camera pose (optical frame: x right, y down, z forward) in the workspace frame.

    Raises:
        ValueError: for an unknown relation or a camera looking straight down/up.
    """
    R = np.asarray(T_ws_cam, dtype=np.float64)[:3, :3]
    fwd = R[:, 2].copy()
    fwd[2] = 0.0
    right = R[:, 0].copy()
    right[2] = 0.0
    if np.linalg.norm(fwd) < 1e-6 or np.linalg.norm(right) < 1e-6:
        raise ValueError("camera heading is undefined (optical axis vertical)")
    fwd /= np.linalg.norm(fwd)
    right /= np.linalg.norm(right)
    table = {"behind": fwd, "in front of": -fwd, "on the right of": right, "on the left of": -right,
             "on": np.array([0.0, 0.0, 1.0]), "in": np.zeros(3)}
    key = relation.strip().lower()
    if key not in table:
        raise ValueError(f"unknown relation {relation!r}")
    return table[key]


def relevancy_cloud_scores(xyz: np.ndarray, relevancy: np.ndarray, queries: np.ndarray, workspace: Workspace,
                           grid: int = 32) -> np.ndarray:
    """OVSSC baseline score of each query: max relevancy of the input points in its cell.

    Args:
        xyz: (N, 3) input points [m]; relevancy: (N,) one label's relevancy; queries: (M, 3) [m].

    Returns:
        (M,) float64 scores, -inf in cells without input points.
    """
    from training.semabs.metrics import voxel_max

    vox = voxel_max(xyz, relevancy, workspace, grid)
    q = np.asarray(queries, dtype=np.float64).reshape(-1, 3)
    lo, up = np.asarray(workspace.lower), np.asarray(workspace.upper)
    ijk = np.clip(np.floor((q - lo) / (up - lo) * grid), 0, grid - 1).astype(np.int64)
    out = vox[(ijk[:, 0] * grid + ijk[:, 1]) * grid + ijk[:, 2]]
    return np.where(workspace.contains(q), out, -np.inf)


def shifted_reference_scores(xyz: np.ndarray, reference_relevancy: np.ndarray, relation: str, T_ws_cam: np.ndarray,
                             queries: np.ndarray, workspace: Workspace, shift: float = 0.3,
                             grid: int = 32) -> np.ndarray:
    """VOOL baseline score of each query (see module docstring).

    Args:
        xyz: (N, 3) input points [m]; reference_relevancy: (N,) relevancy of the reference label;
        relation: spatial relation; T_ws_cam: (4, 4) camera pose; queries: (M, 3) [m];
        shift: displacement along the relation direction [m].

    Returns:
        (M,) float64 scores (relevancy units), -inf where no shifted point lands.
    """
    moved = np.asarray(xyz, dtype=np.float64) + shift * relation_direction(relation, T_ws_cam)
    return relevancy_cloud_scores(moved, reference_relevancy, queries, workspace, grid)
