"""Train several SemAbs runs (tasks x seeds) as parallel processes on one machine, then benchmark them.

Made for one lent GPU: every run is ``training/train_semabs.py`` in its own process (they share the GPU),
then ``training/experiments/semabs_sim.py`` evaluates the seeds of each task together (mean +- std). Optionally a
short smoke run first (3 steps per task): with ``--amp bf16`` it falls back to float32 when the bfloat16
smoke run fails, and it stops everything early when float32 fails too.

Outputs in ``--results``: ``<task>_s<seed>.safetensors`` (weights only, from ``train.export_weights``)
and ``semabs_results.tar.gz`` (training logs, benchmark logs, ``bench_<task>.json``).

Usage:
    python training/experiments/semabs_parallel.py --config training/config/semabs_sim_gpu.yaml --tasks ovssc vool --seeds 0 1 2 \
        --runs /tmp/semabs_runs --results out/ [--amp bf16] [--smoke] [--set train.time_budget_s=240]
Last line: ``RESULT ...`` with the runs' steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from occ_audit_ros.paths import REPO_ROOT as ROOT  # noqa: E402
TRAIN = ["-m", "training.train_semabs"]
BENCH = ["-m", "training.experiments.semabs_sim"]


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def smoke(config: str, tasks, runs: Path, amp: str | None, extra) -> bool:
    """3 training steps per task (in parallel, no time budget, on the val split's data so that loading is
    quick); True when all exit with status 0."""
    from training.train_semabs import load_config

    data = load_config(config, extra)["data"]
    val_pack = data["packs"]["val"] if data.get("source") == "pack" and "val" in data.get("packs", {}) else None
    procs = {}
    for task in tasks:
        log = runs / f"smoke_{task}_{amp or 'fp32'}.log"
        args = [sys.executable, *TRAIN, "--no-progress", "--config", config, "--set", *extra, f"task={task}",
                f"out_dir={runs / ('smoke_' + task)}", "train.max_steps=3", "train.time_budget_s=0",
                "train.warmup_steps=2", f"train.amp={amp or 'null'}", "train.export_weights=false"]
        if val_pack is not None:
            args.append(f"data.packs.train={val_pack}")
        f = open(log, "w")
        procs[task] = (subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT), f, log)
    ok = True
    for task, (p, f, log) in procs.items():
        rc = p.wait()
        f.close()
        print(f"smoke {task} amp={amp}: rc={rc} {_tail(log, 300).strip().splitlines()[-1:]}", flush=True)
        shutil.rmtree(runs / ("smoke_" + task), ignore_errors=True)
        ok &= rc == 0
    return ok


def main(argv=None) -> int:
    """CLI (see module docstring). Returns 0 when every run and benchmark succeeded."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--tasks", nargs="+", default=["ovssc", "vool"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runs", required=True, help="folder for the run directories and logs")
    ap.add_argument("--results", required=True, help="folder for the weights and the results archive")
    ap.add_argument("--amp", default=None, choices=[None, "bf16"])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], help="overrides passed to every run")
    ap.add_argument("--bench-args", nargs="*", default=["--wide"], help="extra args for semabs_sim.py")
    args = ap.parse_args(argv)
    runs, results = Path(args.runs), Path(args.results)
    runs.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    amp = args.amp
    if args.smoke:
        if not smoke(args.config, args.tasks, runs, amp, args.set):
            if amp is None or not smoke(args.config, args.tasks, runs, None, args.set):
                print("smoke run failed; nothing trained", flush=True)
                _archive(runs, results)
                return 1
            amp = None
    print(f"smoke done at {time.time() - t0:.0f} s; amp={amp}", flush=True)
    procs = {}
    for task in args.tasks:
        for seed in args.seeds:
            name = f"{task}_s{seed}"
            log = open(runs / f"train_{name}.log", "w")
            cmd = [sys.executable, *TRAIN, "--no-progress", "--config", args.config, "--set", *args.set,
                   f"task={task}", f"seed={seed}", f"out_dir={runs / name}", f"train.amp={amp or 'null'}"]
            procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log)
    rcs = {}
    for name, (p, log) in procs.items():
        rcs[name] = p.wait()
        log.close()
        print(f"train {name}: rc={rcs[name]} at {time.time() - t0:.0f} s; "
              f"{_tail(runs / f'train_{name}.log', 400).strip().splitlines()[-2:]}", flush=True)
    from safetensors import safe_open

    steps = {}
    bench = {}
    for task in args.tasks:
        cks = []
        for s in args.seeds:
            w = runs / f"{task}_s{s}" / "weights.safetensors"
            if w.is_file():
                cks.append(str(w))
                shutil.copy(w, results / f"{task}_s{s}.safetensors")
                with safe_open(str(w), framework="pt") as f:
                    steps[f"{task}_s{s}"] = json.loads(f.metadata()["train_state"]).get("step")
        if cks:
            log = open(runs / f"bench_{task}.log", "w")
            cmd = [sys.executable, *BENCH, "--config", args.config, "--set", f"task={task}", *args.set,
                   "--checkpoints", *cks, "--json", str(runs / f"bench_{task}.json"), *args.bench_args]
            bench[task] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log)
    for task, (p, log) in bench.items():
        rc = p.wait()
        log.close()
        rcs[f"bench_{task}"] = rc
        print(f"bench {task}: rc={rc} at {time.time() - t0:.0f} s\n{_tail(runs / f'bench_{task}.log', 1500)}",
              flush=True)
    _archive(runs, results)
    print("RESULT " + " ".join(f"{k}_steps={v}" for k, v in steps.items()) + f" amp={amp} "
          f"seconds={time.time() - t0:.0f}", flush=True)
    return 0 if all(v == 0 for v in rcs.values()) else 1


def _archive(runs: Path, results: Path) -> None:
    with tarfile.open(results / "semabs_results.tar.gz", "w:gz") as tar:
        for p in sorted(runs.glob("*.log")) + sorted(runs.glob("*.json")):
            tar.add(p, arcname=p.name)


if __name__ == "__main__":
    raise SystemExit(main())
