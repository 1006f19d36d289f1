"""Residual 3D U-Net (the ``ResidualUNet3D`` of pytorch-3dunet as used by Semantic Abstraction).

Facts followed (paper App. 6.2 and the released ``unet3d.py``; Lee et al. 2017 arXiv:1706.00120 residual U-Net):

* f_maps = f * 2^k for k < levels (SemAbs: f = 16, 6 levels -> 16 ... 512 channels);
* every level is an ExtResNet block: conv1 (in -> out) whose output is the residual, conv2, conv3
  without non-linearity, sum with the residual, ReLU; each conv is GroupNorm -> Conv3d(3, pad 1, no
  bias) -> ReLU ("gcr"); GroupNorm uses 8 groups, 1 group when the input has fewer than 8 channels;
* levels after the first start with a 2x max pool; the decoder upsamples with a stride-2 transposed
  convolution (kernel 3, padding 1, output size of the skip), adds the skip (summation joining) and
  applies an ExtResNet block; a final 1x1x1 convolution maps f to the output channels.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResidualUNet3D"]


class _GCR(nn.Sequential):
    """GroupNorm(in) -> Conv3d(in, out, 3, padding=1, bias=False) [-> ReLU]."""

    def __init__(self, cin: int, cout: int, groups: int, relu: bool = True) -> None:
        g = groups if cin >= groups else 1
        if cin % g:
            raise ValueError(f"{cin} channels are not divisible into {g} GroupNorm groups")
        layers: list[nn.Module] = [nn.GroupNorm(g, cin), nn.Conv3d(cin, cout, 3, padding=1, bias=False)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _ExtResBlock(nn.Module):
    """ExtResNet block: x1 = conv1(x); y = ReLU(conv3(conv2(x1)) + x1)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.conv1 = _GCR(cin, cout, groups)
        self.conv2 = _GCR(cout, cout, groups)
        self.conv3 = _GCR(cout, cout, groups, relu=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.conv1(x)
        return self.act(self.conv3(self.conv2(res)) + res)


class ResidualUNet3D(nn.Module):
    """Residual 3D U-Net, f_encode of SemAbs (paper Sec. 3.2, App. 6.2).

    Args:
        in_channels: C_in (SemAbs: 16, the per-point encoder's output).
        out_channels: C_out (SemAbs: 16 = D).
        f_maps: channels of the first level (SemAbs: 16).
        num_levels: levels (SemAbs: 6); the grid side must be divisible by 2^(levels - 1).
        num_groups: GroupNorm groups (SemAbs: 8).

    Shapes: (B, C_in, G, G, G) float -> (B, C_out, G, G, G) float.
    """

    def __init__(self, in_channels: int = 16, out_channels: int = 16, f_maps: int = 16, num_levels: int = 6,
                 num_groups: int = 8) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.num_levels = num_levels
        fm = [f_maps * 2 ** k for k in range(num_levels)]
        self.encoders = nn.ModuleList(
            [_ExtResBlock(in_channels if i == 0 else fm[i - 1], fm[i], num_groups) for i in range(num_levels)])
        self.pool = nn.MaxPool3d(2)
        rev = fm[::-1]
        self.upsamplers = nn.ModuleList(
            [nn.ConvTranspose3d(rev[i], rev[i + 1], 3, stride=2, padding=1) for i in range(num_levels - 1)])
        self.decoders = nn.ModuleList([_ExtResBlock(rev[i + 1], rev[i + 1], num_groups) for i in range(num_levels - 1)])
        self.final_conv = nn.Conv3d(fm[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, G, G, G) -> (B, C_out, G, G, G).

        Raises:
            ValueError: when a spatial side is not divisible by 2^(levels - 1).
        """
        k = 2 ** (self.num_levels - 1)
        if x.ndim != 5 or any(s % k for s in x.shape[2:]):
            raise ValueError(f"input must be (B, C, D, H, W) with sides divisible by {k}, got {tuple(x.shape)}")
        skips = []
        for i, enc in enumerate(self.encoders):
            if i:
                x = self.pool(x)
            x = enc(x)
            skips.append(x)
        skips = skips[:-1][::-1]
        for up, dec, skip in zip(self.upsamplers, self.decoders, skips):
            x = up(x, output_size=skip.shape[2:])
            x = dec(x + skip)
        return self.final_conv(x)
