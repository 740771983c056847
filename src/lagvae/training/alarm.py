"""The live collapse alarm: the two ways a VAE's latent fails, read off the validation records as they come."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lagvae.config import EvalConfig

COLLAPSE = "collapse"
KL_WITHOUT_INFORMATION = "kl-without-information"


def collapse_alarm(history: Sequence[dict[str, Any]], e: EvalConfig) -> str | None:
    """Which alarm the last `e.alarm_epochs` validation records raise, if any.

    - "collapse": AU 0, mi_full < alarm_mi and KL < alarm_kl in each (the decoder ignores z);
    - "kl-without-information": KL > alarm_kl_spent and mi_full < alarm_ratio x KL in each (KL is paid,
      but the codes of different x overlap).
    Both read `mi_full`, the whole split's I_q: the per-minibatch `mi` is capped at log B, so a good run's
    KL of 11 nats sits beside an `mi` of 3.1.
    """
    recent = history[-e.alarm_epochs :] if e.alarm_epochs > 0 else []
    if not recent or len(recent) < e.alarm_epochs or any("mi_full" not in r for r in recent):
        return None
    if all(r["au"] == 0 and r["mi_full"] < e.alarm_mi and r["kl"] < e.alarm_kl for r in recent):
        return COLLAPSE
    if all(r["kl"] > e.alarm_kl_spent and r["mi_full"] < e.alarm_ratio * r["kl"] for r in recent):
        return KL_WITHOUT_INFORMATION
    return None


def alarm_message(kind: str, record: dict[str, Any], epochs: int, aggressive: bool | None) -> str:
    """One line: what was seen, for how long, and the remedy. `aggressive`: None for methods without an
    aggressive phase, else whether it is still on."""
    seen = f"AU {record['au']}, KL {record['kl']:.3f}, I_q {record['mi_full']:.3f} nats (whole split)"
    if kind == COLLAPSE:
        if aggressive is None:
            remedy = "try --method aggressive (or aggressive-anneal)"
        elif aggressive:
            remedy = "aggressive mode is still on: give it more epochs"
        else:
            remedy = (
                "aggressive mode has ended; a longer phase (train.aggressive.switch_on=mi_full, "
                "train.aggressive.mi_patience) or aggressive-anneal may help"
            )
        return f"posterior collapse after epoch {record['epoch']}: {seen} for {epochs} validations; {remedy}"
    lower = "a lower KL target (free bits' lambda, or beta)"
    if aggressive is None:
        remedy = f"try --method aggressive, or {lower}"
    elif aggressive:  # early in aggressive mode the encoder is still separating the codes (OMNIGLOT: KL 20 -> 2)
        remedy = f"aggressive mode is still on and may yet separate them; if it persists, try {lower}"
    else:
        remedy = f"aggressive mode has ended; {lower} may help"
    return (
        f"KL paid without information after epoch {record['epoch']}: {seen} for {epochs} validations, so codes "
        f"of different inputs overlap; {remedy}"
    )


# What each alarm means, for pages that list the epochs that raised it (the report's alarm section)
ALARM_MEANINGS = {
    COLLAPSE: (
        "Posterior collapse",
        "z is unused: no active unit, I_q and KL near 0, so the decoder models x without it.",
    ),
    KL_WITHOUT_INFORMATION: (
        "KL paid without information",
        "the KL term is paid (KL above eval.alarm_kl_spent) but I_q, the information z holds about x, is a small "
        "part of it: the codes of different inputs overlap. Not a collapse: z is in use, inefficiently.",
    ),
}


def alarm_epochs(records: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """The epochs whose validation raised each alarm, by kind (in ALARM_MEANINGS' order)."""
    unknown = {r["alarm"] for r in records if r.get("alarm") and r["alarm"] not in ALARM_MEANINGS}
    kinds = [*ALARM_MEANINGS, *sorted(unknown)]
    raised = {kind: [r["epoch"] for r in records if r.get("alarm") == kind] for kind in kinds}
    return {kind: epochs for kind, epochs in raised.items() if epochs}


def epoch_ranges(epochs: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    spans: list[list[int]] = []
    for e in epochs:
        if spans and e == spans[-1][1] + 1:
            spans[-1][1] = e
        else:
            spans.append([e, e])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
