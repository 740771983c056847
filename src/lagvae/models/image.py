"""Image networks: a residual conv encoder to (mu, logvar) and a gated PixelCNN decoder conditioned on z."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

PAPER_KERNELS = (7, 7, 7, 7, 7, 5, 5, 5, 5, 3, 3, 3, 3)


def parse_kernels(text: str) -> tuple[int, ...]:
    """'7,5,3' -> (7, 5, 3); every size odd and positive, at least one layer."""
    try:
        sizes = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise ValueError(f"model.kernels must be comma-separated odd integers, got {text!r}") from None
    if not sizes or any(k <= 0 or k % 2 == 0 for k in sizes):
        raise ValueError(f"model.kernels must be comma-separated odd integers, got {text!r}")
    return sizes


class ResBlock(nn.Module):
    """conv3x3 (stride 2) -> BN -> ELU -> conv3x3 -> BN, plus a strided 1x1 conv on the skip path; ELU after the sum."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(self.body(x) + self.skip(x))


class ResNetEncoder(nn.Module):
    """q(z|x): 3 residual blocks of `channels`, each stride 2 (28 -> 14 -> 7 -> 4), then a 4x4 conv to
    `features` channels (1x1 map), ELU, and a Linear to (mu, logvar).

    Other image sizes are average-pooled to 4x4 before the last conv (a no-op at 28x28), so any size works.
    """

    def __init__(self, latent_dim: int, channels: int = 64, features: int = 512) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.blocks = nn.Sequential(ResBlock(1, channels), ResBlock(channels, channels), ResBlock(channels, channels))
        self.head = nn.Conv2d(channels, features, 4)
        self.linear = nn.Linear(features, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.latent_dim == 0:  # the latent-free model: nothing to infer, skip the convolutions
            empty = x.new_zeros(x.shape[0], 0)
            return empty, empty
        h = F.adaptive_avg_pool2d(self.blocks(x), 4)
        h = F.elu(self.head(h)).flatten(1)
        mu, logvar = self.linear(h).chunk(2, dim=-1)
        return mu, logvar


def _shift_down(x: Tensor) -> Tensor:
    """Move a feature map one row down (zeros enter at the top), so row i holds what row i-1 had."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


class GatedLayer(nn.Module):
    """One gated PixelCNN layer (van den Oord et al. 2016) with separate vertical and horizontal stacks.

    The vertical conv covers rows i-k//2 .. i (all columns within k//2); it reaches the horizontal stack only
    shifted down one row, so position (i, j) sees rows above it there. The horizontal conv covers columns
    j-k//2 .. j of row i; in the first layer (mask A) column j itself is masked out and there is no residual,
    so no output ever sees its own pixel or later ones. Together the two stacks cover every earlier pixel:
    no blind spot. z enters as a conditioning bias on both gates: tanh(a + V_a z) * sigmoid(b + V_b z).
    """

    def __init__(self, c_in: int, channels: int, kernel: int, latent_dim: int, first: bool) -> None:
        super().__init__()
        half = kernel // 2
        self.first = first
        self.half = half
        self.v_conv = nn.Conv2d(c_in, 2 * channels, (half + 1, kernel))
        self.h_conv = nn.Conv2d(c_in, 2 * channels, (1, half + 1))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.v_cond = nn.Linear(latent_dim, 2 * channels, bias=False)
        self.h_cond = nn.Linear(latent_dim, 2 * channels, bias=False)
        if first:  # mask A: the horizontal conv must not see the current pixel
            mask = torch.ones_like(self.h_conv.weight)
            mask[..., -1] = 0
            self.register_buffer("h_mask", mask, persistent=False)

    @staticmethod
    def _gate(x: Tensor, cond: Tensor) -> Tensor:
        a, b = (x + cond[:, :, None, None]).chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: Tensor, h: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        k = self.half
        v_pre = self.v_conv(F.pad(v, (k, k, k, 0)))
        weight = self.h_conv.weight * self.h_mask if self.first else self.h_conv.weight
        h_pre = F.conv2d(F.pad(h, (k, 0, 0, 0)), weight, self.h_conv.bias)
        h_pre = h_pre + self.v_to_h(_shift_down(v_pre))
        v_new = self._gate(v_pre, self.v_cond(z))
        h_new = self.h_out(self._gate(h_pre, self.h_cond(z)))
        return v_new, h_new if self.first else h + h_new


class PixelCNNDecoder(nn.Module):
    """p(x|z) = prod_ij Bernoulli(x_ij | sigmoid(logit_ij(x_<ij, z))): gated layers, ELU, 1x1 conv to one logit.

    z conditions every layer as a bias (a Linear of z added before each gate); latent_dim 0 gives an
    unconditional PixelCNN, whose log p(x) is exact.
    """

    def __init__(
        self, latent_dim: int, channels: int = 64, kernels: tuple[int, ...] = PAPER_KERNELS, skip: bool = False
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        # Skip-VAE: z also reaches the output layer, as a linear term on every logit (docs/DESIGN.md)
        self.skip = nn.Linear(latent_dim, 1, bias=False) if skip else None
        self.layers = nn.ModuleList(
            GatedLayer(1 if i == 0 else channels, channels, k, latent_dim, first=i == 0) for i, k in enumerate(kernels)
        )
        self.output = nn.Conv2d(channels, 1, 1)

    def logits(self, x: Tensor, z: Tensor) -> Tensor:
        """Bernoulli logits [N, 1, H, W] for images x [N, 1, H, W] and latents z [N, D]."""
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, z)
        logits = self.output(F.elu(h))
        return logits if self.skip is None else logits + self.skip(z)[:, :, None, None]

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) summed over pixels; x [B, 1, H, W], z [B, S, D] -> [B, S] (the batch is expanded to B*S)."""
        b, s = z.shape[:2]
        xs = x.repeat_interleave(s, dim=0)
        logits = self.logits(xs, z.reshape(b * s, z.shape[-1]))
        nll = F.binary_cross_entropy_with_logits(logits, xs, reduction="none")
        return -nll.flatten(1).sum(-1).view(b, s)

    def sample_bytes(self, x: Tensor) -> int:
        """Working memory of decoding one latent sample for every image of x without gradients (an upper estimate:
        a layer's input stacks, pre-activations, gates and outputs, about 16 maps of `channels` per pixel, fp32)."""
        channels = self.output.in_channels
        return x.shape[0] * x[0].numel() * 4 * (16 * channels + 4)

    @staticmethod
    def n_units(x: Tensor) -> Tensor:
        """Pixels in the batch: the per-unit loss denominator of the aggressive inner loop."""
        return torch.tensor(x.numel(), device=x.device)

    @torch.no_grad()
    def sample(
        self, z: Tensor, shape: tuple[int, int], *, generator: torch.Generator | None = None, progress: bool = True
    ) -> Tensor:
        """Images [N, 1, H, W] drawn pixel by pixel given z [N, D]: H*W passes, the whole batch in each."""
        h, w = shape
        x = torch.zeros(z.shape[0], 1, h, w, device=z.device)
        for i in tqdm(range(h), desc="sampling rows", disable=not progress, leave=False):
            for j in range(w):
                p = torch.sigmoid(self.logits(x, z)[:, :, i, j])
                x[:, :, i, j] = torch.bernoulli(p, generator=generator)
        return x
