"""VISA as an ``extra_losses`` hook of the AGO trainer (``training/train_ago.py``).

``train(cfg, extra_losses=[VisaExtraLoss(...)])``: each step the hook reads the batch's sample
tokens and the model's ``outputs["class_logits"]`` (B, X, Y, Z, C) (Occ3D labels for the closed
vocabulary, so K_obj = columns 1..10), gathers the precomputed :class:`.losses.AuditTargets` of
those samples (voxel indices shifted by ``b·X·Y·Z``) and returns the three λ-weighted, ramped
VISA terms ``visa_tax``, ``visa_attr``, ``visa_graph`` — the trainer adds them to its unchanged
L_grounding + L_occ (+ L_align) and logs them. The model is untouched.

The ramp counts the hook's calls: ``epoch = (start_step + calls) / steps_per_epoch``; pass the
resumed step as ``start_step`` when resuming.

Config switch: ``training/train_ago.py`` calls :func:`build_extra_losses` ``(cfg["visa"], cfg)``
when its config has a ``visa:`` mapping with ``enabled: true``. Keys of that mapping (all optional
except ``enabled``; everything else defaults to ``training/config/visa.yaml``, deep-merged)::

    visa:
      enabled: true
      config: training/config/visa.yaml    # base VISA config (auditor, grounding, weights, losses)
      audits: null                # JSONL store (occ_audit_generate_audits --tables ...); null:
                                  # SIMULATED audits of the training split made on the fly
      targets: null               # precomputed targets (save_targets; meta "num_samples" = training
                                  # samples, for the ramp); overrides audits
      steps_per_epoch: null       # ramp length unit; default ceil(training samples / batch size)
      version: v1.0-test          # table folder of data.dataroot (instance tokens, tracks)
      weights: {reliability: true}   # false: w = ρ only (ablation "no reliability weighting")
      losses: {lambda_tax: 0.5, ...} # any key of the losses section
      auditor: {simulated: {accuracy: 0.8, seed: 0}}   # any key of the auditor section
      object_mass: false          # diagnostic: L_tax on unrenormalised K_obj probabilities (VisaExtraLoss)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import torch
import yaml

from occ_audit_ros.voxel_grid import VoxelGridSpec
from training.visa.grounding import keyframe_semantics_from_lidar
from training.visa.integration import concat_targets, keyframe_targets
from training.visa.losses import (AuditTargets, GraphEdges, VisaLossConfig, gather_logits, graph_edges, ramp,
                                  taxonomy_loss, visa_loss)
from training.visa.taxonomy import K_OBJ_OCC3D_INDEX


def _shift(t: AuditTargets, offset: int, frame_offset: int = 0) -> AuditTargets:
    """Voxel indices + ``offset`` (batch item), frame ids + ``frame_offset`` (one graph per sample)."""
    return dataclasses.replace(t, voxel_index=torch.where(t.voxel_index >= 0, t.voxel_index + offset, -1),
                               frame=t.frame + frame_offset)


class VisaExtraLoss:
    """``fn(batch, outputs, model) -> {name: scalar}`` hook for ``train_ago.train``.

    Args:
        targets_by_token: sample token -> targets of that sample on the trainer's grid, voxel
            indices without batch offset (:func:`keyframe_targets_for_tokens`).
        loss_cfg: ``losses`` section of ``training/config/visa.yaml`` (or a :class:`VisaLossConfig`).
        steps_per_epoch: optimiser steps per epoch (for the λ ramp).
        start_step: step the run starts (resumes) at.
        seed: seed of the graph-edge subsampling.
        k_obj_index: logits columns of K_obj (default Occ3D 1..10, the closed vocabulary).
        object_mass: diagnostic variant of L_tax: the row's pooled probabilities of the K_obj classes
            are used as they are (their sum = the row's object probability) instead of renormalised
            within K_obj (visa.md §7), so the term also raises the objects against stuff and free.
            L_attr and L_graph are unchanged. Default False (the design).

    Raises:
        ValueError: for ``steps_per_epoch < 1``.
    """

    def __init__(self, targets_by_token: dict[str, AuditTargets], loss_cfg=None, steps_per_epoch: int = 1,
                 start_step: int = 0, seed: int = 0, k_obj_index=K_OBJ_OCC3D_INDEX, object_mass: bool = False) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.targets = targets_by_token
        self.cfg = loss_cfg if isinstance(loss_cfg, VisaLossConfig) else VisaLossConfig.from_dict(loss_cfg)
        self.steps_per_epoch = int(steps_per_epoch)
        self.step = int(start_step)
        self.generator = torch.Generator().manual_seed(seed)
        self.k_obj_index = tuple(k_obj_index)
        self.object_mass = bool(object_mass)
        self._frames = 1 + max([int(t.frame.max()) for t in self.targets.values() if len(t.frame)] or [0])
        self._cache: dict = {}

    def _prepared(self, tok: str, b: int, nvox: int, device):
        """Targets of sample ``tok`` as batch item ``b`` on ``device`` and its audit-graph edges
        (None when a frame has more than ``max_edges_per_frame`` candidate edges: those are drawn
        per step with the generator). Cached per (token, b, device): the targets are copied to the
        device once, not at every step."""
        key = (tok, b, nvox, str(device))
        if key not in self._cache:
            t = _shift(self.targets[tok], b * nvox, b * self._frames)
            e = graph_edges(t, self.cfg.min_voxels, self.cfg.jaccard_positive, self.cfg.jaccard_negative,
                            max_edges_per_frame=1 << 62)
            fr = t.frame[e.i]
            deterministic = len(fr) == 0 or int(torch.unique(fr, return_counts=True)[1].max()) <= self.cfg.max_edges_per_frame
            self._cache[key] = (t, t.to(device), e if deterministic else None)
        return self._cache[key]

    def __call__(self, batch: dict, outputs: dict, model=None) -> dict[str, torch.Tensor]:
        """The weighted VISA terms of one training step (0 when no sample of the batch is audited).

        Each batch item is its own audit-graph frame set (frame ids shifted by the item index), so
        no L_graph edge joins two samples of a batch.
        """
        logits = outputs["class_logits"]  # (B, X, Y, Z, C)
        B, X, Y, Z, _ = logits.shape
        dev = logits.device
        parts = [self._prepared(tok, b, X * Y * Z, dev) for b, tok in enumerate(batch["tokens"])
                 if tok in self.targets and len(self.targets[tok].gt)]
        k = ramp(self.step / self.steps_per_epoch, self.cfg.ramp_epochs)
        self.step += 1
        if not parts:
            zero = logits.sum() * 0.0
            return {"visa_tax": zero, "visa_attr": zero, "visa_graph": zero}
        targets = parts[0][1] if len(parts) == 1 else concat_targets([p[1] for p in parts])
        # audit-graph edges come from the audits alone (never the logits): cached per sample, or
        # subsampled now with the generator, in frame order (= graph_edges over the whole batch)
        I, J, P, rows = [], [], [], 0
        for t_cpu, _, e in parts:
            if e is None:
                e = graph_edges(t_cpu, self.cfg.min_voxels, self.cfg.jaccard_positive, self.cfg.jaccard_negative,
                                self.cfg.max_edges_per_frame, self.generator)
            I.append(e.i + rows)
            J.append(e.j + rows)
            P.append(e.positive)
            rows += len(t_cpu.gt)
        edges = GraphEdges(torch.cat(I).to(dev), torch.cat(J).to(dev), torch.cat(P).to(dev))
        out = visa_loss(logits.permute(0, 4, 1, 2, 3), targets, self.cfg, epoch=None, edges=edges,
                        k_obj_index=self.k_obj_index)
        if self.object_mass:  # L_tax on the absolute K_obj probabilities (not renormalised within K_obj)
            flat = logits.reshape(-1, logits.shape[-1])
            valid = (targets.voxel_index >= 0).to(flat.dtype)
            p = torch.softmax(gather_logits(flat, targets.voxel_index), dim=-1) * valid[..., None]
            pbar = p.sum(1) / valid.sum(1, keepdim=True).clamp(min=1.0)
            pk = pbar[:, torch.as_tensor(self.k_obj_index, device=dev)]
            out["tax"] = taxonomy_loss(pk, targets, self.cfg.alpha, self.cfg.beta)
        return {"visa_tax": k * self.cfg.lambda_tax * out["tax"],
                "visa_attr": k * self.cfg.lambda_attr * out["attr"],
                "visa_graph": k * self.cfg.lambda_graph * out["graph"]}


def keyframe_targets_for_tokens(audits: dict[str, dict], spec: VoxelGridSpec, dataroot=None, annotations=None,
                                tokens=None, weights: dict | None = None, grounding: dict | None = None):
    """Targets of the AGO trainer's samples (same loader arguments as its ``data`` section).

    GT voxels come from :func:`.grounding.keyframe_semantics_from_lidar` on ``spec`` (the labels
    and frame of the AGO GT builder).

    Returns:
        (sample token -> :class:`AuditTargets`, sample token -> stats).
    """
    from occ_audit_ros.nuscenes_io import load_keyframe

    weights, grounding = weights or {}, grounding or {}
    out, stats = {}, {}
    for tok in (tokens or [None]):
        kf = load_keyframe(dataroot, annotations, sample_token=tok)
        sem, _, _ = keyframe_semantics_from_lidar(kf, spec)
        t, s = keyframe_targets(kf, sem, spec, audits, margin=grounding.get("margin_m", 0.2),
                                min_voxels=grounding.get("min_voxels", 3),
                                tau_q=weights.get("tau_q", 0.5), tau_r=weights.get("tau_r", 0.5),
                                agreement_downweight=weights.get("agreement_downweight", False),
                                full_voxels=grounding.get("full_weight_voxels", 20))
        out[kf.sample_token], stats[kf.sample_token] = t, s
    return out, stats


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_visa_config(visa_cfg: dict | None) -> dict:
    """The effective VISA config: ``visa_cfg["config"]`` (default ``training/config/visa.yaml``) deep-merged
    with the other keys of ``visa_cfg`` (the trainer's ``visa:`` block).

    Raises:
        FileNotFoundError: missing base config.
    """
    from occ_audit_ros import paths

    visa_cfg = dict(visa_cfg or {})
    base_path = visa_cfg.pop("config", None) or paths.resource("training/config/visa.yaml")
    base_path = Path(base_path)
    if not base_path.is_file():
        raise FileNotFoundError(f"VISA config {base_path} not found")
    return _deep_merge(yaml.safe_load(base_path.read_text()), visa_cfg)


def simulate_split_audits(nusc, auditor_cfg: dict) -> tuple[dict[str, dict], dict[str, str]]:
    """SIMULATED audits of every K_obj instance of a table set, in memory (controlled experiments
    only: the simulated auditor reads the GT class; records say ``vlm.kind = "SIMULATED"``).

    Args:
        nusc: ``NuScenes`` handle (:func:`.tables.open_tables`).
        auditor_cfg: the ``auditor`` section (``simulated`` sub-section: accuracy per crop quality
            or one number, confusion structure, reliability correlation, seed).

    Returns:
        (instance token -> record, instance token -> rejection reason).
    """
    from training.visa.generate import audit_in_memory, build_auditor, tables_work

    return audit_in_memory(tables_work(nusc), build_auditor("simulated", {"auditor": auditor_cfg}))


def split_targets(vcfg: dict, data: dict, spec: VoxelGridSpec, audits: dict[str, dict] | None = None,
                  keyframes=None, nusc=None) -> tuple[dict[str, AuditTargets], dict]:
    """Targets of the AGO trainer's training split (its ``data`` section) from audits.

    Args:
        vcfg: effective VISA config (:func:`load_visa_config`).
        data: the trainer's ``data`` section (``dataroot``, ``annotations``, ``tokens``, ``gt_dir``).
        spec: the trainer's grid (Occ3D range at ``data.voxel_size``).
        audits: records to use (default: ``vcfg["audits"]`` read from JSONL, else simulated).
        keyframes: optional preloaded ``[(keyframe, semantics)]`` (skips loading).
        nusc: optional ``NuScenes`` handle of ``data.dataroot``.

    GT per sample: ``data.gt_dir`` (``<token>.npz`` or Occ3D layout, as the trainer) when it holds
    the sample, else :func:`.grounding.keyframe_semantics_from_lidar`.

    Returns:
        (sample token -> targets, stats ``{"audits", "rejected", "per_sample"}``).

    Raises:
        FileNotFoundError: tables or GT missing; ValueError: a non-simulated auditor without an
        audit store.
    """
    from training.ago.data import _find_gt, load_gt_file, sample_tokens
    from occ_audit_ros.nuscenes_io import load_keyframe
    from training.visa.integration import tables_targets
    from training.visa.store import read_store
    from training.visa.tables import open_tables

    dataroot = data.get("dataroot")
    nusc = nusc or open_tables(dataroot, vcfg.get("version", "v1.0-test"))
    rejected = {}
    if audits is None:
        if vcfg.get("audits"):
            audits = read_store(vcfg["audits"])
        elif vcfg["auditor"].get("kind", "simulated") == "simulated":
            audits, rejected = simulate_split_audits(nusc, vcfg["auditor"])
        else:
            raise ValueError(f"auditor kind {vcfg['auditor']['kind']!r} needs an audit store: run "
                             "occ_audit_generate_audits --tables ... and set visa.audits")
    if keyframes is None:
        tokens = data.get("tokens")
        tokens = sample_tokens(dataroot) if tokens == "all" else (tokens or [None])
        keyframes = []
        for tok in tokens:
            kf = load_keyframe(dataroot, data.get("annotations"), tok)
            found = _find_gt(data["gt_dir"], kf.sample_token) if data.get("gt_dir") else None
            if found is not None:
                sem = load_gt_file(found, spec).semantics
            else:
                sem, _, _ = keyframe_semantics_from_lidar(kf, spec)
            keyframes.append((kf, sem))
    g, w = vcfg.get("grounding", {}), vcfg.get("weights", {})
    targets, per_sample = tables_targets(
        nusc, keyframes, audits, spec, g.get("margin_m", 0.2), g.get("min_voxels", 3), w.get("tau_q", 0.5),
        w.get("tau_r", 0.5), w.get("agreement_downweight", False), g.get("full_weight_voxels", 20),
        reliability=w.get("reliability", True))
    return targets, {"audits": len(audits), "rejected": len(rejected), "per_sample": per_sample}


_FIELDS = ("voxel_index", "gt", "hypothesis", "pi", "confusion_set", "attributes", "attribute_mask", "weight", "frame")


def save_targets(path, targets: dict[str, AuditTargets], meta: dict | None = None) -> None:
    """Write per-sample targets to one safetensors file atomically (:func:`occ_audit_ros.atomic.write_bytes_atomic`, fsync-ed);
    keys ``<sample token>/<field>``, ``meta`` as JSON in the metadata."""
    from safetensors.torch import save

    from occ_audit_ros.atomic import write_bytes_atomic

    tensors = {f"{tok}/{f}": getattr(t, f).contiguous() for tok, t in targets.items() for f in _FIELDS}
    body = save(tensors, metadata={"format": "visa-targets/1", "meta": json.dumps(meta or {})})
    write_bytes_atomic(path, body, fsync=True)


def load_targets(path) -> tuple[dict[str, AuditTargets], dict]:
    """Inverse of :func:`save_targets`: (sample token -> targets, meta).

    Raises:
        FileNotFoundError; ValueError: not a ``visa-targets/1`` file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VISA targets {path} not found")
    with safe_open(str(path), "pt") as f:
        md = f.metadata() or {}
        if md.get("format") != "visa-targets/1":
            raise ValueError(f"{path} is not a visa-targets/1 file")
        parts: dict[str, dict] = {}
        for k in f.keys():
            tok, field = k.rsplit("/", 1)
            parts.setdefault(tok, {})[field] = f.get_tensor(k)
    return {tok: AuditTargets(**d) for tok, d in parts.items()}, json.loads(md.get("meta", "{}"))


def build_extra_losses(visa_cfg: dict, cfg: dict) -> list:
    """The trainer's ``extra_losses`` for ``cfg["visa"]`` (the config switch of
    ``training/train_ago.py``; keys in this module's docstring).

    Args:
        visa_cfg: the ``visa:`` mapping of the training config (``enabled`` is not checked here).
        cfg: the whole training config (``data``, ``optim.batch_size``, ``seed``).

    Returns:
        ``[VisaExtraLoss]`` (one hook; its ramp counts optimiser steps, ``steps_per_epoch`` =
        ceil(training samples / batch size), the sample count from ``num_samples`` in a targets
        file's meta, or ``visa.steps_per_epoch``); ``[]`` when every λ is 0.

    Raises:
        FileNotFoundError / ValueError: as :func:`split_targets` / :func:`load_targets`.
    """
    from training.ago.occ_gt import OCC3D_SPEC

    vcfg = load_visa_config({k: v for k, v in (visa_cfg or {}).items() if k != "enabled"})
    loss_cfg = VisaLossConfig.from_dict(vcfg.get("losses"))
    if loss_cfg.lambda_tax == loss_cfg.lambda_attr == loss_cfg.lambda_graph == 0:
        return []
    if vcfg.get("targets"):
        targets, meta = load_targets(vcfg["targets"])
        n_samples = int(meta.get("num_samples", len(targets)))  # samples without rows may be absent
    else:
        spec = VoxelGridSpec(OCC3D_SPEC.lower, OCC3D_SPEC.upper, cfg["data"]["voxel_size"])
        targets, _ = split_targets(vcfg, cfg["data"], spec)
        n_samples = len(targets)  # one entry per training sample, rows or not
    steps = vcfg.get("steps_per_epoch") or math.ceil(n_samples / max(1, int(cfg.get("optim", {}).get("batch_size", 1))))
    return [VisaExtraLoss(targets, loss_cfg, steps_per_epoch=max(1, steps), seed=int(cfg.get("seed", 0)),
                          object_mass=bool(vcfg.get("object_mass", False)))]


__all__ = ["VisaExtraLoss", "keyframe_targets_for_tokens", "load_visa_config", "simulate_split_audits",
           "split_targets", "save_targets", "load_targets", "build_extra_losses"]
