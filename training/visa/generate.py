"""Offline audit generation: crops -> auditor -> ``visa-audit/1`` JSONL store (docs/visa.md §3, §4, §8).

Run as ``occ_audit_generate_audits`` (or ``python -m training.visa.generate``)::

    occ_audit_generate_audits --out output/visa_audits --auditor simulated
    occ_audit_generate_audits --out DIR --shard 0/2 & ... --shard 1/2; then --merge
    torchrun --nproc_per_node 2 -m training.visa.generate --out DIR   # ranks = shards

Each shard appends to ``audits.shard-I-of-N.jsonl`` (and ``rejected.shard-I-of-N.jsonl`` for
instances without a usable crop or whose answer was rejected) through
:class:`training.visa.store.AuditStore`: a rerun after ``kill -9`` skips what is done and
redoes the torn record. When all shards are done (``N = 1``, rank 0 after a barrier under
``torchrun``, or ``--merge``) the shards are merged into ``audits.jsonl`` / ``rejected.jsonl``
and ``report.json`` + ``confusion.png`` (agreement of the audits with the GT labels) are written.

Instances come from a nuScenes keyframe (default: the embedded scene-0061 keyframe; its pickle has
no instance tokens, so ``"<sample_token>:<box index>"`` stands in) or, with ``--tables ROOT
--version V``, from a nuScenes-format table set (every annotation of every instance × every camera;
real instance tokens and visibility bins). Instances outside K_obj are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from occ_audit_ros import paths
from training.visa.auditors import AuditRequest, SimulatedAuditor
from training.visa.crops import keyframe_instance_token, keyframe_views, select_crop
from training.visa.schema import QUALITIES, make_record
from occ_audit_ros.atomic import write_bytes_atomic
from training.visa.store import AuditStore, check_unlocked, merge_stores
from training.visa.taxonomy import K_OBJ, category_to_class

LOG = logging.getLogger("generate_audits")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``.

    Raises:
        ValueError: unless ``0 <= i < n``.
    """
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return i, n


def load_config(path) -> dict:
    """The YAML config as a dict.

    Raises:
        FileNotFoundError / ValueError: missing file or no ``auditor`` section.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict) or "auditor" not in cfg:
        raise ValueError(f"{path}: no 'auditor' section")
    return cfg


def build_auditor(kind: str, cfg: dict, model: str | None = None):
    """Auditor of ``kind`` (``simulated``, ``clip``, ``vlm``) from the config's ``auditor`` section.

    Raises:
        ValueError: unknown kind; VlmUnavailable / ClipWeightsUnavailable for missing weights.
    """
    section = cfg["auditor"].get(kind, {}) or {}
    if kind == "simulated":
        return SimulatedAuditor(**section)
    if kind == "clip":
        from occ_audit_ros.clip_model import load_clip
        from training.visa.auditors import ClipZeroShotAuditor

        return ClipZeroShotAuditor(load_clip(model or section.get("model"), device="cpu"))
    if kind == "vlm":
        from training.visa.vlm_auditor import VlmAuditor

        return VlmAuditor(model or section["model"], device=section.get("device", "cpu"),
                          max_new_tokens=int(section.get("max_new_tokens", 256)))
    raise ValueError(f"unknown auditor kind {kind!r}; expected simulated, clip or vlm")


def keyframe_instances(keyframe) -> list[tuple[str, object, str]]:
    """(instance token, GTBox, K_obj class) of every K_obj box, sorted by token."""
    out = []
    for box in keyframe.boxes:
        cls = category_to_class(box.category)
        if cls is not None:
            out.append((keyframe_instance_token(keyframe, box), box, cls))
    return sorted(out, key=lambda t: t[0])


@dataclass
class WorkItem:
    """One instance to audit.

    Attributes:
        token: instance token (store key). category: annotation category. cls: its K_obj class.
        views: () -> list of :class:`.crops.BoxView` (all annotations × cameras).
        image: (sample_data_token) -> (H, W, 3) uint8 image of a view.
        scene_token: nuScenes scene token when known.
    """

    token: str
    category: str
    cls: str
    views: Callable[[], list]
    image: Callable[[str], np.ndarray]
    scene_token: str | None = None


def keyframe_work(keyframe) -> list[WorkItem]:
    """Work items of the K_obj boxes of one loaded keyframe (stand-in instance tokens)."""
    by_sd = {cam.sample_data_token: cam.image for cam in keyframe.cameras.values()}
    return [WorkItem(tok, box.category, cls, (lambda b=box: keyframe_views(keyframe, b)), by_sd.__getitem__)
            for tok, box, cls in keyframe_instances(keyframe)]


def tables_work(nusc) -> list[WorkItem]:
    """Work items of every K_obj instance of a nuScenes-format table set (real instance tokens)."""
    from training.visa.tables import instance_views, load_camera_image, table_instances

    sample_of = {}
    for ann in nusc.sample_annotation:
        sample_of.setdefault(ann["instance_token"], ann["sample_token"])
    items = []
    for tok, name, cls in table_instances(nusc):
        scene = nusc.get("sample", sample_of[tok])["scene_token"] if tok in sample_of else None
        items.append(WorkItem(tok, name, cls, (lambda t=tok: instance_views(nusc, t)),
                              (lambda sd: load_camera_image(nusc, sd)), scene))
    return items


def _shard_names(i: int, n: int) -> tuple[str, str, str]:
    return (f"audits.shard-{i}-of-{n}.jsonl", f"rejected.shard-{i}-of-{n}.jsonl",
            f"stats.shard-{i}-of-{n}.json")


def audit_item(item: WorkItem, auditor) -> tuple[dict | None, str | None]:
    """Crop selection + one audit of one instance.

    The SIMULATED auditor gets the GT class and no image (it never looks at one); real auditors
    get the padded crop and never the GT class.

    Returns:
        ``(visa-audit/1 record, None)``, or ``(None, reason)`` with reason ``"no usable crop"`` or
        ``"auditor answer rejected"``.
    """
    crop = select_crop(item.token, item.views())
    if crop is None:
        return None, "no usable crop"
    if auditor.kind == "SIMULATED":
        request = AuditRequest(item.token, quality=crop.quality, gt_class=item.cls)
    else:
        image = item.image(crop.best.view.sample_data_token)
        request = AuditRequest(item.token, image=crop.cut(image), quality=crop.quality)
    answer = auditor.audit(request)
    if answer is None:
        return None, "auditor answer rejected"
    return make_record(answer, item.token, auditor.describe(), crop.to_json(), scene_token=item.scene_token,
                       gt={"category": item.category, "class": item.cls}), None


def audit_in_memory(work: list[WorkItem], auditor) -> tuple[dict[str, dict], dict[str, str]]:
    """Audit every work item without a store (the same records :func:`run_shard` writes).

    Used by the AGO hook to simulate audits of a training split on the fly (SIMULATED auditor:
    deterministic per (instance token, seed), so the result equals a stored run's).

    Returns:
        (instance token -> record, instance token -> rejection reason).
    """
    records, rejected = {}, {}
    for item in work:
        rec, reason = audit_item(item, auditor)
        if rec is None:
            rejected[item.token] = reason
        else:
            records[item.token] = rec
    return records, rejected


def run_shard(work: list[WorkItem], auditor, out_dir: Path, shard: tuple[int, int], throttle_s: float = 0.0,
              limit: int | None = None, progress: bool = True) -> dict:
    """Audit this shard's instances (every n-th work item from i), appending to its store.

    The SIMULATED auditor gets the GT class and no image (it never looks at one); real auditors
    get the padded crop and never the GT class.

    The shard's stores are locked while it runs (:class:`~training.visa.store.AuditStore`): a second
    generator on the same output and shard raises ``StoreLocked``. This run's counters and auditor
    statistics are saved as one entry of ``stats.shard-I-of-N.json``'s ``runs`` every
    :data:`STATS_EVERY` instances and at the end, so a killed run still counts in the report's
    totals (up to its last save). Temporary files of writes killed mid-way are removed first.

    Returns:
        This run's counters ``{"written", "rejected", "skipped_done"}``.

    Raises:
        StoreLocked: another process is writing this shard.
    """
    from tqdm import tqdm

    i, n = shard
    audits_name, rejected_name, stats_name = _shard_names(i, n)
    work = work[i::n]
    if limit is not None:
        work = work[:limit]
    counts = {"written": 0, "rejected": 0, "skipped_done": 0}
    with AuditStore(out_dir / audits_name) as store, AuditStore(out_dir / rejected_name) as rejected:
        removed = remove_stale_temporaries(out_dir, [stats_name])  # under the lock: no live writer owns them
        if removed:
            LOG.warning("shard %d/%d: removed %d temporary files left by a killed run", i, n, removed)
        if store.truncated_bytes or rejected.truncated_bytes:
            LOG.warning("shard %d/%d: removed a torn last line (%d bytes) left by a killed run",
                        i, n, store.truncated_bytes + rejected.truncated_bytes)
        stats_path = out_dir / stats_name
        prev = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        runs = list(prev.get("runs", []))

        def save_stats(fsync: bool = False) -> None:  # kill -9 keeps the page cache; fsync at the end
            entry = {"counts": dict(counts), "auditor_stats": auditor.stats.as_dict()}
            body = {"auditor": auditor.describe(), "runs": runs + [entry]}
            write_bytes_atomic(stats_path, json.dumps(body, indent=1).encode(), fsync=fsync)

        done = 0
        for item in tqdm(work, desc=f"audits {i}/{n}", disable=not progress, unit="inst"):
            token = item.token
            if token in store or token in rejected:
                counts["skipped_done"] += 1
                continue
            record, reason = audit_item(item, auditor)
            if record is None:
                rejected.append({"instance_token": token, "reason": reason})
                counts["rejected"] += 1
            else:
                store.append(record)
                counts["written"] += 1
            done += 1
            if done % STATS_EVERY == 0:
                save_stats()
            if throttle_s > 0:
                time.sleep(throttle_s)
        save_stats(fsync=True)
    return counts


#: Instances between two saves of a run's statistics (a killed run's totals miss at most the instance
#: in flight; the statistics file is small beside an audit).
STATS_EVERY = 1
_STAT_KEYS = ("requests", "accepted_first", "accepted_retry", "rejected")


def remove_stale_temporaries(out_dir: Path, names) -> int:
    """Remove the temporary files ``.<name>.*`` that :func:`occ_audit_ros.atomic.atomic_path` leaves
    beside each of ``names`` when its writer is killed; call only while holding the output's lock.
    Returns how many were removed."""
    n = 0
    for name in names:
        for tmp in Path(out_dir).glob(f".{name}.*"):
            try:
                tmp.unlink()
                n += 1
            except FileNotFoundError:
                pass
    return n


def cumulative_stats(shard_stats: list[dict]) -> dict:
    """Totals over every run of every shard (resumes included): ``{"counts": {...},
    "auditor_stats": {"requests", "accepted_first", "accepted_retry", "rejected", "reasons"}, "runs"}``."""
    counts: dict[str, int] = {}
    auditor = {k: 0 for k in _STAT_KEYS}
    reasons: dict[str, int] = {}
    runs = 0
    for shard in shard_stats:
        for run in shard.get("runs", []):
            runs += 1
            for k, v in run.get("counts", {}).items():
                counts[k] = counts.get(k, 0) + int(v)
            st = run.get("auditor_stats", {})
            for k in _STAT_KEYS:
                auditor[k] += int(st.get(k, 0))
            for k, v in st.get("reasons", {}).items():
                reasons[k] = reasons.get(k, 0) + int(v)
    return {"counts": counts, "auditor_stats": {**auditor, "reasons": reasons}, "runs": runs}


def agreement_report(records: dict[str, dict]) -> dict:
    """Agreement of audits with GT (overall and per crop quality) and the 10x10 confusion matrix.

    Returns:
        ``{"n", "agreement", "per_quality": {q: {"n", "agreement"}}, "confusion": rows = GT
        class, columns = hypothesis (K_obj order), "classes"}``.
    """
    C = np.zeros((len(K_OBJ), len(K_OBJ)), dtype=np.int64)
    per_q = {q: [0, 0] for q in QUALITIES}
    for rec in records.values():
        gt = (rec.get("gt") or {}).get("class")
        if gt is None:
            continue
        hit = rec["class_hypothesis"] == gt
        C[K_OBJ.index(gt), K_OBJ.index(rec["class_hypothesis"])] += 1
        q = (rec.get("crop") or {}).get("quality")
        if q in per_q:
            per_q[q][0] += 1
            per_q[q][1] += int(hit)
    n = int(C.sum())
    return {"n": n, "agreement": float(np.trace(C) / n) if n else None,
            "per_quality": {q: {"n": v[0], "agreement": v[1] / v[0] if v[0] else None} for q, v in per_q.items()},
            "confusion": C.tolist(), "classes": list(K_OBJ)}


def save_confusion_png(report: dict, path: Path, title: str) -> None:
    """Confusion matrix (GT rows × audit columns) as a PNG, written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    C = np.asarray(report["confusion"])
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.imshow(C, cmap="Blues")
    ax.set_xticks(range(len(K_OBJ)), K_OBJ, rotation=60, ha="right")
    ax.set_yticks(range(len(K_OBJ)), K_OBJ)
    for r in range(C.shape[0]):
        for c in range(C.shape[1]):
            if C[r, c]:
                ax.text(c, r, str(C[r, c]), ha="center", va="center",
                        color="white" if C[r, c] > C.max() / 2 else "black", fontsize=8)
    ax.set_xlabel("audit class hypothesis")
    ax.set_ylabel("GT class")
    agr = report["agreement"]
    ax.set_title(f"{title}\nagreement {agr:.3f} over {report['n']} audits" if agr is not None else title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue(), fsync=True)


def merge_and_report(out_dir: Path, n: int) -> dict:
    """Merge the N shard stores, write ``audits.jsonl``, ``rejected.jsonl``, ``report.json``, ``confusion.png``.

    ``report.json`` carries ``totals``: counters and auditor statistics summed over every run of
    every shard (:func:`cumulative_stats`), so a resumed job reports all its work, not its last run.

    Raises:
        FileNotFoundError: when a shard store is missing (that shard has not run).
        StoreLocked: when a shard is still being written by another process.
    """
    audit_paths, rejected_paths, stats = [], [], []
    for i in range(n):
        a, r, s = _shard_names(i, n)
        if not (out_dir / a).exists():
            raise FileNotFoundError(f"shard {i}/{n} store {out_dir / a} missing; run that shard first")
        check_unlocked(out_dir / a)
        audit_paths.append(out_dir / a)
        rejected_paths.append(out_dir / r)
        if (out_dir / s).exists():
            stats.append(json.loads((out_dir / s).read_text()))
    records = merge_stores(audit_paths, out_dir / "audits.jsonl")
    rejected = merge_stores([p for p in rejected_paths if p.exists()], out_dir / "rejected.jsonl")
    report = agreement_report(records)
    kinds = sorted({r["vlm"]["kind"] for r in records.values()})
    report.update(auditor_kinds=kinds, rejected=len(rejected), shards=n, shard_stats=stats,
                  totals=cumulative_stats(stats))
    if "SIMULATED" in kinds:
        report["note"] = "SIMULATED audits: controlled experiment, not VLM output"
    write_bytes_atomic(out_dir / "report.json", json.dumps(report, indent=1).encode(), fsync=True)
    title = "VISA audits vs GT (" + ", ".join(kinds) + ")"
    save_confusion_png(report, out_dir / "confusion.png", title)
    return report


def main(argv=None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML config (default training/config/visa.yaml)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--auditor", choices=["simulated", "clip", "vlm"], default=None,
                    help="override auditor.kind of the config")
    ap.add_argument("--model", default=None, help="CLIP / VLM directory or hub id (overrides config)")
    ap.add_argument("--dataroot", default=None, help="nuScenes root (default: embedded keyframe)")
    ap.add_argument("--annotations", default=None, help="MMDetection3D info pickle with the boxes")
    ap.add_argument("--tables", default=None,
                    help="instead of one keyframe: a nuScenes-format table root (nuScenes, Lyft, the "
                         "driving simulator's output) with sample_annotation / instance tables")
    ap.add_argument("--version", default="v1.0-test", help="table version folder under --tables")
    ap.add_argument("--shard", default=None, help="I/N: process every N-th instance from I")
    ap.add_argument("--merge", action="store_true", help="only merge the N shards of --shard ?/N and report")
    ap.add_argument("--limit", type=int, default=None, help="at most this many instances per shard")
    ap.add_argument("--throttle-s", type=float, default=0.0,
                    help="sleep after each instance (rate limiting; the kill -9 test uses it)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        cfg = load_config(args.config or paths.resource("training/config/visa.yaml"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if args.shard and world > 1:
            raise ValueError("use either --shard or torchrun ranks, not both")
        if args.shard:
            shard = parse_shard(args.shard)
        else:
            shard = (int(os.environ.get("RANK", "0")), world)
        out_dir = Path(args.out)
        if args.merge:
            if not args.shard:
                raise ValueError("--merge needs --shard ?/N to know N (e.g. --shard 0/2)")
            report = merge_and_report(out_dir, shard[1])
            print(json.dumps({k: report[k] for k in ("n", "agreement", "rejected")}))
            return 0
        kind = args.auditor or cfg["auditor"]["kind"]
        auditor = build_auditor(kind, cfg, args.model)
        if args.tables:
            from training.visa.tables import open_tables

            work = tables_work(open_tables(args.tables, args.version))
        else:
            from occ_audit_ros.nuscenes_io import load_keyframe

            work = keyframe_work(load_keyframe(args.dataroot, args.annotations))
        if world > 1:
            import torch.distributed as dist

            dist.init_process_group("gloo")
        counts = run_shard(work, auditor, out_dir, shard, args.throttle_s, args.limit,
                           progress=not args.no_progress)
        LOG.info("shard %d/%d: %s; auditor %s", shard[0], shard[1], counts, auditor.stats.as_dict())
        if world > 1:
            dist.barrier()
        if shard[1] == 1 or (world > 1 and shard[0] == 0):
            report = merge_and_report(out_dir, shard[1])
            print(json.dumps({k: report[k] for k in ("n", "agreement", "rejected")}))
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return 0
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"generate_audits: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
