"""The examples and the user guides do what they say.

* examples/adabelief.opt and examples/adan.opt against references written by hand from the
  papers (and, for Adan, the authors' code), and every named program of docs/cookbook.md and
  examples/*.opt against torch.optim or such a reference: 40 steps of a small float64 model,
  to 1e-10.
* docs/walkthrough.md: its comparison script runs and passes, and the command output it shows
  is what the commands print.
* examples/train_transformer.py trains (the loss drops) with a tiny setting.
* examples/README.md lists every example.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import optdsl
from optdsl.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
COOKBOOK = ROOT / "docs" / "cookbook.md"
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"
STEPS = 40
TOL = 1e-10


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


# -- references: one step of each optimizer, written from the papers ------------------------------
class Reference:
    """A minimal optimizer: ``update(p, g, state, t)`` for each parameter with a gradient."""

    def __init__(self, params, **hypers) -> None:
        self.params = list(params)
        self.hypers = hypers
        self.state: dict = {}

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            st = self.state.setdefault(p, {"t": 0})
            st["t"] += 1
            self.update(p, p.grad, st, st["t"])

    def update(self, p, g, st, t) -> None:
        raise NotImplementedError


class AdaBeliefRef(Reference):
    """Zhuang et al. (2020), Algorithm 2, with decoupled weight decay."""

    def update(self, p, g, st, t) -> None:
        h = self.hypers
        lr, (b1, b2) = h.get("lr", 1e-3), h.get("betas", (0.9, 0.999))
        eps, wd = h.get("eps", 1e-16), h.get("weight_decay", 0.0)
        m = st.setdefault("m", torch.zeros_like(p))
        s = st.setdefault("s", torch.zeros_like(p))
        p.mul_(1 - lr * wd)
        m.mul_(b1).add_((1 - b1) * g)
        s.mul_(b2).add_((1 - b2) * (g - m) ** 2).add_(eps)
        p.sub_(lr * (m / (1 - b1**t)) / ((s / (1 - b2**t)).sqrt() + eps))


class AdanRef(Reference):
    """Xie et al. (2022), Algorithm 1, as the authors' single-tensor code (sail-sg/Adan,
    adan.py) computes it: betas weigh the old value, the first gradient difference is 0,
    proximal weight decay unless no_prox."""

    def update(self, p, g, st, t) -> None:
        h = self.hypers
        lr, (b1, b2, b3) = h.get("lr", 1e-3), h.get("betas", (0.98, 0.92, 0.99))
        eps, wd, no_prox = h.get("eps", 1e-8), h.get("weight_decay", 0.0), h.get("no_prox", 0)
        if t == 1:
            st.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                      exp_avg_diff=torch.zeros_like(p), neg_pre_grad=-g.clone())
        m, n, v, neg = st["exp_avg"], st["exp_avg_sq"], st["exp_avg_diff"], st["neg_pre_grad"]
        neg.add_(g)                                    # g - g_prev
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).add_(neg, alpha=1 - b2)
        neg.mul_(b2).add_(g)                           # g + beta2 (g - g_prev)
        n.mul_(b3).addcmul_(neg, neg, value=1 - b3)
        denom = n.sqrt() / math.sqrt(1 - b3**t) + eps
        if no_prox:
            p.mul_(1 - lr * wd)
        p.addcdiv_(m, denom, value=-lr / (1 - b1**t))
        p.addcdiv_(v, denom, value=-lr * b2 / (1 - b2**t))
        if not no_prox:
            p.div_(1 + lr * wd)
        neg.zero_().add_(g, alpha=-1.0)


class LionRef(Reference):
    """Chen et al. (2023), Program 1."""

    def update(self, p, g, st, t) -> None:
        h = self.hypers
        lr, (b1, b2), wd = h.get("lr", 1e-4), h.get("betas", (0.9, 0.99)), h.get("weight_decay", 0)
        m = st.setdefault("m", torch.zeros_like(p))
        update = (b1 * m + (1 - b1) * g).sign()
        p.sub_(lr * (update + wd * p))
        m.mul_(b2).add_((1 - b2) * g)


class LambRef(Reference):
    """You et al. (2020), Algorithm 2, with the trust ratio ||w|| / ||r|| (1 if either is 0)."""

    def update(self, p, g, st, t) -> None:
        h = self.hypers
        lr, (b1, b2) = h.get("lr", 1e-3), h.get("betas", (0.9, 0.999))
        eps, wd = h.get("eps", 1e-6), h.get("weight_decay", 0.0)
        m = st.setdefault("m", torch.zeros_like(p))
        v = st.setdefault("v", torch.zeros_like(p))
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + wd * p
        w_norm, r_norm = p.norm().item(), r.norm().item()
        trust = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
        p.sub_(lr * trust * r)


class Chain:
    """torch pieces run in order at each step: clipping, an optimizer, a scheduler."""

    def __init__(self, *parts: Callable[[], object]) -> None:
        self.parts = parts

    def step(self) -> None:
        for part in self.parts:
            part()


class PolyakRef:
    """SGD, and the plain mean of its iterates w_1 .. w_t (summed, divided at the end)."""

    def __init__(self, params, lr) -> None:
        self.params = list(params)
        self.sgd = torch.optim.SGD(self.params, lr=lr)
        self.sums = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self) -> None:
        self.sgd.step()
        self.t += 1
        with torch.no_grad():
            for s, p in zip(self.sums, self.params):
                s.add_(p)

    def averages(self) -> list[torch.Tensor]:
        return [s / self.t for s in self.sums]


def sgd_then(clip: Callable[[list], object]):
    def make(params, lr, **kw):
        params = list(params)
        sgd = torch.optim.SGD(params, lr=lr)
        return Chain(lambda: clip(params, **kw), sgd.step)
    return make


def sgd_with_schedule(schedule: Callable[..., object]):
    def make(params, lr, **kw):
        sgd = torch.optim.SGD(list(params), lr=lr)
        sched = schedule(sgd, lr=lr, **kw)
        return Chain(sgd.step, sched.step)
    return make


def linear_decay(opt, lr, lr_final, tau):
    def factor(i):
        a = min((i + 1) / tau, 1.0)
        return 1 - a + a * lr_final / lr
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def clip_norm(params, max_norm):
    torch.nn.utils.clip_grad_norm_(params, max_norm)


def clip_value(params, clip):
    torch.nn.utils.clip_grad_value_(params, clip)


# program name -> (reference factory (params, **hypers), the hypers both are given)
REFERENCES: dict[str, tuple[Callable, dict]] = {
    "SGD": (torch.optim.SGD, {"lr": 0.05}),
    "Momentum": (torch.optim.SGD, {"lr": 0.02, "momentum": 0.8}),
    "MomentumTorch": (torch.optim.SGD, {"lr": 0.02, "momentum": 0.8}),
    "Nesterov": (lambda ps, **h: torch.optim.SGD(ps, nesterov=True, **h),
                 {"lr": 0.02, "momentum": 0.8}),
    "NesterovTorch": (lambda ps, **h: torch.optim.SGD(ps, nesterov=True, **h),
                      {"lr": 0.02, "momentum": 0.8}),
    "AdaGrad": (torch.optim.Adagrad, {"lr": 0.1, "eps": 1e-6}),
    "RMSProp": (torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.9, "eps": 1e-6}),
    "Adam": (torch.optim.Adam, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6}),
    "AdamW": (torch.optim.AdamW,
              {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    "StepDecaySGD": (sgd_with_schedule(lambda o, lr, gamma, step_size: torch.optim.lr_scheduler
                                       .StepLR(o, step_size, gamma)),
                     {"lr": 0.1, "gamma": 0.7, "step_size": 6}),
    "ExpDecaySGD": (sgd_with_schedule(lambda o, lr, gamma: torch.optim.lr_scheduler
                                      .ExponentialLR(o, gamma)),
                    {"lr": 0.1, "gamma": 0.95}),
    "InverseTimeSGD": (sgd_with_schedule(lambda o, lr, k: torch.optim.lr_scheduler
                                         .LambdaLR(o, lambda i: 1 / (1 + k * (i + 1)))),
                       {"lr": 0.1, "k": 0.2}),
    "LinearDecaySGD": (sgd_with_schedule(linear_decay), {"lr": 0.1, "lr_final": 0.01, "tau": 25}),
    "SGDClipValue": (sgd_then(clip_value), {"lr": 0.05, "clip": 0.05}),
    "SGDClipNorm": (sgd_then(clip_norm), {"lr": 0.05, "max_norm": 0.2}),
    "ClippedSGD": (sgd_then(clip_norm), {"lr": 0.05, "max_norm": 0.2}),
    "SGDPolyak": (PolyakRef, {"lr": 0.05}),
    "Lion": (LionRef, {"lr": 3e-3, "betas": (0.8, 0.95), "weight_decay": 0.1}),
    "LAMB": (LambRef, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    "Adan": (AdanRef, {"lr": 0.02, "betas": (0.9, 0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}),
    "AdaBelief": (AdaBeliefRef, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-10}),
}


# -- the harness -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The models here are tiny: one thread is faster than two that wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).double()


def max_deviation(prog: optdsl.Program, reference: Callable, hypers: dict,
                  steps: int = STEPS) -> float:
    """Train two copies of a small float64 regression model, one with the program and one
    with the reference; the largest difference between their parameters over the run."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(32, 3, generator=gen, dtype=torch.float64)
    ours, ref = make_model(), make_model()
    opt = prog.optimizer(ours.parameters(), backend="numpy", **hypers)
    ref_opt = reference(ref.parameters(), **hypers)
    worst = 0.0
    for _ in range(steps):
        for model in (ours, ref):
            model.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
        opt.step()
        ref_opt.step()
        worst = max(worst, max((a - b).abs().max().item()
                               for a, b in zip(ours.parameters(), ref.parameters())))
    if isinstance(ref_opt, PolyakRef):  # the average, kept in the state
        for p, avg in zip(ours.parameters(), ref_opt.averages()):
            worst = max(worst, (opt.state[p]["ax"] - avg).abs().max().item())
    moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(),
                                                             make_model().parameters()))
    assert moved > 1e-3, "the parameters barely moved: the comparison would prove nothing"
    return worst


def cookbook_programs() -> dict[str, optdsl.Program]:
    programs = {}
    for source in blocks(COOKBOOK, "opt"):
        prog = optdsl.compile(source)
        if source.lstrip().startswith("optimizer"):
            assert prog.name not in programs, f"two cookbook programs named {prog.name}"
            programs[prog.name] = prog
    return programs


COOKBOOK_PROGRAMS = cookbook_programs()
EXAMPLE_PROGRAMS = {path.name: optdsl.load(path) for path in sorted(EXAMPLES.glob("*.opt"))}


# -- AdaBelief and Adan, the examples written for this page ---------------------------------------
@pytest.mark.parametrize("hypers", [
    {},
    {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-10, "weight_decay": 0.1},
    {"lr": 5e-3, "betas": (0.95, 0.9), "eps": 1e-8},
])
def test_adabelief_matches_the_paper(hypers):
    assert max_deviation(EXAMPLE_PROGRAMS["adabelief.opt"], AdaBeliefRef,
                         {"lr": 0.01} | hypers) < TOL


@pytest.mark.parametrize("hypers", [
    {},
    {"lr": 0.02, "betas": (0.9, 0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1},
    {"lr": 0.02, "betas": (0.9, 0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1, "no_prox": True},
])
def test_adan_matches_the_authors_code(hypers):
    assert max_deviation(EXAMPLE_PROGRAMS["adan.opt"], AdanRef, {"lr": 0.01} | hypers) < TOL


def test_adan_first_difference_is_zero():
    """On the first step g_prev does not exist: the difference term must be 0, not g."""
    prog = EXAMPLE_PROGRAMS["adan.opt"]
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = prog.optimizer([p], lr=0.1)
    p.grad = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    opt.step()
    assert torch.equal(opt.state[p]["exp_avg_diff"], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(opt.state[p]["pre_grad"], p.grad)


# -- every named program of the cookbook and of examples/ -----------------------------------------
def test_every_cookbook_program_has_a_reference():
    missing = sorted(set(COOKBOOK_PROGRAMS) - set(REFERENCES))
    assert not missing, f"add a reference to tests/test_examples.py for {missing}"
    for topic in ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam", "AdamW",
                  "StepDecaySGD", "ExpDecaySGD", "InverseTimeSGD", "LinearDecaySGD",
                  "SGDClipValue", "SGDClipNorm", "SGDPolyak", "Lion", "LAMB", "Adan",
                  "AdaBelief"):
        assert topic in COOKBOOK_PROGRAMS


@pytest.mark.parametrize("name", sorted(COOKBOOK_PROGRAMS))
def test_cookbook_program_matches_reference(name):
    reference, hypers = REFERENCES[name]
    assert max_deviation(COOKBOOK_PROGRAMS[name], reference, hypers) < TOL


NAMED_EXAMPLES = sorted(f for f, p in EXAMPLE_PROGRAMS.items() if p.name in REFERENCES)


@pytest.mark.parametrize("filename", NAMED_EXAMPLES)
def test_example_program_matches_reference(filename):
    prog = EXAMPLE_PROGRAMS[filename]
    reference, hypers = REFERENCES[prog.name]
    if filename == "adam.opt":  # with its L2 penalty, as torch.optim.Adam's weight_decay
        hypers = dict(hypers, weight_decay=0.1)
    assert max_deviation(prog, reference, hypers) < TOL


def test_every_example_program_is_checked():
    """Each examples/*.opt is compared with a reference, here or just below."""
    assert set(EXAMPLE_PROGRAMS) - set(NAMED_EXAMPLES) == {"momentum.opt"}


def test_the_one_line_momentum():
    """``v = a*v - lr*g; w = w + v`` (examples/momentum.opt, the cookbook's first momentum)
    is torch.optim.SGD's momentum with a constant rate."""
    one_line = "v = a*v - lr*g; w = w + v"
    assert one_line + "\n" in blocks(COOKBOOK, "opt")
    assert EXAMPLE_PROGRAMS["momentum.opt"].text.strip() == one_line
    prog = optdsl.compile(one_line)
    assert set(prog.hypers) == {"a", "lr"} and set(prog.states) == {"v"}

    def torch_sgd(params, a, lr):
        return torch.optim.SGD(params, lr=lr, momentum=a)

    assert max_deviation(prog, torch_sgd, {"a": 0.8, "lr": 0.02}) < TOL


# -- the walkthrough -------------------------------------------------------------------------------
def console_blocks(path: Path) -> list[tuple[str, str]]:
    """(command, output) of each ```console block: ``$ command`` then what it printed."""
    found = []
    for block in blocks(path, "console"):
        first, _, rest = block.partition("\n")
        assert first.startswith("$ "), block
        found.append((first[2:], rest))
    return found


def test_walkthrough_program_is_the_example():
    shown = [b for b in blocks(WALKTHROUGH, "opt") if b.startswith("optimizer AdaBelief")]
    assert shown == [(EXAMPLES / "adabelief.opt").read_text(encoding="utf-8")]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli_main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_walkthrough_commands_print_what_it_shows(capsys, monkeypatch, tmp_path):
    shown = console_blocks(WALKTHROUGH)
    commands = [c for c, _ in shown]
    assert "optdsl check examples/adabelief.opt" in commands
    assert "optdsl show examples/adabelief.opt --ir" in commands
    source = (EXAMPLES / "adabelief.opt").read_text(encoding="utf-8")
    typos = {"sqr": source.replace("(sqrt(shat) + eps)", "(sqr(shat) + eps)"),
             "epsilon": source.replace("(sqrt(shat) + eps)", "(sqrt(shat) + epsilon)")}
    checked = 0
    for command, expected in shown:
        if not command.startswith("optdsl "):
            continue
        args = command.split()[1:]
        if "examples/adabelief.opt" in args:
            monkeypatch.chdir(ROOT)
        else:  # a copy of the example with a typo, in the current directory
            assert args == ["check", "adabelief.opt"], command
            typo = "sqr" if "sqr(" in expected else "epsilon"
            (tmp_path / "adabelief.opt").write_text(typos[typo], encoding="utf-8")
            monkeypatch.chdir(tmp_path)
        code, printed = run_cli(args, capsys)
        assert code == (1 if "error:" in expected else 0), printed
        assert printed.rstrip() == expected.rstrip(), (
            f"docs/walkthrough.md shows other output for `{command}`: run it and paste "
            f"what it prints\n--- printed:\n{printed}")
        checked += 1
    assert checked == 4


def test_walkthrough_comparison_script(tmp_path, monkeypatch, capsys):
    """The walkthrough's compare_adabelief.py, run from the repository root as the page says
    (in this process, to save starting another): it passes, and prints the losses the page
    shows."""
    scripts = [b for b in blocks(WALKTHROUGH, "python") if "adabelief_reference" in b]
    assert len(scripts) == 1
    script = tmp_path / "compare_adabelief.py"
    script.write_text(scripts[0], encoding="utf-8")
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("OK")
    shown = dict(console_blocks(WALKTHROUGH))["python compare_adabelief.py"]

    def losses(text: str) -> list[str]:
        return re.findall(r"step +\d+ +loss [\d.]+", text)

    assert losses(printed) == losses(shown) and len(losses(shown)) == 4


# -- train_transformer.py -------------------------------------------------------------------------
def epoch_losses(text: str) -> list[float]:
    pattern = r"^epoch +\d+ +step +\d+ +loss ([\d.]+)"
    return [float(x) for x in re.findall(pattern, text, re.MULTILINE)]


def test_train_transformer_loss_drops(tmp_path):
    """As a user runs it: a subprocess, an .opt file for the optimizer."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_transformer.py"), "--steps", "60", "--epochs", "3",
         "--optimizer", str(EXAMPLES / "adabelief.opt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("AdaBelief (auto backend) on cpu")
    losses = epoch_losses(result.stdout)
    assert len(losses) == 3, result.stdout
    assert losses[-1] < 0.9 * losses[0], result.stdout


@pytest.fixture
def train_transformer():
    spec = importlib.util.spec_from_file_location("train_transformer",
                                                  EXAMPLES / "train_transformer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)


def test_train_transformer_options(train_transformer, capsys):
    """A bundled name, OneCycleLR, --hyper; bad choices give a message and status 1."""
    assert train_transformer.main(["--steps", "4", "--epochs", "2", "--optimizer", "adamw",
                                   "--schedule", "onecycle", "--hyper", "betas=(0.9, 0.98)",
                                   "--d-model", "16", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("AdamW (numpy backend)") and len(epoch_losses(out)) == 2
    momentum = str(EXAMPLES / "momentum.opt")
    assert train_transformer.main(["--steps", "2", "--epochs", "1", "--optimizer", momentum,
                                   "--lr", "0.05", "--hyper", "a=0.9", "--d-model", "16"]) == 0
    assert train_transformer.main(["--steps", "2", "--optimizer", momentum]) == 1
    assert "missing required hyperparameter `a`" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown optimizer"):
        train_transformer.main(["--optimizer", "NoSuchOptimizer"])


def test_train_transformer_mixed_precision(train_transformer, capsys):
    """--bf16 with each mixed-precision option: it trains, and the optimizer has them."""
    for flags, header in (
            (["--master-weights"], "(bf16, master weights)"),
            (["--stochastic-rounding", "--state-dtype", "bf16"],
             "(bf16, stochastic rounding, bf16 state)")):
        assert train_transformer.main(["--steps", "3", "--epochs", "1", "--d-model", "16",
                                       "--bf16", *flags]) == 0
        out = capsys.readouterr().out
        assert header in out.splitlines()[0] and len(epoch_losses(out)) == 1


# -- examples/README.md ----------------------------------------------------------------------------
def test_readme_lists_every_example():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for path in sorted(EXAMPLES.iterdir()):
        if path.name != "README.md" and path.is_file():
            assert f"`{path.name}`" in readme, f"examples/README.md does not list {path.name}"
