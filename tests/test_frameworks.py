"""The twins inside Lightning and accelerate themselves (opt-in: skipped unless the frameworks
are installed, ``pip install -e ".[frameworks]"``; tests/test_amp.py emulates the same checks
without them): fp16 AMP with gradient clipping, accelerate's step_was_skipped, and
save_hyperparameters with a compiled program's class."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import optdsl
from optdsl import library

SOURCE = """
optimizer Heavy
hyper lr = 0.01 in [0, inf)
hyper a = 0.9
v = a * v - lr * g
w = w + v
"""


def _dataset():
    gen = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(16, 4, generator=gen),
                                          torch.randn(16, 1, generator=gen))


def _lightning_module():
    pl = pytest.importorskip("lightning.pytorch")

    class Model(pl.LightningModule):
        def __init__(self, fused: bool = False, optimizer_cls=None) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.lin = torch.nn.Linear(4, 1)

        def training_step(self, batch, index):
            x, y = batch
            return torch.nn.functional.mse_loss(self.lin(x), y)

        def configure_optimizers(self):
            cls = self.hparams.optimizer_cls or library.Adam
            if self.hparams.optimizer_cls is not None:
                return cls(self.parameters())
            return cls(self.parameters(), lr=0.01, fused=self.hparams.fused)

    return pl, Model


def _trainer(pl, **kwargs):
    from lightning.pytorch.plugins.precision import MixedPrecision

    # "16-mixed" with a GradScaler, as Lightning sets it up on a GPU (on a CPU-only machine
    # Trainer(precision="16-mixed") would pick bf16, which has no scaler)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    return pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, plugins=[plugin], **kwargs)


@pytest.mark.parametrize("fused", [False, True])
def test_lightning_16_mixed_with_gradient_clipping(fused, tmp_path):
    pl, Model = _lightning_module()
    trainer = _trainer(pl, gradient_clip_val=1.0, enable_checkpointing=False,
                       default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(_dataset(), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fused:  # in-step unscaling, as torch's fused Adam: Lightning refuses to clip
            with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
                trainer.fit(Model(fused), loader)
        else:
            trainer.fit(Model(fused), loader)
            assert trainer.global_step == 4


def test_lightning_save_hyperparameters_keeps_the_program_class(tmp_path):
    pl, Model = _lightning_module()
    prog = optdsl.compile(SOURCE)
    model = Model(optimizer_cls=prog.optimizer_class)
    assert model.hparams.optimizer_cls is prog.optimizer_class  # not dropped as unpicklable
    trainer = _trainer(pl, default_root_dir=tmp_path, enable_checkpointing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, torch.utils.data.DataLoader(_dataset(), batch_size=4))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    again = Model.load_from_checkpoint(path, weights_only=False)
    assert again.hparams.optimizer_cls is prog.optimizer_class


@pytest.mark.parametrize("fused", [False, True])
def test_accelerate_step_was_skipped(fused):
    pytest.importorskip("accelerate")
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    Accelerator(cpu=True)  # the state AcceleratedOptimizer reads
    for make in (library.Adam, torch.optim.Adam):
        p = torch.nn.Parameter(torch.ones(3))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        opt = AcceleratedOptimizer(make([p], lr=0.1, fused=fused), device_placement=False,
                                   scaler=scaler)
        skipped = []
        for step in range(4):
            opt.zero_grad()
            scaler.scale((p * torch.tensor([1.0, 2.0, 3.0])).sum()).backward()
            if step == 2:
                p.grad[0] = math.inf
            opt.step()
            skipped.append(opt.step_was_skipped)
        # the default: as torch's non-fused Adam (the scaler skips the step); fused=True:
        # the step is always called and skips itself, as torch's fused Adam
        assert skipped == ([False] * 4 if fused else [False, False, True, False]), make
