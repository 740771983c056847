"""Every parameter's gradient as a view into one buffer, so zeroing, the global norm and the clip are one op each."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lagvae.errors import GradientsUnbound

__all__ = ["FlatGrads", "GradientsUnbound"]


class FlatGrads:
    """Binds `p.grad` of the encoder's, then the decoder's, parameters to consecutive slices of one buffer.

    Autograd accumulates into an existing `.grad` in place, so after a backward the buffer holds every
    gradient and the clip over all parameters needs no per-parameter loop. Callers must zero through
    `zero_()`, never `zero_grad(set_to_none=True)` (PyTorch's default), which unbinds the views: the next
    backward then writes fresh tensors that the optimisers step on, unclipped and unreduced, while the
    buffer goes stale. Every use of `buffer` checks the binding first and raises `GradientsUnbound`.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        self.encoder_params = list(encoder.parameters())
        self.decoder_params = list(decoder.parameters())
        params = self.encoder_params + self.decoder_params
        sizes = [p.numel() for p in params]
        first = params[0] if params else torch.empty(0)
        self._buffer = torch.zeros(sum(sizes), dtype=first.dtype, device=first.device)
        for p, view in zip(params, self._buffer.split(sizes), strict=True):
            p.grad = view.view_as(p)
        # Each network's first and last parameter stand for all of them: an optimiser's zero_grad unbinds all
        # of its parameters at once, and four pointer comparisons cost nothing next to a step.
        ends = [ps[i] for ps in (self.encoder_params, self.decoder_params) if ps for i in (0, -1)]
        self._sentinels = [(p, p.grad.data_ptr()) for p in dict.fromkeys(ends) if p.grad is not None and p.numel()]

    def check_bound(self) -> None:
        """Raise GradientsUnbound unless the sentinel parameters' .grad still view the buffer where they were bound."""
        for p, ptr in self._sentinels:
            if p.grad is None or p.grad.data_ptr() != ptr:
                raise GradientsUnbound(
                    "a parameter's .grad is no longer a view of the flat gradient buffer (was zero_grad() or "
                    "p.grad = None called? zero_grad's default set_to_none=True unbinds it), so clipping and the "
                    "all-reduce would miss the gradients the optimisers step on: zero through FlatGrads.zero_()"
                )

    @property
    def buffer(self) -> Tensor:
        """The flat gradient, once the binding is checked: the all-reduce and the clip act on it."""
        self.check_bound()
        return self._buffer

    def zero_(self) -> None:
        self.buffer.zero_()

    def clip_(self, max_norm: float) -> Tensor:
        """g <- g * min(1, max_norm / (||g|| + 1e-6)), as torch.nn.utils.clip_grad_norm_; returns ||g||."""
        buffer = self.buffer
        norm = buffer.norm()
        buffer.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))
        return norm
