"""Camera-to-voxel network: image encoder -> lifting with camera geometry and depth -> 3D convs.

Stands in for AGO's TPVFormer + ResNet-101 3D encoder (AGO §3.1) at a size that trains on a CPU:
image features are lifted to the voxel grid by projecting every voxel centre into every camera
(pinhole, :mod:`occ_audit_ros.geometry`; the voxel-to-pixel sampling of TPVFormer's cross-view
attention, without the learned offsets), sampled bilinearly, averaged over the cameras that see the
voxel, concatenated with depth evidence from the depth image (the voxel's depth along the pixel ray
vs the measured depth: in front = free evidence, at = surface evidence, behind = occluded), then
refined by 3D convolutions into per-voxel embeddings of the text width C.

Image encoders share one interface (:class:`ImageEncoder`): :class:`ClipPatchEncoder` (frozen CLIP
ViT patch tokens through the visual projection, i.e. in CLIP's joint space; real weights when
present) and :class:`SmallCNN` (trainable, random init).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from occ_audit_ros.geometry import invert_transform, transform_points
from occ_audit_ros.voxel_grid import VoxelGridSpec

__all__ = ["resize_image", "ImageEncoder", "SmallCNN", "ClipPatchEncoder", "LiftGeometry", "lift_geometry",
           "lift_features", "CameraToVoxelNet", "NUM_DEPTH_CHANNELS"]

def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Bilinear resize of an RGB image by ``scale`` (Pillow), at least 8 x 8 pixels.

    Args:
        image: (H, W, 3) uint8 RGB.
        scale: size factor, > 0.

    Returns:
        (round(H * scale), round(W * scale), 3) uint8, each side at least 8.
    """
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


#: Depth-evidence channels appended to the lifted features: seen, free, surface, occluded, 1/depth.
NUM_DEPTH_CHANNELS = 5


class ImageEncoder(nn.Module):
    """Interface: ``forward(images (B, 3, H, W) float in [0, 1]) -> (B, out_channels, h, w)``.

    Attributes:
        out_channels: feature width.
    """

    out_channels: int = 0


class SmallCNN(ImageEncoder):
    """Trainable 4-layer CNN, stride 8, GroupNorm (batch-size independent, DDP-safe).

    Args:
        out_channels: feature width.
        width: channels of the first layer.
    """

    def __init__(self, out_channels: int = 32, width: int = 16):
        super().__init__()
        self.out_channels = out_channels

        def block(i, o, s):
            return [nn.Conv2d(i, o, 3, stride=s, padding=1), nn.GroupNorm(4, o), nn.ReLU(inplace=True)]

        self.net = nn.Sequential(*block(3, width, 2), *block(width, 2 * width, 2),
                                 *block(2 * width, out_channels, 2), nn.Conv2d(out_channels, out_channels, 3, padding=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, out_channels, ~H/8, ~W/8)."""
        return self.net(images - 0.5)


class ClipPatchEncoder(ImageEncoder):
    """Frozen CLIP ViT patch features in CLIP's joint image-text space.

    Each patch token of the last layer goes through ``post_layernorm`` and ``visual_projection``
    (the path of the class token), giving dense per-patch embeddings comparable to CLIP text
    embeddings (a MaskCLIP-like approximation, not MaskCLIP's value-path trick). Images are resized to
    ``(image_size * aspect, image_size)`` rounded to the patch size, with interpolated position
    embeddings.

    Args:
        bundle: :class:`occ_audit_ros.clip_model.ClipBundle`.
        short_side: resized height in pixels (multiple of the patch size).
    """

    def __init__(self, bundle, short_side: int | None = None):
        super().__init__()
        self.bundle = bundle
        self.vision = bundle.model.vision_model
        self.proj = bundle.model.visual_projection
        self.patch = bundle.patch_size
        self.short_side = short_side or bundle.image_size
        self.out_channels = int(bundle.model.config.projection_dim)
        self.register_buffer("mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, projection_dim, h, w) with h = short_side / patch."""
        B, _, H, W = images.shape
        h = self.short_side // self.patch
        w = max(1, round(W / H * self.short_side / self.patch))
        x = F.interpolate(images, size=(h * self.patch, w * self.patch), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        out = self.vision(pixel_values=x.to(self.proj.weight.dtype), interpolate_pos_encoding=True)
        tokens = self.vision.post_layernorm(out.last_hidden_state[:, 1:])
        return self.proj(tokens).transpose(1, 2).reshape(B, -1, h, w).float()


@dataclass
class LiftGeometry:
    """Where each voxel centre falls in each camera (precomputed once per sample).

    Attributes:
        grid: (Ncam, V, 2) float32 normalised image coordinates in [-1, 1] (grid_sample convention,
            align_corners=False: -1 = left edge of the first pixel).
        valid: (Ncam, V) bool, in front of the camera (z > min_depth) and inside the image.
        depth: (Ncam, V) float32 voxel depth along the optical axis [m].
        dims: (X, Y, Z).
    """

    grid: torch.Tensor
    valid: torch.Tensor
    depth: torch.Tensor
    dims: tuple

    def to(self, device) -> "LiftGeometry":
        """Copy to a device."""
        return LiftGeometry(self.grid.to(device), self.valid.to(device), self.depth.to(device), self.dims)


def lift_geometry(spec: VoxelGridSpec, cameras, min_depth: float = 0.5) -> LiftGeometry:
    """Project all voxel centres into the cameras.

    Args:
        spec: grid in the frame the cameras' poses are expressed in (``base_link``).
        cameras: sequence of ``(K (3, 3), T_grid_cam (4, 4), width, height)``; K for the image
            size given (any resize of the images keeps normalised coordinates valid).
        min_depth: voxels closer than this along the optical axis are invalid [m].

    Returns:
        :class:`LiftGeometry` (voxels in C order of ``spec.dims``).
    """
    centres = spec.voxel_centers(np.arange(spec.num_voxels)).astype(np.float64)
    grids, valids, depths = [], [], []
    for K, T, w, h in cameras:
        pc = transform_points(invert_transform(T), centres)
        z = pc[:, 2]
        zs = np.where(z > min_depth, z, 1.0)
        uv = (pc[:, :2] / zs[:, None]) @ np.asarray(K)[:2, :2].T + np.asarray(K)[:2, 2]
        valid = (z > min_depth) & (uv[:, 0] >= -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < h - 0.5)
        g = np.stack([(uv[:, 0] + 0.5) / w * 2 - 1, (uv[:, 1] + 0.5) / h * 2 - 1], 1)
        grids.append(np.where(valid[:, None], g, 0.0))
        valids.append(valid)
        depths.append(z)
    return LiftGeometry(torch.from_numpy(np.stack(grids)).float(), torch.from_numpy(np.stack(valids)),
                        torch.from_numpy(np.stack(depths)).float(), spec.dims)


def lift_features(feats: torch.Tensor, geom: LiftGeometry, depth: torch.Tensor | None = None,
                  voxel_size: float = 0.4) -> torch.Tensor:
    """Sample per-camera feature maps at the voxel projections and average over cameras.

    Args:
        feats: (Ncam, C, h, w) feature maps of one sample.
        geom: its :class:`LiftGeometry`.
        depth: optional (Ncam, Hd, Wd) float depth images [m along the optical axis], NaN = none;
            pooled (min) to the feature resolution before lookup.
        voxel_size: surface band half-width is ``0.87 * voxel_size`` (half a voxel diagonal).

    Returns:
        (C + NUM_DEPTH_CHANNELS, X, Y, Z) float: mean feature over the cameras that see the voxel
        (0 where none), then [fraction of cameras seeing it, free, surface, occluded evidence
        (means over cameras with a depth value), mean 1/depth].
    """
    ncam, C, h, w = feats.shape
    V = geom.grid.shape[1]
    sampled = F.grid_sample(feats, geom.grid[:, None].to(feats), mode="bilinear", align_corners=False)[:, :, 0]
    valid = geom.valid.to(feats.dtype)  # (Ncam, V)
    n = valid.sum(0)
    mean = (sampled * valid[:, None]).sum(0) / n.clamp_min(1)
    ev = torch.zeros(3, V, dtype=feats.dtype, device=feats.device)
    if depth is not None:
        d = torch.nan_to_num(depth.to(feats), nan=float("inf"))
        d = -F.adaptive_max_pool2d(-d[:, None], (h, w))  # nearest return per feature cell
        dv = F.grid_sample(d, geom.grid[:, None].to(feats), mode="nearest", align_corners=False)[:, 0, 0]
        has = torch.isfinite(dv) & geom.valid
        z = geom.depth.to(feats)
        band = 0.87 * voxel_size
        diff = torch.where(has, z - dv, torch.zeros_like(z))
        cnt = has.to(feats.dtype).sum(0).clamp_min(1)
        ev = torch.stack([((diff < -band) & has).to(feats.dtype).sum(0), ((diff.abs() <= band) & has).to(feats.dtype).sum(0),
                          ((diff > band) & has).to(feats.dtype).sum(0)]) / cnt
    inv_depth = (valid / geom.depth.to(feats).clamp_min(0.5)).sum(0) / n.clamp_min(1)
    out = torch.cat([mean, (n / ncam)[None], ev, inv_depth[None]], 0)
    return out.reshape(C + NUM_DEPTH_CHANNELS, *geom.dims)


class CameraToVoxelNet(nn.Module):
    """Images (+ depth) of one or more samples -> per-voxel embeddings F^{3D}.

    Args:
        image_encoder: an :class:`ImageEncoder` (trainable or frozen).
        embed_dim: output width C (= text embedding width).
        hidden: 3D conv width.
        voxel_size: grid voxel size [m] (depth-evidence band).
    """

    def __init__(self, image_encoder: ImageEncoder, embed_dim: int, hidden: int = 32, voxel_size: float = 0.4):
        super().__init__()
        self.image_encoder = image_encoder
        self.voxel_size = voxel_size
        cin = image_encoder.out_channels + NUM_DEPTH_CHANNELS
        self.adapt_in = nn.Conv3d(cin, hidden, 1)
        self.blocks = nn.Sequential(
            nn.Conv3d(hidden, hidden, 3, padding=1), nn.GroupNorm(4, hidden), nn.ReLU(inplace=True),
            nn.Conv3d(hidden, hidden, 3, padding=2, dilation=2), nn.GroupNorm(4, hidden), nn.ReLU(inplace=True),
            nn.Conv3d(hidden, hidden, 3, padding=1), nn.GroupNorm(4, hidden), nn.ReLU(inplace=True))
        self.out = nn.Conv3d(hidden, embed_dim, 1)

    def forward(self, images: torch.Tensor, geoms: list, depth: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            images: (B, Ncam, 3, H, W) float in [0, 1].
            geoms: B :class:`LiftGeometry` (same dims).
            depth: optional (B, Ncam, Hd, Wd) depth images [m], NaN = none.

        Returns:
            (B, X, Y, Z, C) float voxel embeddings in the grid frame (``base_link``).
        """
        B, ncam = images.shape[:2]
        feats = self.image_encoder(images.flatten(0, 1))
        feats = feats.view(B, ncam, *feats.shape[1:])
        lifted = torch.stack([lift_features(feats[b], geoms[b], None if depth is None else depth[b], self.voxel_size)
                              for b in range(B)])
        x = self.adapt_in(lifted)
        x = x + self.blocks(x)
        return self.out(x).permute(0, 2, 3, 4, 1)
