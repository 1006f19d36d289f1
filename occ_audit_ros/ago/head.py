"""Grounding head, free embedding, modality adapter and open-world identifier (AGO §3.1-3.3).

Voxel-text similarity (AGO Eq. 3) is a **scaled cosine**: ``S = s * <f/|f|, t/|t|>`` with a learnable
temperature ``s = exp(log_scale)`` initialised at 1/0.07 (CLIP's), a design choice (AGO Eq. 3 uses raw dot products)
when raw dot products are unstable (they are with randomly initialised voxel features). Category
logits (Eq. 4) average the phrase logits of each category. Logit layout: ``(N, K + 1 + M)`` =
K vocabulary categories, free at K, M noise categories (see :mod:`.losses`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from occ_audit_ros.ago.prompts import TextBank

__all__ = ["ModalityAdapter", "GroundingHead", "LinearHead", "entropy", "open_world_identify"]


class ModalityAdapter(nn.Module):
    """AGO's modality adapter M.A.: 2-layer MLP with softplus, ``F_hat = W2 softplus(W1 F + b1) + b2``."""

    def __init__(self, dim: int, hidden: int | None = None):
        """Args: dim: embedding width C; hidden: hidden width (default C)."""
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden or dim), nn.Softplus(), nn.Linear(hidden or dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C) float."""
        return self.net(x)


class GroundingHead(nn.Module):
    """Scores voxel embeddings against frozen text embeddings, a learned free embedding and noise.

    Args:
        dim: embedding width C (= the text encoder's).
        logit_scale_init: initial temperature s (1/0.07).
        adapter: build the modality adapter branch.
    """

    def __init__(self, dim: int, logit_scale_init: float = 1 / 0.07, adapter: bool = True):
        super().__init__()
        self.dim = int(dim)
        self.free_embedding = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.adapter = ModalityAdapter(dim) if adapter else None

    def logits(self, feats: torch.Tensor, bank: TextBank, noise_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Category logits S_sem (AGO Eq. 3-4).

        Args:
            feats: (N, C) voxel embeddings.
            bank: K categories' phrase embeddings (frozen).
            noise_emb: (M, C) noise-word embeddings or None.

        Returns:
            (N, K + 1 + M) float logits (categories, free, noise).

        Raises:
            ValueError: width mismatch.
        """
        if feats.shape[-1] != self.dim or bank.emb.shape[-1] != self.dim:
            raise ValueError(f"voxel width {feats.shape[-1]} / text width {bank.emb.shape[-1]} != head width {self.dim}")
        t = F.normalize(bank.emb.to(feats), dim=-1)
        k = bank.num_categories
        token_cat = bank.token_cat.to(feats.device)
        avg = torch.zeros(t.shape[0], k, dtype=feats.dtype, device=feats.device)
        avg[torch.arange(t.shape[0], device=feats.device), token_cat] = 1.0
        avg = avg / avg.sum(0, keepdim=True)
        # <f/|f|, t> for every column as one (N, C) x (C, K+1+M) product divided by |f| (the same
        # values as normalising f first, without (N, C)-sized normalisation passes); the phrase
        # average of Eq. 4 is applied to the text side: (f t^T) avg = f (t^T avg)
        cols = [t.T @ avg, F.normalize(self.free_embedding, dim=0).to(feats)[:, None]]
        if noise_emb is not None and len(noise_emb):
            cols.append(F.normalize(noise_emb.to(feats), dim=-1).T)
        norm = feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize's eps
        return (self.log_scale.exp() / norm) * (feats @ torch.cat(cols, dim=1))

    def forward(self, feats: torch.Tensor, bank: TextBank, noise_emb: torch.Tensor | None = None) -> dict:
        """Both branches.

        Args:
            feats: (N, C) voxel embeddings F^{3D}.

        Returns:
            dict with ``logits`` (N, K+1+M) of the grounding branch (from F^{3D}); when the adapter
            exists also ``adapted`` (N, C) = F_hat^{3D} and ``logits_adapted`` (N, K+1+M).
        """
        out = {"logits": self.logits(feats, bank, noise_emb)}
        if self.adapter is not None:
            adapted = self.adapter(feats)
            out["adapted"] = adapted
            out["logits_adapted"] = self.logits(adapted, bank, noise_emb)
        return out


class LinearHead(nn.Module):
    """Closed-set baseline: a linear classifier over the same voxel embeddings F^{3D}.

    ``logits = W f + b`` with one row per training category and one for free; it has no text input,
    so it can only output the categories it was trained on (it cannot name held-out classes). The
    ``bank`` argument is accepted for interface parity with :class:`GroundingHead` and must have the
    training vocabulary's size; noise prompts are ignored (no noise columns, M = 0).

    Args:
        dim: embedding width C.
        num_categories: K training categories (output K + 1 with free at K).
    """

    def __init__(self, dim: int, num_categories: int):
        super().__init__()
        self.dim, self.num_categories = int(dim), int(num_categories)
        self.linear = nn.Linear(self.dim, self.num_categories + 1)
        self.adapter = None

    def forward(self, feats: torch.Tensor, bank: TextBank | None = None, noise_emb=None) -> dict:
        """(N, C) float -> ``{"logits": (N, K + 1)}`` (categories, free).

        Raises:
            ValueError: width mismatch, or a vocabulary of another size than the training one.
        """
        if feats.shape[-1] != self.dim:
            raise ValueError(f"voxel width {feats.shape[-1]} != head width {self.dim}")
        if bank is not None and bank.num_categories != self.num_categories:
            raise ValueError(f"the linear head was trained on {self.num_categories} categories and cannot "
                             f"score a vocabulary of {bank.num_categories} (it has no text input)")
        return {"logits": self.linear(feats)}


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of (..., C) probabilities, -> (...)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def open_world_identify(logits: torch.Tensor, logits_adapted: torch.Tensor,
                        criterion: str = "entropy") -> tuple[torch.Tensor, torch.Tensor]:
    """Open-world identifier (AGO §3.3, Eq. 9): per voxel, keep the branch whose softmax is more
    certain.

    Args:
        logits: (N, K') grounding-branch logits (noise columns dropped by the caller at inference).
        logits_adapted: (N, K') adapter-branch logits.
        criterion: ``"entropy"`` (c = 1[H(P) < H(P_hat)], the paper's) or ``"confidence"`` (max prob).

    Returns:
        ``(probs, use_grounding)``: (N, K') float final probabilities and (N,) bool, True where the
        grounding branch was chosen.
    """
    p, q = logits.softmax(-1), logits_adapted.softmax(-1)
    if criterion == "entropy":
        c = entropy(p) < entropy(q)
    elif criterion == "confidence":
        c = p.max(-1).values > q.max(-1).values
    else:
        raise ValueError(f"criterion must be 'entropy' or 'confidence', got {criterion!r}")
    return torch.where(c[:, None], p, q), c
