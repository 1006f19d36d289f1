"""SemAbs samples from the indoor simulator's shards (``training.sim``, ``python -m training.sim.generate
indoor``); one sample per view, in the format of :mod:`.toy`.

* input cloud: the view's depth back-projected with K and ``T_world_cam`` (world = workspace frame, z up)
  carrying the shard's relevancy maps (SIMULATED relevancy, ``training.sim.relevancy_sim``, not CLIP),
  cropped to the workspace and subsampled to ``max_cloud_points``;
* labels: the view's ``relevancy_labels`` (visible labels + absent distractors, whose occupancy is empty);
  VOOL targets/references missing from them (hidden targets) are appended with a zero relevancy row
  (VOOL only: ``num_relevancy_labels`` = the count of queried labels, the OVSSC label set);
* queries: the scene's random query points and the 32^3 lattice centres, occupancy = union of the
  objects carrying the label; ``valid`` = inside the camera frustum (SemAbs ignores the rest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ_audit_ros.semabs.pointcloud import Workspace, frustum_mask, relevancy_point_cloud

__all__ = ["samples_from_scene", "load_sim_samples"]


def _unpack(packed: np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, count=count).astype(bool)


def _lattice(lower, upper, n: int) -> np.ndarray:
    lo, up = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    axes = [lo[a] + (np.arange(n) + 0.5) * (up[a] - lo[a]) / n for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)


def samples_from_scene(scene: dict, rng: np.random.Generator, max_cloud_points: int = 20000) -> list[dict]:
    """Samples of one simulated scene (one per view).

    Args:
        scene: name -> array of one scene as returned by ``training.sim.shards.read_shard``.
        rng: generator of the cloud subsampling.
        max_cloud_points: keep at most this many cloud points (uniform subsample).

    Raises:
        KeyError: when the scene lacks the relevancy maps (generated with ``relevancy_sim.enabled: false``).
    """
    meta = scene["meta"]
    ws = Workspace(tuple(meta["workspace"]["lower"]), tuple(meta["workspace"]["upper"]))
    objects = meta["objects"]
    m = int(meta["num_query_points"])
    n = int(meta["grid"])
    queries = np.concatenate([scene["query_points"], _lattice(ws.lower, ws.upper, n)])
    occ_obj = np.concatenate([_unpack(scene["occ_points"], m), _unpack(scene["occ_grid"], n ** 3)], axis=1)
    out = []
    for v, vmeta in enumerate(meta["views"]):
        labels = list(vmeta["relevancy_labels"])
        rel_maps = scene["relevancy"][v, : len(labels)].astype(np.float32)
        extra = sorted({d[k] for d in vmeta["descriptions"] for k in ("target", "reference")} - set(labels))
        xyz, r = relevancy_point_cloud(rel_maps, scene["depth"][v], scene["K"][v], scene["T_world_cam"][v], ws)
        if len(xyz) > max_cloud_points:
            keep = rng.choice(len(xyz), max_cloud_points, replace=False)
            xyz, r = xyz[keep], r[:, keep]
        if extra:
            r = np.concatenate([r, np.zeros((len(extra), len(xyz)), np.float32)])
            labels = labels + extra
        occ = np.zeros((len(labels), len(queries)), bool)
        for o in objects:
            if o["label"] in labels:
                occ[labels.index(o["label"])] |= occ_obj[o["id"]]
        nd = len(vmeta["descriptions"])
        vool = np.concatenate([_unpack(scene["vool_points"][v, :nd], m), _unpack(scene["vool_grid"][v, :nd], n ** 3)],
                              axis=1) if nd else np.zeros((0, len(queries)), bool)
        descs = [(labels.index(d["target"]), d["relation"], labels.index(d["reference"])) for d in vmeta["descriptions"]]
        H, W = scene["depth"][v].shape
        out.append({"xyz": xyz, "relevancy": r, "labels": labels, "queries": queries, "occupancy": occ,
                    "valid": frustum_mask(queries, scene["K"][v], scene["T_world_cam"][v], (H, W)),
                    "T_ws_cam": scene["T_world_cam"][v], "descriptions": descs, "vool_occupancy": vool,
                    "split": meta.get("split", ""), "num_relevancy_labels": len(vmeta["relevancy_labels"])})
    return out


def load_sim_samples(folder, seed: int = 0, max_cloud_points: int = 20000, limit: int | None = None) -> list[dict]:
    """All samples of a simulator output folder (its ``indoor_*.npz`` shards, sorted).

    Raises:
        FileNotFoundError: when the folder holds no shard.
    """
    from training.sim.shards import read_shard

    shards = sorted(Path(folder).glob("indoor_*.npz"))
    if not shards:
        raise FileNotFoundError(f"no indoor_*.npz shards in {folder} (python -m training.sim.generate indoor)")
    rng = np.random.default_rng(seed)
    samples: list[dict] = []
    for path in shards:
        for key, scene in sorted(read_shard(path).items()):
            samples.extend(samples_from_scene(scene, rng, max_cloud_points))
            if limit is not None and len(samples) >= limit:
                return samples[:limit]
    return samples
