"""Tables (markdown), plots (PNG) and model-card metrics from the JSON files of ``training/experiments/semabs_sim.py``.

Reads ``bench_ovssc.json`` / ``bench_vool.json`` (one entry per checkpoint = seed, plus the baseline) and
prints README-ready markdown: OVSSC IoU per split and VOOL IoU per split and per relation, network mean ±
std over the seeds (population std, ``numpy.std``) next to the baseline. Writes two bar charts (IoU %,
error bars = std over seeds) and, with ``--card-dir``, ``card_<task>.json`` (the metrics block of a model
card for the checkpoint of seed index ``--card-seed-index``). The relevancy in these experiments is
SIMULATED (``training.sim.relevancy_sim``), not CLIP; the plots say so.

Usage:
    python training/experiments/semabs_report.py --ovssc bench_ovssc.json --vool bench_vool.json \
        --img-dir docs/img [--card-dir /tmp/cards] [--seeds 0 1 2] [--ovssc-protocol reference] \
        [--vool-protocol reference]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SPLITS = ["val", "novel_scene", "novel_class", "novel_synonym", "novel_shape"]
RELATIONS = ["behind", "in", "in front of", "on", "on the left of", "on the right of"]


def split_stats(res: dict, split: str, name: str | None = None, protocol: str = "items") -> tuple[float, float, float]:
    """(network mean %, network std %, baseline %) of one split (and one relation/label when ``name``).

    ``protocol="reference"`` reads the reference-protocol block (``<split>["reference"]``; OVSSC: labels present
    in the in-frustum ground truth, per-room / per-label means; VOOL: ``summarize_vool``'s per-relation means, the
    split mean over relations) instead of the plain item mean."""

    def block(r: dict) -> dict:
        return r[split]["reference"] if protocol == "reference" else r[split]

    if name is None:
        vals = np.array([block(r)["mean"] for r in res["network"]]) * 100
        base = block(res["baseline"])["mean"] * 100
    else:
        vals = np.array([block(r)["per_name"].get(name, np.nan) for r in res["network"]]) * 100
        base = block(res["baseline"])["per_name"].get(name, np.nan) * 100
    return float(np.nanmean(vals)), float(np.nanstd(vals)), float(base)


def ovssc_table(res: dict, protocol: str = "items") -> str:
    """Markdown table: split | SemAbs mean ± std | baseline | ratio (``protocol``: see :func:`split_stats`)."""
    rows = ["| split | SemAbs (3D net, mean ± std over seeds) | thresholded relevancy cloud | ratio |",
            "|---|---|---|---|"]
    for s in SPLITS:
        m, sd, b = split_stats(res, s, protocol=protocol)
        rows.append(f"| {s.replace('_', ' ')} | {m:.1f} ± {sd:.1f} | {b:.1f} | {m / b:.2f} |")
    return "\n".join(rows)


def vool_table(res: dict, protocol: str = "items") -> str:
    """Markdown table: relation x split, 'net ± std / baseline' per cell, plus the all-relations mean
    (``protocol``: see :func:`split_stats`)."""
    head = "| relation | " + " | ".join(s.replace("_", " ") for s in SPLITS) + " |"
    rows = [head, "|---" * (len(SPLITS) + 1) + "|"]
    for rel in RELATIONS + [None]:
        cells = []
        for s in SPLITS:
            m, sd, b = split_stats(res, s, rel, protocol)
            mark = "" if m > b else " ✗"
            cells.append(f"{m:.1f} ± {sd:.1f} / {b:.1f}{mark}")
        rows.append(f"| {rel or '**all**'} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(res_ovssc: dict | None, res_vool: dict | None, img_dir: Path, protocol: str = "items",
         vool_protocol: str = "items") -> list[Path]:
    """Bar charts ``semabs_ovssc_iou.png`` (per split, OVSSC ``protocol``: see :func:`split_stats`) and
    ``semabs_vool_iou.png`` (per relation, novel scene and novel synonym, ``vool_protocol``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    out = []
    note = "simulator, SIMULATED relevancy (not CLIP); IoU % at 32^3; error bars: std over 3 seeds"
    if res_ovssc:
        fig, ax = plt.subplots(figsize=(7.5, 3.8))
        x = np.arange(len(SPLITS))
        st = [split_stats(res_ovssc, s, protocol=protocol) for s in SPLITS]
        ax.bar(x - 0.2, [v[0] for v in st], 0.4, yerr=[v[1] for v in st], capsize=3, label="SemAbs 3D net (trained)")
        ax.bar(x + 0.2, [v[2] for v in st], 0.4, label="thresholded relevancy cloud")
        ax.plot(x, [2 * v[2] for v in st], "k_", markersize=22, label="2 x baseline (goal)")
        ax.set_xticks(x, [s.replace("_", "\n") for s in SPLITS])
        ax.set_ylim(0, 1.45 * max(max(2 * v[2] for v in st), max(v[0] + v[1] for v in st)))
        ax.set_ylabel("OVSSC IoU (%)")
        how = ("reference protocol: labels in the in-frustum GT, per room / per label" if protocol == "reference"
               else "every queried label, item mean")
        ax.set_title(f"OVSSC on the simulator ({how})\n" + note, fontsize=9)
        ax.legend(fontsize=8, ncol=3, loc="upper center")
        fig.tight_layout()
        p = img_dir / "semabs_ovssc_iou.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    if res_vool:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
        x = np.arange(len(RELATIONS))
        for ax, split in zip(axes, ("novel_scene", "novel_synonym")):
            st = [split_stats(res_vool, split, r, vool_protocol) for r in RELATIONS]
            ax.bar(x - 0.2, [v[0] for v in st], 0.4, yerr=[v[1] for v in st], capsize=3, label="SemAbs VOOL (trained)")
            ax.bar(x + 0.2, [v[2] for v in st], 0.4, label="reference shifted 0.3 m")
            ax.set_xticks(x, [r.replace("on the ", "").replace(" ", "\n") for r in RELATIONS], fontsize=8)
            ax.set_title(split.replace("_", " "))
        axes[0].set_ylabel("VOOL IoU (%)")
        axes[0].legend(fontsize=8)
        how = "reference protocol (summarize_vool)" if vool_protocol == "reference" else "item mean"
        fig.suptitle(f"VOOL per relation ({how}) - " + note, fontsize=9)
        fig.tight_layout()
        p = img_dir / "semabs_vool_iou.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    return out


def card_metrics(res: dict, seed_index: int, seeds: list[int]) -> dict:
    """Metrics block of a model card: this checkpoint's IoU per split (and relation), the seeds' mean ± std,
    the baseline; all in %."""
    own = res["network"][seed_index]
    m: dict = {"seeds": seeds, "cutoff_chosen_on_val": own["val"]["cutoff"], "iou_percent": {}}
    for s in SPLITS:
        mean, sd, b = split_stats(res, s)
        m["iou_percent"][s] = {"this_seed": round(own[s]["mean"] * 100, 2), "seeds_mean": round(mean, 2),
                               "seeds_std": round(sd, 2), "baseline": round(b, 2)}
    if set(res["baseline"]["val"]["per_name"]) <= set(RELATIONS):
        m["per_relation_novel_scene"] = {}
        for r in RELATIONS:
            mean, _, b = split_stats(res, "novel_scene", r)
            m["per_relation_novel_scene"][r] = {
                "this_seed": round(own["novel_scene"]["per_name"].get(r, float("nan")) * 100, 2),
                "seeds_mean": round(mean, 2), "baseline": round(b, 2)}
    return m


def main(argv=None) -> int:
    """CLI (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ovssc", default=None)
    ap.add_argument("--vool", default=None)
    ap.add_argument("--img-dir", default="docs/img")
    ap.add_argument("--card-dir", default=None)
    ap.add_argument("--card-seed-index", type=int, default=0)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--ovssc-protocol", choices=["items", "reference"], default="items",
                    help="OVSSC table and plot: plain item mean or the reference protocol")
    ap.add_argument("--vool-protocol", choices=["items", "reference"], default="items",
                    help="VOOL table and plot: plain item mean or the reference protocol")
    args = ap.parse_args(argv)
    res = {t: json.loads(Path(p).read_text()) for t, p in (("ovssc", args.ovssc), ("vool", args.vool)) if p}
    if "ovssc" in res:
        print(f"OVSSC IoU % (32^3, cutoff chosen on val, {args.ovssc_protocol})\n"
              + ovssc_table(res["ovssc"], args.ovssc_protocol) + "\n")
    if "vool" in res:
        print(f"VOOL IoU % per relation ({args.vool_protocol}): network mean ± std / baseline (✗ = not above the "
              "baseline)\n" + vool_table(res["vool"], args.vool_protocol) + "\n")
    for p in plot(res.get("ovssc"), res.get("vool"), Path(args.img_dir), args.ovssc_protocol, args.vool_protocol):
        print(f"plot: {p}")
    if args.card_dir:
        Path(args.card_dir).mkdir(parents=True, exist_ok=True)
        for t, r in res.items():
            path = Path(args.card_dir) / f"card_{t}.json"
            path.write_text(json.dumps(card_metrics(r, args.card_seed_index, args.seeds), indent=1))
            print(f"card metrics: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
