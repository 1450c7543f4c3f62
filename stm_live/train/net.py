"""The encoder: a small fully convolutional U-Net giving one embedding per pixel.

Three resolution levels (1, 1/2, 1/4) with two 3x3 convolutions each, and a
light decoder that adds upsampled coarse features back (sums, not concats,
to keep it cheap). The receptive field is 22 px each side (2.2 nm at 0.1 nm/px),
enough to see a feature in the context of its dimer rows. With the default
training widths (8, 16, 32) a 500 x 500 input runs in about 30-40 ms in
onnxruntime on two CPU cores (``benchmarks/bench_segment.py``); (16, 32, 64),
this class's default and that of the bundled Ge and TiO2 models, takes 2-2.5x as long.

Only the trainer imports this module (it needs torch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Encoder", "receptive_field_px"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """``[N, 1, H, W] -> [N, D, H, W]`` per-pixel embeddings (any H, W).

    Inputs whose sides are not multiples of 4 are padded (reflect) inside
    and cropped back, so the output always matches the input size.
    """

    def __init__(
        self, widths: tuple[int, int, int] = (16, 32, 64), dim: int = 16, *, hypercolumn: bool = False
    ) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.widths = tuple(widths)
        self.dim = dim
        # The embedding is a 1x1 convolution of the finest features: with c1
        # channels its rank is at most c1, whatever `dim`. A hypercolumn feeds
        # it the (upsampled) features of all three levels instead.
        self.hypercolumn = hypercolumn
        self.enc1 = nn.Sequential(_block(1, c1), _block(c1, c1))
        self.enc2 = nn.Sequential(_block(c1, c2), _block(c2, c2))
        self.enc3 = nn.Sequential(_block(c2, c3), _block(c3, c3), _block(c3, c3))
        self.lat3 = nn.Conv2d(c3, c2, 1)
        self.dec2 = _block(c2, c2)
        self.lat2 = nn.Conv2d(c2, c1, 1)
        self.dec1 = _block(c1, c1)
        self.out = nn.Conv2d(c1 + c2 + c3 if hypercolumn else c1, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        pad_h = (4 - h % 4) % 4
        pad_w = (4 - w % 4) % 4
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        a = self.enc1(x)
        b = self.enc2(F.max_pool2d(a, 2))
        c = self.enc3(F.max_pool2d(b, 2))
        b = self.dec2(b + F.interpolate(self.lat3(c), scale_factor=2.0, mode="nearest"))
        a = self.dec1(a + F.interpolate(self.lat2(b), scale_factor=2.0, mode="nearest"))
        if self.hypercolumn:
            up_b = F.interpolate(b, scale_factor=2.0, mode="nearest")
            up_c = F.interpolate(c, scale_factor=4.0, mode="nearest")
            a = torch.cat([a, up_b, up_c], dim=1)
        return self.out(a)[..., :h, :w]


def receptive_field_px() -> int:
    """Receptive-field radius of :class:`Encoder` in input pixels.

    enc1: two 3x3 convs (+2 px); enc2: two convs at 1/2 (+4); enc3: three
    convs at 1/4 (+12); decoder convs at 1/2 and 1 (+2, +1); pooling offset
    (+1). A gradient probe on the untrained network gives the same 22 px
    (``tests/test_train.py``).
    """
    return 2 + 4 + 12 + 2 + 1 + 1
