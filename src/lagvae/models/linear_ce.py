"""The text decoder's output layer fused with its cross-entropy: -log softmax(W h)[y], in cache-sized row chunks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lagvae import draws

# Logits per row chunk without gradients: 2^21 floats (8 MiB) was the fastest of 2^17-2^23 in a one-off sweep
# on this 2-core CPU for vocabularies of 1k and 10k (smaller chunks starve the matmul).
CHUNK_LOGITS = 1 << 21
_state = threading.local()


@contextmanager
def twice_differentiable() -> Iterator[None]:
    """Use the plain (unfused) path inside, for callers that differentiate the loss's gradient (SA-VAE's SVI)."""
    previous = getattr(_state, "plain", False)
    _state.plain = True
    try:
        yield
    finally:
        _state.plain = previous


def chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_LOGITS // max(vocab_size, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward keeps the softmax (not the log-softmax) for backward, where p - onehot(y) is the logits' gradient."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, target: Tensor, ignore_index: int, keep: bool) -> Tensor:
        n, v = h.shape[0], weight.shape[0]
        rows = chunk_rows(v)
        probs = h.new_empty(n if keep else min(rows, n), v)
        nll = h.new_empty(n)
        weight_t = weight.t()
        if keep:  # the softmax is kept whole for backward, so one large matmul (the fastest) fills it
            torch.mm(h, weight_t, out=probs)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            block = probs[start:stop] if keep else torch.mm(h[start:stop], weight_t, out=probs[: stop - start])
            picked = block.gather(1, target[start:stop, None])
            peak = block.amax(1, keepdim=True)
            total = block.sub_(peak).exp_().sum(1, keepdim=True)
            nll[start:stop] = (total.log() + peak - picked).squeeze(1)
            if keep:
                block.div_(total)
        ignored = target == ignore_index
        nll.masked_fill_(ignored, 0.0)
        if keep:
            ctx.save_for_backward(h, weight, target, probs, ignored)
            ctx.spent = False
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_nll: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.spent:
            raise RuntimeError("linear_cross_entropy's backward reuses its buffer; it cannot run twice")
        ctx.spent = True
        h, weight, target, probs, ignored = ctx.saved_tensors
        # d nll_n / d logits_n = softmax_n - onehot(y_n); the saved softmax becomes that gradient in place.
        probs.scatter_add_(1, target[:, None], probs.new_full((target.shape[0], 1), -1.0))
        probs.mul_(grad_nll.masked_fill(ignored, 0.0)[:, None])
        grad_h = probs @ weight if ctx.needs_input_grad[0] else None
        grad_weight = probs.t() @ h if ctx.needs_input_grad[1] else None
        return grad_h, grad_weight, None, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """nll_n = logsumexp_v (W h_n)_v - (W h_n)_{y_n}, 0 where y_n = ignore_index; h [N, H], W [V, H] -> [N].

    Equal to F.cross_entropy(h @ W.T, y, reduction="none") up to rounding, without materialising the log-
    softmax: without gradients only one chunk of logits exists at a time, so memory does not grow with N x V.
    Its backward computes W's gradient only when W requires one. Every training update back-propagates into
    all parameters, encoder-only steps included (their clip norm spans both networks: docs/DESIGN.md,
    "Gradient clipping"), so in training it always does.
    """
    keep = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    if keep and getattr(_state, "plain", False):
        logits = h @ weight.t()
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    return _LinearCrossEntropy.apply(h.contiguous(), weight, target.contiguous(), ignore_index, keep)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, x * 1[u >= p] / (1 - p) with u ~ U(0, 1): F.dropout's distribution, drawn with torch.rand,
    which is about twice as fast as F.dropout's bernoulli_ on the CPU (docs/BENCHMARKS.md)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return x * draws.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))
