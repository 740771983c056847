"""The paper's learning-rate rule: halve on a validation plateau, reload the best model, stop after N halvings."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LRDecision:
    improved: bool  # save as the new best
    decay: bool  # reload the best and set the new rate
    stop: bool  # training is over


@dataclass
class PlateauHalving:
    """Tracks the best validation loss; after `patience` epochs without a new best (from `min_epoch` on),
    multiplies the rate by `factor`. Patience restarts after each decay; the `max_decays`-th decay stops.
    """

    lr: float
    factor: float = 0.5
    patience: int = 2
    min_epoch: int = 15
    max_decays: int = 5
    best: float = float("inf")
    bad_epochs: int = 0
    decays: int = 0

    def update(self, epoch: int, val_loss: float) -> LRDecision:
        if val_loss < self.best:
            self.best, self.bad_epochs = val_loss, 0
            return LRDecision(improved=True, decay=False, stop=False)
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience and epoch >= self.min_epoch:
            self.bad_epochs = 0
            self.decays += 1
            self.lr *= self.factor
            return LRDecision(improved=False, decay=True, stop=self.decays >= self.max_decays)
        return LRDecision(improved=False, decay=False, stop=False)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
