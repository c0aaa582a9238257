"""The lectures' training strategies for ``optdsl demo``: the Keras recipe's
``validation_split=.1``, early stopping on the validation loss, and initialisations.

- ``validation_split``: as Keras' ``model.fit(..., validation_split=.1)``, the *last* 10% of
  the training data (as given, before any shuffling) is held out and evaluated after every
  epoch; the optimizer never sees it.
- Early stopping: as Keras' ``EarlyStopping(monitor="val_loss", patience=p)``, training stops
  once the validation loss has not improved for ``p`` epochs (the weights are those of the
  last epoch, Keras' default ``restore_best_weights=False``).
- Initialisations: ``"torch"`` (PyTorch's default for ``nn.Linear``: Kaiming-uniform weights
  with a = sqrt(5), uniform biases), ``"glorot_uniform"`` (Keras' default: Glorot/Xavier
  uniform weights, zero biases), ``"orthogonal"`` (orthogonal weights, zero biases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

INITIALISATIONS = ("torch", "glorot_uniform", "orthogonal")


@dataclass
class EarlyStopping:
    """Keras' EarlyStopping(monitor="val_loss", patience=p, min_delta=0)."""

    patience: int
    best: float = math.inf
    waited: int = 0
    stopped_epoch: int | None = None
    history: list[float] = field(default_factory=list)

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch's validation loss; True when training should stop."""
        self.history.append(val_loss)
        if val_loss < self.best:
            self.best, self.waited = val_loss, 0
            return False
        self.waited += 1
        if self.waited >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False


@dataclass(frozen=True)
class Strategy:
    """How the demo trains, beyond the optimizer."""

    validation_split: float = 0.0
    patience: int | None = None  # early stopping on the validation loss (None: off)
    init: str = "torch"

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {self.validation_split}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.patience is not None and self.validation_split == 0.0:
            raise ValueError("early stopping watches the validation loss: give a "
                             "validation_split (the recipe's is 0.1)")
        if self.init not in INITIALISATIONS:
            raise ValueError(f"init must be one of {', '.join(INITIALISATIONS)}, got "
                             f"{self.init!r}")

    @property
    def is_default(self) -> bool:
        """No validation set, no early stopping, torch's initialisation: the demo as it
        always ran (its results and table unchanged)."""
        return self == Strategy()

    def early_stopping(self) -> EarlyStopping | None:
        return EarlyStopping(self.patience) if self.patience is not None else None

    def describe(self) -> str:
        """One line for the table: which strategies were used."""
        parts = []
        if self.validation_split:
            parts.append(f"validation_split={self.validation_split:g} (the last "
                         f"{100 * self.validation_split:g}% of the training set held out)")
        if self.patience is not None:
            parts.append(f"early stopping on validation loss, patience {self.patience}")
        words = {"torch": "PyTorch's default", "glorot_uniform": "Keras' default",
                 "orthogonal": "orthogonal weights"}
        parts.append(f"init={self.init} ({words[self.init]})")
        return "training: " + "; ".join(parts)


def initialize(model: nn.Module, scheme: str, seed: int = 0) -> nn.Module:
    """Re-initialise every nn.Linear of ``model`` with ``scheme`` (seeded, in place)."""
    if scheme == "torch":
        return model
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, nn.Linear):
                continue
            if scheme == "glorot_uniform":
                nn.init.xavier_uniform_(layer.weight, generator=generator)
            else:
                nn.init.orthogonal_(layer.weight, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()
    return model


def split_validation(x: torch.Tensor, y: torch.Tensor, fraction: float):
    """(x_train, y_train, x_val, y_val): the last ``fraction`` held out, as Keras does."""
    n_val = math.floor(len(x) * fraction)
    if n_val == 0:
        return x, y, x[:0], y[:0]
    return x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]



def with_validation(data, strategy: Strategy):
    """The demo's data with the validation set held out of its training part, and the
    validation set (None without a validation_split)."""
    if not strategy.validation_split:
        return data, None
    x, y, x_val, y_val = split_validation(data.x_train, data.y_train,
                                          strategy.validation_split)
    return type(data)(x, y, data.x_test, data.y_test), (x_val, y_val)


def strategy_record(strategy: Strategy | None, val_losses: list[float],
                    stopping: EarlyStopping | None) -> dict:
    """What a demo result records of its strategy."""
    if strategy is None or strategy.is_default:
        return {}
    record = {"strategy": strategy.describe(), "val_loss_curve": val_losses}
    if stopping is not None:
        record["stopped_epoch"] = stopping.stopped_epoch
    return record


def strategy_lines(results) -> list[str]:
    """The lines under the demo's table: which strategies were used, where runs stopped."""
    if not results or "strategy" not in results[0]:
        return []
    lines = ["", results[0]["strategy"]]
    stopped = [f"{r['name']} at epoch {r['stopped_epoch']}" for r in results
               if r.get("stopped_epoch") is not None]
    if any("stopped_epoch" in r for r in results):
        lines.append("early stopping: " + (", ".join(stopped) if stopped
                                           else "no run stopped early"))
    return lines
