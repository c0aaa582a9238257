"""One torch.optim.Optimizer whose param groups each run their own optimizer.

Muon is meant for the 2-D weights of hidden layers; embeddings, heads, biases and gains go
to AdamW. ``GroupedOptimizer`` keeps both in one object, as training code expects one
optimizer (one ``step``, one ``zero_grad``, one ``state_dict``, one lr scheduler):

    opt = GroupedOptimizer([
        {"params": hidden_matrices, "optimizer": library.Muon, "lr": 0.02},
        {"params": the_rest, "optimizer": library.AdamW, "lr": 3e-4, "betas": (0.9, 0.95)},
    ])

Each group's ``optimizer`` (an optimizer class: a bundled twin, ``prog.optimizer_class``, a
torch.optim class) gets that group alone; the group dicts of ``param_groups`` are the inner
optimizers' own, so lr schedulers and per-group changes reach them. ``state`` is their states
together, and ``state_dict()`` is torch's format over every group in order, each saved group
naming its optimizer (``"optimizer": "Muon"``), so a checkpoint only loads into the same
arrangement. A step first checks every optdsl group (optdsl.optim.step_checks) and only then
steps them, so a step that raises changes nothing; loading a checkpoint checks every group's
part before any is loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from optdsl.optim import checkpoint, step_checks
from optdsl.optim.torch_optimizer import DslOptimizer

OPTIMIZER_KEY = "optimizer"


class _States(Mapping):
    """The inner optimizers' states as one mapping (parameter -> its state dict)."""

    def __init__(self, owner: GroupedOptimizer) -> None:
        self._owner = owner

    def _inner_of(self, param) -> torch.optim.Optimizer | None:
        return self._owner._owner_of.get(id(param))

    def __getitem__(self, param) -> dict:
        inner = self._inner_of(param)
        if inner is None:
            raise KeyError(param)
        return inner.state[param]

    def get(self, param, default=None):
        inner = self._inner_of(param)
        return default if inner is None or param not in inner.state else inner.state[param]

    def __contains__(self, param) -> bool:
        inner = self._inner_of(param)
        return inner is not None and param in inner.state

    def __iter__(self) -> Iterator:
        for inner in self._owner.optimizers:
            yield from inner.state

    def __len__(self) -> int:
        return sum(len(inner.state) for inner in self._owner.optimizers)


class GroupedOptimizer(torch.optim.Optimizer):
    """Param groups that each name the optimizer class that steps them (see the module)."""

    def __init__(self, param_groups) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self._owner_of: dict[int, torch.optim.Optimizer] = {}
        if isinstance(param_groups, torch.Tensor) or isinstance(param_groups, Mapping):
            raise TypeError("GroupedOptimizer takes a list of param group dicts, each with "
                            "'params' and 'optimizer'")
        groups = list(param_groups)
        if not groups or not all(isinstance(g, Mapping) for g in groups):
            raise TypeError("GroupedOptimizer takes a non-empty list of param group dicts, "
                            "each with 'params' and 'optimizer' (e.g. {'params': matrices, "
                            "'optimizer': library.Muon})")
        super().__init__(groups, {})
        self.state = _States(self)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group with its own ``optimizer`` class and that class's keywords."""
        if not isinstance(param_group, Mapping):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        cls = group.pop(OPTIMIZER_KEY, None)
        if cls is None:
            raise ValueError("every param group of a GroupedOptimizer needs an 'optimizer': "
                             "the optimizer class that steps it (e.g. library.AdamW)")
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise TypeError(f"'optimizer' must be a torch.optim.Optimizer class (a bundled "
                            f"twin, prog.optimizer_class or a torch.optim class), got {cls!r}")
        if "params" not in group:
            raise ValueError("a param group needs 'params'")
        params = group.pop("params")
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for p in params:
            if id(p) in self._owner_of:
                raise ValueError("some parameters appear in more than one parameter group")
        # (one group dict, not the bare list: a group may be empty, as the share of a rank
        # under ZeroRedundancyOptimizer is when the group has fewer parameters than ranks)
        inner = cls([{"params": params}], **group)
        if len(inner.param_groups) != 1:
            raise ValueError(f"{cls.__name__} made {len(inner.param_groups)} param groups "
                             f"from one")
        self.optimizers.append(inner)
        for p in inner.param_groups[0]["params"]:
            self._owner_of[id(p)] = inner
        self.param_groups.append(inner.param_groups[0])

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizers": self.optimizers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.optimizers = state["optimizers"]
        self._owner_of = {id(p): inner for inner in self.optimizers
                          for p in inner.param_groups[0]["params"]}
        groups = [inner.param_groups[0] for inner in self.optimizers]
        super().__setstate__({"defaults": {}, "state": _States(self), "param_groups": groups})

    def __repr__(self) -> str:
        parts = [f"{type(inner).__name__}: {inner!r}" for inner in self.optimizers]
        return "GroupedOptimizer (\n" + "\n".join(parts) + "\n)"

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One step of every group's optimizer (the closure, if given, is evaluated once)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in self.optimizers:  # everything that can be checked, before any write
            if isinstance(inner, DslOptimizer):
                step_checks.prepare_groups(inner, getattr(inner, "grad_scale", None))
        for inner in self.optimizers:
            inner.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        saved = super().state_dict()
        for group, inner in zip(saved["param_groups"], self.optimizers):
            group[OPTIMIZER_KEY] = type(inner).__name__
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a GroupedOptimizer's checkpoint: every group's part is checked (by its own
        optimizer, for optdsl ones) before any is loaded, so a refused checkpoint changes
        nothing."""
        if not isinstance(state_dict, Mapping) or "param_groups" not in state_dict:
            raise ValueError("a GroupedOptimizer state_dict has 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.optimizers):
            raise ValueError(f"loaded state dict has {len(groups)} parameter groups; this "
                             f"GroupedOptimizer has {len(self.optimizers)}")
        parts = []
        for number, (group, inner) in enumerate(zip(groups, self.optimizers)):
            name = group.get(OPTIMIZER_KEY)
            if name != type(inner).__name__:
                raise ValueError(f"param group {number} of the checkpoint was stepped by "
                                 f"{name}, this one by {type(inner).__name__}")
            group = {k: v for k, v in group.items() if k != OPTIMIZER_KEY}
            ids = set(group["params"])
            part = {"state": {k: v for k, v in state_dict.get("state", {}).items() if k in ids},
                    "param_groups": [group]}
            if isinstance(inner, DslOptimizer):
                checkpoint.validate(inner, part)
            parts.append(part)
        before = [copy.deepcopy(inner.state_dict()) for inner in self.optimizers]
        done = 0
        try:
            for inner, part in zip(self.optimizers, parts):
                inner.load_state_dict(part)
                done += 1
        except BaseException:
            for inner, old in zip(self.optimizers[:done], before):
                inner.load_state_dict(old)
            raise
        finally:  # (loading makes new group dicts: ours must stay the inner optimizers' own)
            self.param_groups[:] = [inner.param_groups[0] for inner in self.optimizers]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for inner in self.optimizers:
            inner.zero_grad(set_to_none)
