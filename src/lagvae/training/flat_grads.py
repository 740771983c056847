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

    def zero_(self) -> None:
        self.buffer.zero_()

    def clip_(self, max_norm: float) -> Tensor:
        """g <- g * min(1, max_norm / (||g|| + 1e-6)), as torch.nn.utils.clip_grad_norm_; returns ||g||."""
        norm = self.buffer.norm()
        self.buffer.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))
        return norm
