"""VISA losses on occupancy logits: taxonomy, attribute-factor, scene-level audit graph (docs/visa.md §7).

Logits-level interface (any occupancy model): the model's per-voxel class logits flattened to
``(N, C)`` (e.g. ``logits.permute(0, 2, 3, 4, 1).reshape(-1, C)`` of a ``[B, C, X, Y, Z]`` output)
plus :class:`AuditTargets`, a padded voxel->instance assignment and per-row audit tensors
precomputed offline (:func:`build_targets`). VISA only adds loss terms: it holds no parameters,
registers no hooks and never runs at inference.

Notation (rows r = (instance i, frame t)): p_v = softmax(z_v);
p̄_r = mean_{v∈V_r} p_v restricted to K_obj and renormalised; w_r = w_{i,t}; N = Σ_r w_r.

- π_i: q_i on c_vlm, confusion scores on their classes, the remaining mass spread uniformly over
  K_obj; t_i = (1 − α) onehot(y_i) + α π_i; P̄_g = Σ_{k∈g} p̄_k, T_g = Σ_{k∈g} t_k.
  ``L_tax = (1/N) Σ_r w_r [−Σ_k t_k log p̄_k − β Σ_g T_g log P̄_g]``.
- û_r = M^T p̄_r; ``L_attr = (1/N) Σ_r w_r (1/Σ_a m_a) Σ_a m_a BCE(û_a, u_a)`` (rows with no
  observed attribute add 0).
- Graph per frame over rows with |V| ≥ 3: J_ij = Jaccard of the audits' attribute vectors over
  attributes observed in both (undefined, hence no Jaccard edge, when their union is empty);
  E+ = {J ≥ 0.8 or parent(c_i) = parent(c_j) with c_j ∈ {c_i} ∪ C_i (either direction)},
  E− = {J ≤ 0.2 and parent(c_i) ≠ parent(c_j)}; at most 256 edges per frame (random subset);
  ω = sqrt(w_i w_j), s = cos(û_i, û_j);
  ``L_graph = Σ_{E+} ω (1 − s) / Σ_{E+} ω + Σ_{E−} ω max(0, s − m) / Σ_{E−} ω`` with sums over
  all edges of the batch; a term with no edge (or zero Σω) is 0.
- ``L = λ_tax L_tax + λ_attr L_attr + λ_graph L_graph``, each λ ramped linearly from 0 over the
  first 2 epochs; the trainer adds its unchanged L_occ.

Numerics: log and BCE clamp probabilities at 1e-12 / [1e-6, 1 − 1e-6] (only reached with
saturated logits); N = 0 gives exactly 0 with a zero gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from training.visa.propagation import FrameAudit
from training.visa.taxonomy import ATTRIBUTES, K_OBJ, K_OBJ_OCC3D_INDEX, attribute_matrix, parent_matrix

_LOG_EPS = 1e-12
_BCE_EPS = 1e-6


@dataclass
class AuditTargets:
    """Per-row audit tensors of one batch (R rows = (instance, frame) pairs, K = 10, A = 10).

    Attributes:
        voxel_index: (R, V_max) int64 rows of the flattened logits, −1 = padding.
        gt: (R,) int64 K_obj index of the GT class y_i.
        hypothesis: (R,) int64 K_obj index of c_vlm.
        pi: (R, K) float VLM distribution π_i (rows sum to 1).
        confusion_set: (R, K) bool, True for the classes in C_i.
        attributes: (R, A) float 0/1 audit attributes u_i (0 where masked).
        attribute_mask: (R, A) float 1 where u_i,a is observed (not null).
        weight: (R,) float w_{i,t} ≥ 0.
        frame: (R,) int64 frame id (graph edges only join rows of the same frame).
    """

    voxel_index: torch.Tensor
    gt: torch.Tensor
    hypothesis: torch.Tensor
    pi: torch.Tensor
    confusion_set: torch.Tensor
    attributes: torch.Tensor
    attribute_mask: torch.Tensor
    weight: torch.Tensor
    frame: torch.Tensor

    def to(self, device=None, dtype=None) -> "AuditTargets":
        """Copy on ``device``; float tensors also cast to ``dtype`` when given."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            out[f.name] = t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)
        return AuditTargets(**out)

    @property
    def num_voxels(self) -> torch.Tensor:
        """(R,) int64 |V_r|."""
        return (self.voxel_index >= 0).sum(1)


def vlm_distribution(audit: dict) -> np.ndarray:
    """π_i (K,) float64: q on c_vlm, confusion scores on their classes, rest uniform over K_obj."""
    pi = np.zeros(len(K_OBJ))
    pi[K_OBJ.index(audit["class_hypothesis"])] += float(audit["confidence"])
    for c in audit["confusions"]:
        pi[K_OBJ.index(c["class"])] += float(c["score"])
    rest = max(0.0, 1.0 - pi.sum())
    return pi + rest / len(K_OBJ)


def build_targets(frames: list[FrameAudit], voxel_lists: list[np.ndarray], frame_ids,
                  offsets=None) -> AuditTargets:
    """:class:`AuditTargets` from propagated audits and their grounded voxels.

    Args:
        frames: R :class:`FrameAudit` (audit record with ``gt.class``, weight w_{i,t}).
        voxel_lists: R arrays of flat voxel indices (:func:`.grounding.ground_boxes`).
        frame_ids: R ints (rows of one frame share a graph).
        offsets: optional R ints added to the voxel indices (batch offsets).

    Raises:
        ValueError: on length mismatch or an audit without a K_obj ``gt.class``.
    """
    from training.visa.grounding import pad_voxel_index

    R = len(frames)
    if len(voxel_lists) != R or len(frame_ids) != R:
        raise ValueError(f"{R} frames, {len(voxel_lists)} voxel lists, {len(frame_ids)} frame ids")
    gt, hyp, pi, cset, u, m = [], [], [], [], [], []
    for f in frames:
        a = f.audit
        g = (a.get("gt") or {}).get("class")
        if g not in K_OBJ:
            raise ValueError(f"audit of {f.instance_token} has no K_obj gt.class ({g!r})")
        gt.append(K_OBJ.index(g))
        hyp.append(K_OBJ.index(a["class_hypothesis"]))
        pi.append(vlm_distribution(a))
        cs = np.zeros(len(K_OBJ), bool)
        for c in a["confusions"]:
            cs[K_OBJ.index(c["class"])] = True
        cset.append(cs)
        u.append([float(a["attributes"].get(k) or 0) for k in ATTRIBUTES])
        m.append([float(a["attributes"].get(k) is not None) for k in ATTRIBUTES])
    f32 = torch.float32
    return AuditTargets(
        voxel_index=pad_voxel_index(voxel_lists, offsets),
        gt=torch.tensor(gt, dtype=torch.int64).reshape(R), hypothesis=torch.tensor(hyp, dtype=torch.int64).reshape(R),
        pi=torch.tensor(np.array(pi).reshape(R, len(K_OBJ)), dtype=f32),
        confusion_set=torch.tensor(np.array(cset).reshape(R, len(K_OBJ))),
        attributes=torch.tensor(np.array(u).reshape(R, len(ATTRIBUTES)), dtype=f32),
        attribute_mask=torch.tensor(np.array(m).reshape(R, len(ATTRIBUTES)), dtype=f32),
        weight=torch.tensor([f.weight for f in frames], dtype=f32).reshape(R),
        frame=torch.as_tensor(np.asarray(frame_ids, np.int64)).reshape(R))


def gather_logits(logits: torch.Tensor, voxel_index: torch.Tensor) -> torch.Tensor:
    """Logits of each row's voxels: (R, V_max, C) (padding rows read voxel 0; mask them).

    Args:
        logits: (N, C) flattened logits, or the model's (B, C, X, Y, Z) grid; flat index
            ``b·X·Y·Z + (ix·Y + iy)·Z + iz`` (C-order, :class:`occ_audit_ros.voxel_grid.VoxelGridSpec`).
            The 5-D form indexes the grid in place: no copy of the whole grid, and the gradient
            reaching the model has the grid's own memory layout.
        voxel_index: (R, V_max) int64, −1 = padding.

    Raises:
        ValueError: for bad shapes or indices beyond the number of voxels.
    """
    if voxel_index.ndim != 2:
        raise ValueError(f"voxel_index must be (R, V_max), got {tuple(voxel_index.shape)}")
    if logits.ndim == 2:
        n = logits.shape[0]
    elif logits.ndim == 5:
        n = logits.shape[0] * logits.shape[2] * logits.shape[3] * logits.shape[4]
    else:
        raise ValueError(f"logits must be (N, C) or (B, C, X, Y, Z), got {tuple(logits.shape)}")
    idx = voxel_index.clamp(min=0).to(logits.device)
    if voxel_index.numel() and int(voxel_index.max()) >= n:
        raise ValueError(f"voxel index {int(voxel_index.max())} >= number of voxels {n}")
    if logits.ndim == 2:
        return logits[idx]
    _, _, X, Y, Z = logits.shape
    b, rem = idx // (X * Y * Z), idx % (X * Y * Z)
    return logits[b, :, rem // (Y * Z), (rem // Z) % Y, rem % Z]  # (R, V, C)


def pooled_probabilities(logits: torch.Tensor, voxel_index: torch.Tensor,
                         k_obj_index=K_OBJ_OCC3D_INDEX) -> torch.Tensor:
    """p̄_r: mean softmax over each row's voxels, restricted to K_obj and renormalised.

    Args:
        logits: (N, C) or (B, C, X, Y, Z) float voxel logits (see :func:`gather_logits`).
        voxel_index: (R, V_max) int64 indices into the N voxels, −1 = padding.
        k_obj_index: the K columns of K_obj in the C classes (Occ3D ids 1..10 by default).

    Returns:
        (R, K) probabilities, same dtype as ``logits``; rows without voxels are uniform (constant).

    Raises:
        ValueError: for bad shapes or indices ≥ N.
    """
    valid = (voxel_index >= 0).to(logits.device)
    # Softmax only of the gathered voxels (the grid may hold millions that no instance uses).
    p = torch.softmax(gather_logits(logits, voxel_index), dim=-1)  # (R, V, C)
    gathered = p * valid[..., None].to(p.dtype)
    count = valid.sum(1, keepdim=True).to(p.dtype)
    pbar = gathered.sum(1) / count.clamp(min=1.0)
    kidx = torch.as_tensor(list(k_obj_index), device=logits.device)
    pk = pbar[:, kidx]
    K = pk.shape[1]
    has = count[:, 0] > 0
    pk = torch.where(has[:, None], pk / pk.sum(1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny),
                     torch.full_like(pk, 1.0 / K))
    return pk


def taxonomy_loss(pbar: torch.Tensor, targets: AuditTargets, alpha: float = 0.3, beta: float = 0.5) -> torch.Tensor:
    """L_tax (docs/visa.md §7) from pooled probabilities ``pbar`` (R, K). Returns a 0-dim tensor."""
    w = targets.weight.to(pbar.dtype)
    n = w.sum()
    if float(n) <= 0:
        return pbar.sum() * 0.0
    onehot = F.one_hot(targets.gt, pbar.shape[1]).to(pbar.dtype)
    t = (1.0 - alpha) * onehot + alpha * targets.pi.to(pbar.dtype)
    G = torch.tensor(parent_matrix(), dtype=pbar.dtype, device=pbar.device)
    P, T = pbar @ G, t @ G
    per_row = -(t * torch.log(pbar.clamp_min(_LOG_EPS))).sum(1) - beta * (T * torch.log(P.clamp_min(_LOG_EPS))).sum(1)
    return (w * per_row).sum() / n


def attribute_scores(pbar: torch.Tensor) -> torch.Tensor:
    """û = M^T p̄: (R, K) -> (R, A) expected attributes in [0, 1]."""
    M = torch.tensor(attribute_matrix(), dtype=pbar.dtype, device=pbar.device)
    return pbar @ M


def attribute_loss(pbar: torch.Tensor, targets: AuditTargets) -> torch.Tensor:
    """L_attr (docs/visa.md §7). Returns a 0-dim tensor."""
    w = targets.weight.to(pbar.dtype)
    n = w.sum()
    if float(n) <= 0:
        return pbar.sum() * 0.0
    u_hat = attribute_scores(pbar).clamp(_BCE_EPS, 1.0 - _BCE_EPS)
    u = targets.attributes.to(pbar.dtype)
    m = targets.attribute_mask.to(pbar.dtype)
    bce = -(u * torch.log(u_hat) + (1.0 - u) * torch.log(1.0 - u_hat))
    per_row = (m * bce).sum(1) / m.sum(1).clamp(min=1.0)
    return (w * per_row).sum() / n


@dataclass
class GraphEdges:
    """Audit-graph edges of a batch (computed from audits only, never from logits).

    Attributes:
        i, j: (E,) int64 row indices. positive: (E,) bool (True: E+, False: E−).
    """

    i: torch.Tensor
    j: torch.Tensor
    positive: torch.Tensor


def graph_edges(targets: AuditTargets, min_voxels: int = 3, jaccard_positive: float = 0.8,
                jaccard_negative: float = 0.2, max_edges_per_frame: int = 256,
                generator: torch.Generator | None = None) -> GraphEdges:
    """E+ and E− per frame (docs/visa.md §7), subsampled to ``max_edges_per_frame`` with ``generator``."""
    parent_of_class = torch.tensor(parent_matrix().argmax(1), device=targets.hypothesis.device)
    u = targets.attributes.bool()
    m = targets.attribute_mask.bool()
    nodes = torch.nonzero(targets.num_voxels >= min_voxels).flatten()
    I, J, POS = [], [], []
    for fr in torch.unique(targets.frame[nodes]):
        rows = nodes[targets.frame[nodes] == fr]
        if len(rows) < 2:
            continue
        a, b = torch.triu_indices(len(rows), len(rows), offset=1)
        ri, rj = rows[a], rows[b]
        both = m[ri] & m[rj]
        inter = (u[ri] & u[rj] & both).sum(1).double()
        union = ((u[ri] | u[rj]) & both).sum(1).double()
        jac = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))
        ci, cj = targets.hypothesis[ri], targets.hypothesis[rj]
        same_parent = parent_of_class[ci] == parent_of_class[cj]
        compatible = (ci == cj) | targets.confusion_set[ri, cj] | targets.confusion_set[rj, ci]
        pos = (jac >= jaccard_positive) | (same_parent & compatible)
        neg = (jac <= jaccard_negative) & ~same_parent
        keep = torch.nonzero(pos | neg).flatten()
        if len(keep) > max_edges_per_frame:
            perm = torch.randperm(len(keep), generator=generator)  # on the generator's device
            keep = keep[perm[:max_edges_per_frame].to(keep.device)]
            keep = keep.sort().values
        I.append(ri[keep])
        J.append(rj[keep])
        POS.append(pos[keep])
    if not I:
        empty = torch.zeros(0, dtype=torch.int64, device=targets.hypothesis.device)
        return GraphEdges(empty, empty, torch.zeros(0, dtype=torch.bool, device=empty.device))
    return GraphEdges(torch.cat(I), torch.cat(J), torch.cat(POS))


def graph_loss(u_hat: torch.Tensor, weight: torch.Tensor, edges: GraphEdges, margin: float = 0.3) -> torch.Tensor:
    """L_graph (docs/visa.md §7) from û (R, A), weights (R,) and the batch's edges. 0-dim tensor."""
    zero = u_hat.sum() * 0.0
    if len(edges.i) == 0:
        return zero
    w = weight.to(u_hat.dtype)
    omega = torch.sqrt(w[edges.i] * w[edges.j])
    s = F.cosine_similarity(u_hat[edges.i], u_hat[edges.j], dim=-1, eps=1e-8)
    loss = zero
    pos = edges.positive.to(u_hat.device)
    if pos.any() and float(omega[pos].sum()) > 0:
        loss = loss + (omega[pos] * (1.0 - s[pos])).sum() / omega[pos].sum()
    neg = ~pos
    if neg.any() and float(omega[neg].sum()) > 0:
        loss = loss + (omega[neg] * torch.relu(s[neg] - margin)).sum() / omega[neg].sum()
    return loss


def ramp(epoch: float, ramp_epochs: float = 2.0) -> float:
    """Linear ramp factor min(1, epoch / ramp_epochs) ∈ [0, 1] (epoch may be fractional)."""
    if ramp_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch / ramp_epochs)))


@dataclass
class VisaLossConfig:
    """Loss hyper-parameters (docs/visa.md §7; ``losses`` section of ``training/config/visa.yaml``)."""

    alpha: float = 0.3
    beta: float = 0.5
    graph_margin: float = 0.3
    jaccard_positive: float = 0.8
    jaccard_negative: float = 0.2
    max_edges_per_frame: int = 256
    min_voxels: int = 3
    lambda_tax: float = 0.5
    lambda_attr: float = 0.2
    lambda_graph: float = 0.1
    ramp_epochs: float = 2.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "VisaLossConfig":
        """From a config dict (unknown keys raise ``TypeError``)."""
        return cls(**(d or {}))


def visa_loss(logits: torch.Tensor, targets: AuditTargets, cfg: VisaLossConfig = VisaLossConfig(),
              epoch: float | None = None, edges: GraphEdges | None = None,
              generator: torch.Generator | None = None,
              k_obj_index=K_OBJ_OCC3D_INDEX) -> dict[str, torch.Tensor]:
    """The VISA terms for one batch of logits.

    Args:
        logits: (N, C) or (B, C, X, Y, Z) float voxel logits (C ≥ 11, Occ3D order, K_obj =
            classes 1..10).
        targets: the batch's :class:`AuditTargets` (on the logits' device).
        cfg: hyper-parameters.
        epoch: training progress in epochs for the λ ramp (``None``: no ramp).
        edges: precomputed graph edges (default: :func:`graph_edges` with ``generator``).
        k_obj_index: the logits columns of the 10 K_obj classes in ``taxonomy.K_OBJ`` order
            (default Occ3D ids 1..10; a model with another label order, e.g. an open-vocabulary
            head, passes its own).

    Returns:
        ``{"total", "tax", "attr", "graph"}`` 0-dim tensors; ``total`` = Σ ramp·λ·term (add it
        to the backbone's unchanged L_occ).
    """
    pbar = pooled_probabilities(logits, targets.voxel_index, k_obj_index)
    tax = taxonomy_loss(pbar, targets, cfg.alpha, cfg.beta)
    attr = attribute_loss(pbar, targets)
    if edges is None:
        edges = graph_edges(targets, cfg.min_voxels, cfg.jaccard_positive, cfg.jaccard_negative,
                            cfg.max_edges_per_frame, generator)
    graph = graph_loss(attribute_scores(pbar), targets.weight, edges, cfg.graph_margin)
    k = 1.0 if epoch is None else ramp(epoch, cfg.ramp_epochs)
    total = k * (cfg.lambda_tax * tax + cfg.lambda_attr * attr + cfg.lambda_graph * graph)
    return {"total": total, "tax": tax, "attr": attr, "graph": graph}
