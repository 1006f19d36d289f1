"""The AGO model (camera-to-voxel network + grounding head) and its losses, shared by the trainer,
the evaluation and the perception node.

Outputs use the logit layout of :mod:`.losses`: K vocabulary categories, free at K, M noise.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from occ_audit_ros.ago.head import GroundingHead, LinearHead, open_world_identify
from occ_audit_ros.ago.classes import FREE_LABEL, IGNORE_LABEL
from occ_audit_ros.ago.losses import alignment_loss, grounding_loss, occupancy_loss
from occ_audit_ros.ago.network import CameraToVoxelNet, ClipPatchEncoder, SmallCNN, lift_features
from occ_audit_ros.ago.prompts import TextBank

__all__ = ["AgoModel", "build_model", "ago_losses", "ExtraLoss"]

#: Extra loss term hook: ``fn(batch, outputs, model) -> {name: scalar tensor}`` (e.g. VISA terms),
#: added with unit weight to the total (scale inside the hook).
ExtraLoss = Callable[[dict, dict, "AgoModel"], dict]


class AgoModel(nn.Module):
    """Camera-to-voxel network F^{3D} + grounding head (+ modality adapter).

    Args:
        net: :class:`CameraToVoxelNet`.
        head: :class:`GroundingHead` of the same width.
    """

    def __init__(self, net: CameraToVoxelNet, head: GroundingHead):
        super().__init__()
        self.net, self.head = net, head

    def forward(self, images, geoms, bank: TextBank, noise_emb=None, depth=None) -> dict:
        """Run the model.

        Args:
            images: (B, Ncam, 3, H, W) float [0, 1]; geoms: B lift geometries; bank: vocabulary
            (K categories); noise_emb: (M, C) or None; depth: (B, Ncam, Hd, Wd) or None.

        Returns:
            dict: ``feats`` (B, X, Y, Z, C) F^{3D}; ``logits`` (B*V, K+1+M) grounding branch;
            ``class_logits`` (B, X, Y, Z, K+1) the same without noise columns (categories + free:
            for the Occ3D vocabulary exactly Occ3D labels 0-17, the closed-set interface VISA
            uses); with the adapter also ``adapted`` (B*V, C) and ``logits_adapted``.
        """
        feats = self.net(images, geoms, depth)
        out = self.head(feats.reshape(-1, feats.shape[-1]), bank, noise_emb)
        out["feats"] = feats
        k1 = bank.num_categories + 1
        out["class_logits"] = out["logits"][:, :k1].reshape(*feats.shape[:4], k1)
        return out

    @torch.no_grad()
    def predict(self, images, geoms, bank: TextBank, depth=None, identifier: str | None = "entropy") -> dict:
        """Inference with the open-world identifier (AGO Eq. 9), no noise prompts.

        Returns:
            dict: ``probs`` (B, X, Y, Z, K+1) final probabilities (free at K), ``labels`` (B, X, Y, Z)
            int64 argmax (K = free), ``use_grounding`` (B, X, Y, Z) bool (all True without adapter
            or identifier).
        """
        out = self.forward(images, geoms, bank, None, depth)
        shape = out["feats"].shape[:4]
        if identifier and "logits_adapted" in out:
            probs, use_g = open_world_identify(out["logits"], out["logits_adapted"], identifier)
        else:
            probs, use_g = out["logits"].softmax(-1), torch.ones(out["logits"].shape[0], dtype=torch.bool)
        probs = probs.reshape(*shape, -1)
        return {"probs": probs, "labels": probs.argmax(-1), "use_grounding": use_g.reshape(shape)}


def build_model(cfg: dict, embed_dim: int, clip_bundle=None) -> AgoModel:
    """Model from the ``model`` section of a training config.

    Keys: ``image_encoder`` (``cnn`` | ``clip``), ``cnn_channels``, ``cnn_width``, ``hidden``,
    ``adapter`` (bool), ``logit_scale_init``, ``voxel_size``, ``clip_short_side``, ``head``
    (``grounding``, default: text-grounded :class:`GroundingHead`; ``linear``: the closed-set
    :class:`LinearHead` baseline over the same features, which needs ``num_categories``).

    Raises:
        ValueError: unknown encoder / head, ``clip`` without a bundle, ``linear`` without
            ``num_categories``.
    """
    kind = cfg.get("image_encoder", "cnn")
    if kind == "cnn":
        enc = SmallCNN(cfg.get("cnn_channels", 32), cfg.get("cnn_width", 16))
    elif kind == "clip":
        if clip_bundle is None:
            raise ValueError("image_encoder 'clip' needs clip_model")
        enc = ClipPatchEncoder(clip_bundle, cfg.get("clip_short_side"))
    else:
        raise ValueError(f"unknown image_encoder {kind!r}; expected 'cnn' or 'clip'")
    net = CameraToVoxelNet(enc, embed_dim, cfg.get("hidden", 32), cfg.get("voxel_size", 0.4))
    kind = cfg.get("head", "grounding")
    if kind == "grounding":
        head = GroundingHead(embed_dim, cfg.get("logit_scale_init", 1 / 0.07), cfg.get("adapter", True))
    elif kind == "linear":
        if not cfg.get("num_categories"):
            raise ValueError("head 'linear' needs num_categories (the training vocabulary size)")
        head = LinearHead(embed_dim, int(cfg["num_categories"]))
    else:
        raise ValueError(f"unknown head {kind!r}; expected 'grounding' or 'linear'")
    return AgoModel(net, head)


def ago_losses(batch: dict, out: dict, bank: TextBank, align_encoder=None,
               extra: list[ExtraLoss] | None = None, model: AgoModel | None = None, align_target=None) -> dict:
    """L = L_grounding + L_occ + L_align (+ extra terms) (AGO Eq. 8, unit weights).

    Args:
        batch: ``target`` (B, X, Y, Z) int64 training labels (0..K-1 categories, K free, 255 ignore),
            ``mask_camera`` (B, X, Y, Z) bool, ``images``, ``geoms``, ``depth``.
        out: :meth:`AgoModel.forward` output.
        bank: the vocabulary (K).
        align_encoder: frozen image encoder in the text space (CLIP patches) for L_align, or None.
        extra: extra loss hooks.
        align_target: alternative L_align target, ``fn(semantics (B, X, Y, Z) Occ3D labels) ->
            (B*V, C)`` voxel embeddings (e.g. :class:`.oracle_vlm.OracleVoxelVLM`); used instead of
            ``align_encoder`` when given.

    V_vis (L_align's voxels) = inside ``mask_camera``, seen by a camera, and non-empty in
    ``batch["semantics"]`` (Occ3D labels: any class, also classes ignored by the grounding target,
    since occupancy is class-agnostic).

    Returns:
        dict of scalar tensors: ``grounding``, ``occ``, ``align`` (when used), extra terms,
        and ``total``.
    """
    target = batch["target"].reshape(-1)
    K = bank.num_categories
    losses = {"grounding": grounding_loss(out["logits"], target),
              "occ": occupancy_loss(out["logits"], target, free_index=K)}
    if (align_encoder is not None or align_target is not None) and "adapted" in out:
        images, geoms = batch["images"], batch["geoms"]
        with torch.no_grad():
            if align_target is not None:
                emb = align_target(batch["semantics"]).to(out["adapted"])
            else:
                feats = align_encoder(images.flatten(0, 1))
                feats = feats.view(images.shape[0], images.shape[1], *feats.shape[1:])
                emb = torch.stack([lift_features(feats[b], geoms[b])[: feats.shape[2]] for b in range(len(geoms))])
                emb = emb.permute(0, 2, 3, 4, 1).reshape(-1, feats.shape[2])
        seen = torch.stack([g.valid.any(0) for g in geoms]).reshape(-1).to(target.device)
        sem = batch["semantics"].reshape(-1)
        vis = batch["mask_camera"].reshape(-1) & seen & (sem != FREE_LABEL) & (sem != IGNORE_LABEL)
        losses["align"] = alignment_loss(out["adapted"], emb, vis)
    for fn in extra or []:
        losses.update(fn(batch, out, model))
    losses["total"] = sum(v for k, v in losses.items())
    return losses
