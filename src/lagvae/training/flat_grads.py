"""Every parameter's gradient as a view into one buffer, so zeroing, the global norm and the clip are one op each."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FlatGrads:
    """Binds `p.grad` of the encoder's, then the decoder's, parameters to consecutive slices of one buffer.

    Autograd accumulates into an existing `.grad` in place, so after a backward the buffer holds every
    gradient and the clip over all parameters needs no per-parameter loop. Callers must zero through
    `zero_()`, never `zero_grad(set_to_none=True)`, which would unbind the views.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        self.encoder_params = list(encoder.parameters())
        self.decoder_params = list(decoder.parameters())
        params = self.encoder_params + self.decoder_params
        sizes = [p.numel() for p in params]
        first = params[0] if params else torch.empty(0)
        self.buffer = torch.zeros(sum(sizes), dtype=first.dtype, device=first.device)
        for p, view in zip(params, self.buffer.split(sizes), strict=True):
            p.grad = view.view_as(p)
        n_enc = sum(sizes[: len(self.encoder_params)])
        self.encoder = self.buffer[:n_enc]
        self.decoder = self.buffer[n_enc:]

    def zero_(self) -> None:
        self.buffer.zero_()

    def clip_(self, max_norm: float, decoder_sq: Tensor | None = None) -> Tensor:
        """g <- g * min(1, max_norm / (||g|| + 1e-6)), as torch.nn.utils.clip_grad_norm_; returns ||g||.

        With `decoder_sq`, that squared norm stands in for the decoder's part (whose gradients were skipped).
        """
        sq = self.encoder.pow(2).sum() + decoder_sq if decoder_sq is not None else self.buffer.pow(2).sum()
        norm = sq.sqrt()
        self.buffer.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))
        return norm
