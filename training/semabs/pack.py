"""Compact training packs of SemAbs samples (one ``.npz`` per split) that travel where the simulator cannot.

A pack holds what training needs of each view's sample (format: :mod:`.toy` docstring) and nothing else
(no RGB, no instance ids, no depth image): the simulator's shards are ~1 MB per view, a pack ~0.1 MB.
It is written from samples built by :func:`.sim_data.samples_from_scene` and read back as samples of the
same format, so the trainer uses it as a normal data source (``data.source: pack``).

What is kept, per view (all frames: the workspace frame, z up, metres):

* input cloud: ``max_cloud_points`` points drawn uniformly without replacement from the in-workspace
  cloud (kept in pixel order and stored as wrapping first differences, which compress better); xyz quantised to uint16 over the workspace box (step = extent / 65535, <= 0.04 mm here);
  relevancy quantised to int8 per (view, label) with scale = max |r| / 127 (relative error <= 1/254 of
  the label's peak);
* queries: only the valid ones (inside the camera frustum): up to ``max_random_queries`` of the scene's
  random query points (uniform subsample, uint16 xyz) followed by the valid centres of the 32^3 lattice
  (a bit mask, the centres are recomputed); per label and per VOOL description the occupancy of those
  queries as packed bits. Read back, ``valid`` is all True;
* labels, descriptions, camera pose ``T_ws_cam`` (float64), split name; optionally only the first
  ``num_relevancy_labels`` (the OVSSC label set, see :mod:`.sim_data`).

Packing is deterministic: a pure function of the samples and ``seed``.

CLI::

    python -m training.semabs.pack --src /tmp/semabs_sim/train [/tmp/semabs_sim/train_extra ...] \
        --out packs/semabs/train.npz [--max-cloud-points 8192] [--max-random-queries 2048] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from occ_audit_ros.atomic import atomic_path
from training.semabs.batching import num_queried_labels
from occ_audit_ros.semabs.pointcloud import Workspace, lattice_points

__all__ = ["PACK_VERSION", "write_pack", "read_pack", "pack_folders"]

#: Format version stored in the pack's ``meta``.
PACK_VERSION = 1
_Q = 65535.0


def _quant_xyz(xyz: np.ndarray, ws: Workspace) -> np.ndarray:
    lo, up = np.asarray(ws.lower), np.asarray(ws.upper)
    q = np.round((np.asarray(xyz, np.float64) - lo) / (up - lo) * _Q)
    return np.clip(q, 0, _Q).astype(np.uint16)


def _dequant_xyz(q: np.ndarray, ws: Workspace) -> np.ndarray:
    lo, up = np.asarray(ws.lower), np.asarray(ws.upper)
    return (q.astype(np.float64) / _Q * (up - lo) + lo).astype(np.float32)


def _delta(a: np.ndarray, axis: int) -> np.ndarray:
    """Wrapping first differences along ``axis`` (same unsigned dtype); inverse: :func:`_undelta`."""
    return np.diff(a, axis=axis, prepend=np.zeros_like(np.take(a, [0], axis=axis)))


def _undelta(d: np.ndarray, axis: int) -> np.ndarray:
    return np.cumsum(d, axis=axis, dtype=d.dtype)


def write_pack(samples: Sequence[dict], path, workspace: Workspace, lattice_grid: int, num_random: int,
               max_cloud_points: int = 8192, max_random_queries: int = 2048, seed: int = 0) -> dict:
    """Write samples into one compressed pack (atomically: temp file + ``os.replace``).

    Args:
        samples: samples of :func:`.sim_data.samples_from_scene` whose ``queries`` are the scene's
            ``num_random`` random points followed by the ``lattice_grid``^3 lattice centres.
        path: target ``.npz`` file.
        workspace: the box all points lie in (quantisation range).
        lattice_grid, num_random: the query layout described above.
        max_cloud_points: input points kept per view; max_random_queries: random queries kept per view.
        seed: seed of the subsampling.

    Returns:
        summary dict: ``views``, ``bytes``.

    Raises:
        ValueError: when a sample's queries do not have the layout above.
    """
    rng = np.random.default_rng(seed)
    lat = lattice_points(workspace, lattice_grid)
    nl = len(lat)
    cols: dict[str, list] = {k: [] for k in ("xyz", "rel", "rel_scale", "rq", "lat_valid", "occ", "vool")}
    views = []
    for s in samples:
        q = s["queries"]
        if len(q) != num_random + nl or not np.allclose(q[num_random:], lat, atol=1e-5):
            raise ValueError("sample queries are not <num_random random points> + <lattice centres>")
        P = len(s["xyz"])
        keep = np.sort(rng.choice(P, max_cloud_points, replace=False)) if P > max_cloud_points else np.arange(P)
        xyz, rel = s["xyz"][keep], np.asarray(s["relevancy"], np.float32)[:, keep]
        scale = np.maximum(np.abs(rel).max(axis=1), 1e-12) / 127.0
        cols["xyz"].append(_delta(_quant_xyz(xyz, workspace), axis=0))
        cols["rel"].append(_delta(np.clip(np.round(rel / scale[:, None]), -127, 127).astype(np.int8).view(np.uint8),
                                  axis=1).reshape(-1))
        cols["rel_scale"].append(scale.astype(np.float32))
        valid = np.asarray(s["valid"], bool)
        rv = np.flatnonzero(valid[:num_random])
        if len(rv) > max_random_queries:
            rv = np.sort(rng.choice(rv, max_random_queries, replace=False))
        lv = valid[num_random:]
        sel = np.concatenate([rv, num_random + np.flatnonzero(lv)])
        cols["rq"].append(_quant_xyz(q[rv], workspace))
        cols["lat_valid"].append(np.packbits(lv))
        occ = np.asarray(s["occupancy"], bool)[:, sel]
        vool = np.asarray(s["vool_occupancy"], bool).reshape(-1, len(q))[:, sel]
        cols["occ"].append(np.packbits(occ, axis=1).reshape(-1))
        cols["vool"].append(np.packbits(vool, axis=1).reshape(-1))
        views.append({"labels": list(s["labels"]), "descriptions": [list(d) for d in s["descriptions"]],
                      "points": int(len(keep)), "random": int(len(rv)), "queries": int(len(sel)),
                      "num_relevancy_labels": num_queried_labels(s),
                      "split": s.get("split", ""), "T_ws_cam": np.asarray(s["T_ws_cam"], float).tolist()})
    meta = {"version": PACK_VERSION, "lower": list(workspace.lower), "upper": list(workspace.upper),
            "lattice_grid": int(lattice_grid), "views": views, "seed": int(seed)}
    arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(path)
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return {"views": len(views), "bytes": path.stat().st_size}


def read_pack(path) -> list[dict]:
    """Samples of a pack (format: :mod:`.toy` docstring; ``valid`` all True).

    Args:
        path: a pack written by :func:`write_pack`.

    Returns:
        list of sample dicts (xyz (P, 3) float32 [m], relevancy (L, P) float32, queries (M, 3) float32 [m],
        occupancy (L, M) bool, valid (M,) bool, vool_occupancy (Q, M) bool, T_ws_cam (4, 4) float64, ...).

    Raises:
        FileNotFoundError: missing file; ValueError: unknown pack version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SemAbs pack {path} not found (python -m training.semabs.pack)")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        a = {k: z[k] for k in z.files if k != "meta"}
    if meta.get("version") != PACK_VERSION:
        raise ValueError(f"{path}: pack version {meta.get('version')} != {PACK_VERSION}")
    ws = Workspace(tuple(meta["lower"]), tuple(meta["upper"]))
    n = int(meta["lattice_grid"])
    lat = lattice_points(ws, n)
    lat_bytes = (n ** 3 + 7) // 8
    o = dict.fromkeys(("xyz", "rel", "rel_scale", "rq", "lat_valid", "occ", "vool"), 0)
    out = []
    for v in meta["views"]:
        L, P, R, M, D = len(v["labels"]), v["points"], v["random"], v["queries"], len(v["descriptions"])
        xyz = _dequant_xyz(_undelta(a["xyz"][o["xyz"]:o["xyz"] + P], axis=0), ws)
        scale = a["rel_scale"][o["rel_scale"]:o["rel_scale"] + L]
        rel_q = _undelta(a["rel"][o["rel"]:o["rel"] + L * P].reshape(L, P), axis=1).view(np.int8)
        rel = rel_q.astype(np.float32) * scale[:, None]
        rq = _dequant_xyz(a["rq"][o["rq"]:o["rq"] + R], ws)
        lv = np.unpackbits(a["lat_valid"][o["lat_valid"]:o["lat_valid"] + lat_bytes], count=n ** 3).astype(bool)
        queries = np.concatenate([rq, lat[lv]])
        if len(queries) != M:
            raise ValueError(f"{path}: corrupt pack (view has {len(queries)} queries, meta says {M})")
        mb = (M + 7) // 8
        occ = np.unpackbits(a["occ"][o["occ"]:o["occ"] + L * mb].reshape(L, mb), axis=1, count=M).astype(bool)
        vool = np.unpackbits(a["vool"][o["vool"]:o["vool"] + D * mb].reshape(D, mb), axis=1, count=M).astype(bool)
        for k, inc in (("xyz", P), ("rel", L * P), ("rel_scale", L), ("rq", R), ("lat_valid", lat_bytes),
                       ("occ", L * mb), ("vool", D * mb)):
            o[k] += inc
        out.append({"xyz": xyz, "relevancy": np.ascontiguousarray(rel), "labels": list(v["labels"]),
                    "queries": queries, "occupancy": occ, "valid": np.ones(M, bool),
                    "T_ws_cam": np.asarray(v["T_ws_cam"], np.float64),
                    "descriptions": [(int(t), str(r), int(f)) for t, r, f in v["descriptions"]],
                    "vool_occupancy": vool, "split": v["split"],
                    "num_relevancy_labels": int(v["num_relevancy_labels"])})
    return out


def pack_folders(folders: Sequence[str], out, seed: int = 0, max_cloud_points: int = 8192,
                 max_random_queries: int = 2048) -> dict:
    """Pack the views of simulator output folders (their ``indoor_*.npz`` shards, in order) into one pack.

    The clouds are first built with :func:`.sim_data.load_sim_samples` (``max_cloud_points`` there too).

    Returns:
        :func:`write_pack`'s summary.
    """
    from training.sim.shards import read_shard
    from training.semabs.sim_data import samples_from_scene

    samples, ws, grid, m = [], None, None, None
    rng = np.random.default_rng(seed)
    for folder in folders:
        shards = sorted(Path(folder).glob("indoor_*.npz"))
        if not shards:
            raise FileNotFoundError(f"no indoor_*.npz shards in {folder}")
        for sh in shards:
            for _, scene in sorted(read_shard(sh).items()):
                meta = scene["meta"]
                w = Workspace(tuple(meta["workspace"]["lower"]), tuple(meta["workspace"]["upper"]))
                if ws is None:
                    ws, grid, m = w, int(meta["grid"]), int(meta["num_query_points"])
                elif (w, int(meta["grid"]), int(meta["num_query_points"])) != (ws, grid, m):
                    raise ValueError(f"{sh}: workspace/grid/query layout differs from the first scene")
                samples.extend(samples_from_scene(scene, rng, max_cloud_points=10 ** 9))
    return write_pack(samples, out, ws, grid, m, max_cloud_points, max_random_queries, seed)


def main(argv=None) -> int:
    """CLI (see module docstring). Prints ``RESULT views=.. bytes=..``."""
    ap = argparse.ArgumentParser(description="Pack simulator views into a compact SemAbs training pack.")
    ap.add_argument("--src", nargs="+", required=True, help="simulator output folders (indoor_*.npz)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-cloud-points", type=int, default=8192)
    ap.add_argument("--max-random-queries", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    res = pack_folders(args.src, args.out, args.seed, args.max_cloud_points, args.max_random_queries)
    print(f"RESULT views={res['views']} bytes={res['bytes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
