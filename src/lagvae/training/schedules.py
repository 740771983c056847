"""KL-weight schedules: pure functions of the global (outer) training step."""

from __future__ import annotations


def linear_anneal(step: int, start: float, warmup_steps: int) -> float:
    """beta(t) = min(1, start + t (1 - start) / warmup_steps): the paper's per-iteration KL annealing."""
    if warmup_steps <= 0 or start >= 1.0:
        return 1.0
    return min(1.0, start + step * (1.0 - start) / warmup_steps)
