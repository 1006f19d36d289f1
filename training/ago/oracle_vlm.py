"""Simulated ("oracle") VLM image embeddings lifted to voxels: the L_align target where no VLM exists.

AGO's adaptive alignment (Eq. 7) pulls the adapter output F_hat^{3D} towards VLM image embeddings
E^{3D} (MaskCLIP+ / FeatUp features lifted to voxels). No CLIP / MaskCLIP weights exist on the
machines this was built on, and the simulator renders no VLM features, so this module **simulates**
what an ideal-but-imperfect VLM would give at a visible occupied voxel: the text embedding of a
description of the voxel's true class, corrupted. This is *our* design, not the paper's, and it uses
the simulator's GT classes (including classes held out of the grounding labels), exactly the
open-world knowledge a real VLM would carry into training. Results obtained with it are an upper-bound
style experiment of the adapter/identifier mechanism, not a measurement of a real VLM.

Per voxel with Occ3D label ``c`` (0-16):

1. with probability ``confusion`` replace ``c`` by another class drawn uniformly (VLM mistakes);
2. take the embedding of one of the class's *target texts* drawn uniformly (default
   ``"a photo of {phrase}"`` for each sub-category phrase: a wording never used as a query);
3. add isotropic Gaussian noise of per-dimension std ``noise / sqrt(C)`` (``noise = 1`` gives a
   noise vector of about unit norm, cosine ~0.7 to the clean embedding), re-normalise.

Free / unobserved voxels get zeros (they are outside V_vis and never used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from occ_audit_ros.ago.classes import OCC3D_CLASSES
from occ_audit_ros.ago.text import TextEncoder

__all__ = ["OracleVoxelVLM", "oracle_target_texts"]

TEMPLATE = "a photo of {}"


def oracle_target_texts(phrases: dict, template: str = TEMPLATE) -> dict:
    """Class name -> target texts (``template`` applied to each sub-category phrase).

    Args:
        phrases: Occ3D class name -> phrases (``ClassConfig.phrases``).
    """
    return {n: [template.format(p) for p in phrases[n]] for n in OCC3D_CLASSES}


class OracleVoxelVLM:
    """Simulated VLM embeddings of voxels (see module docstring).

    Args:
        encoder: frozen text encoder (the grounding one, so targets live in the query space).
        phrases: Occ3D class name -> sub-category phrases.
        noise: Gaussian noise scale (per-dim std ``noise / sqrt(C)``), >= 0.
        confusion: probability of a wrong class, in [0, 1].
        seed: RNG seed (a generator on the labels' device; targets are drawn there).
        template: target-text template with one ``{}``.

    Raises:
        ValueError: ``noise < 0`` or ``confusion`` outside [0, 1].
    """

    def __init__(self, encoder: TextEncoder, phrases: dict, noise: float = 1.0, confusion: float = 0.2,
                 seed: int = 0, template: str = TEMPLATE):
        if noise < 0 or not 0.0 <= confusion <= 1.0:
            raise ValueError(f"need noise >= 0 and 0 <= confusion <= 1, got {noise}, {confusion}")
        texts = oracle_target_texts(phrases, template)
        self.texts = texts
        flat = [t for n in OCC3D_CLASSES for t in texts[n]]
        self.emb = encoder.encode(flat).float()  # (T, C)
        counts = torch.tensor([len(texts[n]) for n in OCC3D_CLASSES])
        self.start = torch.cumsum(counts, 0) - counts  # (17,) first text of each class
        self.count = counts
        self.noise, self.confusion = float(noise), float(confusion)
        self.seed = int(seed)
        self.dim = self.emb.shape[1]
        self._device = None
        self._on(torch.device("cpu"))

    def _on(self, device) -> None:
        """Move the table and the generator to ``device`` (a new device restarts the RNG stream
        from ``seed``)."""
        if self._device != device:
            self._device = device
            self._emb, self._start, self._count = self.emb.to(device), self.start.to(device), self.count.to(device)
            self.gen = torch.Generator(device=device).manual_seed(self.seed)

    def __call__(self, semantics: torch.Tensor) -> torch.Tensor:
        """Targets for a batch, computed on ``semantics.device`` for the occupied voxels only.

        Args:
            semantics: (...,) int64 Occ3D labels (0-16 classes, 17 free, 255 unobserved).

        Returns:
            (N, C) float32 on ``semantics.device`` (N = semantics.numel()): unit-norm rows for
            labels 0-16, zeros elsewhere.
        """
        dev = semantics.device
        self._on(dev)
        lab = semantics.reshape(-1)
        n_cls = len(OCC3D_CLASSES)
        idx = torch.nonzero(lab < n_cls).squeeze(1)
        out = torch.zeros(lab.numel(), self.dim, device=dev)
        if idx.numel() == 0:
            return out
        c = lab[idx]
        n = c.numel()
        flip = torch.rand(n, generator=self.gen, device=dev) < self.confusion
        other = (c + torch.randint(1, n_cls, (n,), generator=self.gen, device=dev)) % n_cls  # uniform over the others
        c = torch.where(flip, other, c)
        cnt = self._count[c]
        pick = self._start[c] + torch.minimum((torch.rand(n, generator=self.gen, device=dev) * cnt).long(), cnt - 1)
        e = self._emb[pick]
        if self.noise > 0:
            e = e + torch.randn(e.shape, generator=self.gen, device=dev) * (self.noise / self.dim ** 0.5)
        out[idx] = F.normalize(e, dim=-1)
        return out
