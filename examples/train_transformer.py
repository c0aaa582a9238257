"""Train a small transformer on a synthetic task with an optimizer written in optdsl.

The task: read a sequence of random tokens and write it out reversed. The data is generated
on the fly (nothing is downloaded), the model is a 2-layer ``torch.nn.TransformerEncoder``
that labels every position, and the learning rate follows a warmup + cosine schedule from
``torch.optim.lr_scheduler`` (LambdaLR), or OneCycleLR with ``--schedule onecycle``: the
DSL optimizer is an ordinary ``torch.optim.Optimizer`` whose ``lr`` is a param-group key.

    python examples/train_transformer.py                                   # AdamW (bundled)
    python examples/train_transformer.py --optimizer examples/adabelief.opt
    python examples/train_transformer.py --optimizer Lion --lr 3e-4
    python examples/train_transformer.py --muon                            # Muon + AdamW
    python examples/train_transformer.py --optimizer examples/momentum.opt --lr 0.05 --hyper a=0.9
    python examples/train_transformer.py --device cuda --backend triton    # on a GPU
    python examples/train_transformer.py --bf16 --master-weights           # bf16 model
    python examples/train_transformer.py --bf16 --stochastic-rounding --state-dtype bf16

It prints the mean training loss and the held-out token accuracy after each epoch. The
default run (600 steps) takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import time

import torch
from torch import nn

import optdsl
from optdsl import library
from optdsl.optim.grouped import GroupedOptimizer


# -- the task -------------------------------------------------------------------------------------
def reverse_batch(batch: int, length: int, vocab: int, generator: torch.Generator,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences and the same sequences reversed."""
    x = torch.randint(0, vocab, (batch, length), generator=generator)
    return x.to(device), x.flip(1).to(device)


class Reverser(nn.Module):
    """Token and position embeddings, a transformer encoder, a linear read-out per position."""

    def __init__(self, vocab: int, length: int, d_model: int = 64, heads: int = 4,
                 layers: int = 2, ff: int = 128) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(length, d_model) * 0.1)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.tok(x) + self.pos)))


# -- the optimizer --------------------------------------------------------------------------------
def load_optimizer_program(spec: str) -> optdsl.Program:
    """A bundled optimizer's name (``AdamW``, ``Lion``, ...) or a path to a ``.opt`` file."""
    if spec.endswith(".opt") or os.path.sep in spec or os.path.exists(spec):
        return optdsl.load(spec)
    names = {name.lower(): name for name in library.PROGRAMS}
    if spec.lower() not in names:
        raise SystemExit(f"unknown optimizer {spec!r}: give a .opt file or one of "
                         f"{', '.join(library.PROGRAMS)}")
    return library.program(names[spec.lower()])


def parse_hypers(pairs: list[str]) -> dict:
    """``["a=0.9", "betas=(0.9, 0.98)"]`` -> ``{"a": 0.9, "betas": (0.9, 0.98)}``."""
    hypers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--hyper expects NAME=VALUE, got {pair!r}")
        hypers[name.strip()] = ast.literal_eval(value.strip())
    return hypers


def make_optimizer(prog: optdsl.Program, model: nn.Module, lr: float, weight_decay: float,
                   backend: str, **hypers) -> torch.optim.Optimizer:
    """Two param groups, as usual for transformers: weight decay on the matrices only.

    ``weight_decay`` is passed only when the program declares it, so any program with an
    ``lr`` works; ``hypers`` go to the constructor as they are.
    """
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups: list[dict] = [{"params": matrices}, {"params": others}]
    if "weight_decay" in prog.hypers:
        groups[0]["weight_decay"] = weight_decay
        groups[1]["weight_decay"] = 0.0
    return prog.optimizer(groups, lr=lr, backend=backend, **hypers)


def make_muon_optimizer(model: nn.Module, lr: float, muon_lr: float, weight_decay: float,
                        backend: str, **hypers) -> torch.optim.Optimizer:
    """Muon as it is used: for the 2-D weights of the hidden layers (the encoder's), with
    AdamW for the embeddings, the read-out head, biases and norms; one optimizer object
    (GroupedOptimizer: one program per param group). ``hypers`` go to Muon."""
    hidden = [p for name, p in model.named_parameters()
              if name.startswith("encoder.") and p.dim() == 2]
    ids = {id(p) for p in hidden}
    others = [p for p in model.parameters() if id(p) not in ids]
    return GroupedOptimizer([
        {"params": hidden, "optimizer": library.Muon, "lr": muon_lr,
         "weight_decay": weight_decay, "backend": backend, **hypers},
        {"params": others, "optimizer": library.AdamW, "lr": lr, "weight_decay": 0.0,
         "backend": backend},
    ])


def make_scheduler(opt: torch.optim.Optimizer, kind: str, steps: int, lr: float):
    if kind == "onecycle":
        # OneCycleLR also cycles beta1 (or momentum) when the optimizer has one
        cycle = "betas" in opt.defaults or "momentum" in opt.defaults
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                   cycle_momentum=cycle)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:  # linear warmup, then cosine down to 0
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "param": "param"}


def precision_options(args: argparse.Namespace) -> dict:
    """The optimizer's mixed-precision keywords the flags ask for."""
    options: dict = {}
    if args.master_weights:
        options["master_weights"] = True
    if args.stochastic_rounding:
        options["stochastic_rounding"] = True
    if args.state_dtype:
        options["state_dtype"] = STATE_DTYPES[args.state_dtype]
    return options


# -- training -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
    parser.add_argument("--epochs", type=int, default=6,
                        help="how many times the loss is reported (default 6)")
    parser.add_argument("--optimizer", default="AdamW",
                        help="a bundled optimizer (AdamW, Adam, Lion, ...) or a .opt file")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--muon", action="store_true",
                        help="Muon for the hidden layers' matrices and AdamW (--lr) for the "
                             "rest, in one optimizer; --hyper then goes to Muon")
    parser.add_argument("--muon-lr", type=float, default=0.02,
                        help="Muon's peak learning rate with --muon (default 0.02)")
    parser.add_argument("--weight-decay", type=float, default=0.01,
                        help="for the weight matrices, if the optimizer has weight_decay")
    parser.add_argument("--hyper", action="append", default=[], metavar="NAME=VALUE",
                        help="any other hyperparameter of the program, e.g. --hyper a=0.9 "
                             "or --hyper 'betas=(0.9, 0.98)' (repeatable)")
    parser.add_argument("--schedule", choices=["cosine", "onecycle"], default="cosine",
                        help="warmup + cosine (LambdaLR, default) or OneCycleLR")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "triton"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=10, help="sequence length")
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 parameters and activations (optimizer state stays fp32 "
                             "unless --state-dtype says otherwise)")
    parser.add_argument("--master-weights", action="store_true",
                        help="the optimizer steps an fp32 copy of each bf16 parameter")
    parser.add_argument("--stochastic-rounding", action="store_true",
                        help="bf16 writes round up or down at random, unbiased")
    parser.add_argument("--state-dtype", choices=sorted(STATE_DTYPES),
                        help="optimizer state dtype (default fp32)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the model is small, and more "
                             "threads mostly wait on each other)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.epochs < 1:
        parser.error("--steps and --epochs must be at least 1")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch has no CUDA device")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    held_out = reverse_batch(512, args.length, args.vocab,
                             torch.Generator().manual_seed(args.seed + 1), device)

    model = Reverser(args.vocab, args.length, d_model=args.d_model).to(device)
    if args.bf16:
        model = model.to(torch.bfloat16)
    try:
        if args.muon:
            opt = make_muon_optimizer(model, args.lr, args.muon_lr, args.weight_decay,
                                      args.backend, **parse_hypers(args.hyper),
                                      **precision_options(args))
            title = "Muon + AdamW"
        else:
            prog = load_optimizer_program(args.optimizer)
            opt = make_optimizer(prog, model, args.lr, args.weight_decay, args.backend,
                                 **parse_hypers(args.hyper), **precision_options(args))
            title = prog.name
    except (optdsl.DslError, ValueError, TypeError, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 1
    sched = make_scheduler(opt, args.schedule, args.steps, args.lr)
    loss_fn = nn.CrossEntropyLoss()
    n_params = sum(p.numel() for p in model.parameters())
    precision = ", ".join(["bf16" if args.bf16 else "fp32"] + [
        name for name, on in (("master weights", args.master_weights),
                              ("stochastic rounding", args.stochastic_rounding)) if on] + (
        [f"{args.state_dtype} state"] if args.state_dtype else []))
    print(f"{title} ({args.backend} backend) on {device}, {args.schedule} schedule, "
          f"{n_params} parameters ({precision}), {args.steps} steps")

    bounds = [round(args.steps * (e + 1) / args.epochs) for e in range(args.epochs)]
    start, step, epoch = time.perf_counter(), 0, 0
    for epoch, end in enumerate(bounds, 1):
        model.train()
        total, count = 0.0, 0
        while step < end:
            x, y = reverse_batch(args.batch, args.length, args.vocab, data, device)
            loss = loss_fn(model(x).reshape(-1, args.vocab), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count, step = total + loss.item(), count + 1, step + 1
        if count == 0:
            continue
        model.eval()
        with torch.no_grad():
            accuracy = (model(held_out[0]).argmax(-1) == held_out[1]).float().mean().item()
        print(f"epoch {epoch:2d}  step {step:5d}  loss {total / count:.4f}  "
              f"held-out accuracy {accuracy:.3f}  lr {sched.get_last_lr()[0]:.2e}  "
              f"{time.perf_counter() - start:5.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
