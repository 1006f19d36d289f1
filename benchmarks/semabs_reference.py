"""CPU cost of the released-size SemAbs networks (imported layout, ``decoder_convention="reference"``).

Full size: grid 128^3, 6 U-Net levels, f_maps 16, 80,000 input points (the released models' layout;
the weights here are seeded random ones: the cost does not depend on their values). Prints

* OVSSC, our protocol: one pass for one label at the 32^3 cell centres -> seconds per label; per view =
  labels x that (the predictor batches the labels of a view in one pass, so its memory grows with them:
  about 1 GB of activations per label at 128^3 - ``--ours-labels`` runs more labels in that pass);
* OVSSC, the released protocol: one chunk = one network pass on 2^20 of the 240^3 lattice queries with
  freshly drawn points; a label needs ceil(240^3 / 2^20) = 14 chunks, so seconds per label = 14 x the
  measured chunk (``--chunks`` measures more of them) and per view = labels x that;
* VOOL per description (two encoder passes + the spatial decoder), both protocols;
* peak resident memory of the process (``ru_maxrss``);

and one ``RESULT {json}`` line. Threads default to 2 (``--threads``). Not a test: timings depend on
the machine and its load.

Usage: ``python benchmarks/semabs_reference.py [--threads 2] [--labels 14] [--chunks 1] [--grid 128]``
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time

import numpy as np
import torch

from occ_audit_ros.semabs.model import SemAbsConfig, SemAbsOVSSC, SemAbsVOOL, relation_ids
from occ_audit_ros.semabs.pointcloud import lattice_points


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    """Run the benchmark; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--labels", type=int, default=14, help="labels of a view (vn_poster: 14)")
    ap.add_argument("--chunks", type=int, default=1, help="released-protocol chunks actually run")
    ap.add_argument("--ours-labels", type=int, default=1, help="labels in the measured our-protocol pass")
    ap.add_argument("--grid", type=int, default=128)
    ap.add_argument("--points", type=int, default=80000)
    ap.add_argument("--sampling-shape", type=int, default=240)
    ap.add_argument("--chunk", type=int, default=2 ** 20)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cfg = SemAbsConfig(grid=a.grid, decoder_convention="reference")
    ovssc = SemAbsOVSSC(cfg).eval().to(dev)
    vool = SemAbsVOOL(cfg).eval().to(dev)
    n_params = sum(p.numel() for p in ovssc.parameters())
    rng = np.random.default_rng(0)
    lo, up = np.asarray(cfg.lower), np.asarray(cfg.upper)
    cloud = rng.uniform(lo, up, size=(200000, 3)).astype(np.float32)
    rel = rng.normal(size=(a.labels, len(cloud))).astype(np.float32)
    total_q = a.sampling_shape ** 3
    n_chunks = math.ceil(total_q / a.chunk)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def draw():
        idx = rng.choice(len(cloud), size=a.points)
        return torch.from_numpy(cloud[idx])[None].to(dev), idx

    res: dict = {"device": str(dev), "threads": a.threads, "grid": a.grid, "points": a.points, "labels": a.labels,
                 "params_ovssc": n_params}
    with torch.no_grad():
        # our protocol: one pass, all labels, 32^3 cell centres
        q32 = torch.from_numpy(lattice_points(cfg.workspace, 32))[None].to(dev)
        x, idx = draw()
        r = torch.from_numpy(np.ascontiguousarray(rel[:a.ours_labels, idx]))[None].to(dev)
        ovssc(x[:, :1000], r[:, :1, :1000], q32[:, :10])  # warm-up
        sync()
        t0 = time.perf_counter()
        ovssc(x, r, q32)
        sync()
        per_label = (time.perf_counter() - t0) / a.ours_labels
        res["ovssc_ours_s_per_label"] = per_label
        res["ovssc_ours_s_per_view"] = per_label * a.labels
        res["peak_rss_mib_after_ours"] = _peak_mib()
        # released protocol: per label and chunk, fresh points and a full pass on 2^20 queries
        qchunk = torch.rand(1, min(a.chunk, total_q), 3, generator=torch.Generator().manual_seed(0))
        qchunk = (qchunk * torch.tensor(up - lo, dtype=torch.float32) + torch.tensor(lo, dtype=torch.float32)).to(dev)
        times = []
        for _ in range(a.chunks):
            x, idx = draw()
            r1 = torch.from_numpy(np.ascontiguousarray(rel[:1, idx]))[None].to(dev)
            sync()
            t0 = time.perf_counter()
            ovssc(x, r1, qchunk)
            sync()
            times.append(time.perf_counter() - t0)
        chunk_s = float(np.median(times))
        res["ovssc_ref_s_per_chunk"] = chunk_s
        res["ovssc_ref_chunks_per_label"] = n_chunks
        res["ovssc_ref_s_per_label"] = chunk_s * n_chunks
        res["ovssc_ref_s_per_view"] = chunk_s * n_chunks * a.labels
        # VOOL per description
        rid = relation_ids(["behind"])[None].to(dev)
        x, idx = draw()
        rt = torch.from_numpy(np.ascontiguousarray(rel[:1, idx]))[None].to(dev)
        rr = torch.from_numpy(np.ascontiguousarray(rel[1:2, idx]))[None].to(dev)
        sync()
        t0 = time.perf_counter()
        vool(x, rt, rr, rid, q32)
        sync()
        res["vool_ours_s_per_description"] = time.perf_counter() - t0
        sync()
        t0 = time.perf_counter()
        vool(x, rt, rr, rid, qchunk)
        sync()
        vchunk = time.perf_counter() - t0
        res["vool_ref_s_per_chunk"] = vchunk
        res["vool_ref_s_per_description"] = vchunk * n_chunks
    res["peak_rss_mib"] = _peak_mib()
    if dev.type == "cuda":
        res["peak_cuda_mib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    print(f"SemAbs released-size networks ({n_params:,} OVSSC parameters), {a.threads} threads on {dev}")
    print(f"OVSSC ours (32^3 queries): {res['ovssc_ours_s_per_label']:.2f} s/label (measured on "
          f"{a.ours_labels}), {res['ovssc_ours_s_per_view']:.2f} s/view ({a.labels} labels)")
    print(f"OVSSC released protocol: {chunk_s:.2f} s/chunk of {a.chunk} queries (median of {a.chunks}); "
          f"{n_chunks} chunks/label -> {res['ovssc_ref_s_per_label']:.1f} s/label, "
          f"{res['ovssc_ref_s_per_view']:.1f} s/view ({a.labels} labels)")
    print(f"VOOL ours: {res['vool_ours_s_per_description']:.2f} s/description; released protocol: "
          f"{res['vool_ref_s_per_description']:.1f} s/description ({vchunk:.2f} s/chunk)")
    print(f"peak RSS {res['peak_rss_mib']:.0f} MiB")
    print("RESULT " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
