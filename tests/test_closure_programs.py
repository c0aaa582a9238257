"""The lectures' second-order and coordinate methods (optdsl.library: Newton, SaddleFreeNewton,
BFGS, NonlinearCG, CoordinateDescent) against references written here in NumPy (the textbook
formulas, no optimizer library), on every back end (Triton through its interpreter); and the
lectures' outcomes: Newton reaches a quadratic bowl's minimum in one step and is drawn to a
saddle, where gradient descent and saddle-free Newton leave it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from optdsl.library import BFGS, CoordinateDescent, Newton, NonlinearCG, SaddleFreeNewton
from optdsl.runtime import line_search

N = 5
RNG = np.random.default_rng(3)
_M = RNG.standard_normal((N, N))
A = _M @ _M.T / N + np.eye(N)  # symmetric positive definite
B = RNG.standard_normal(N)
C = 0.3
START = RNG.standard_normal(N)


def f_np(x):
    return 0.5 * x @ A @ x + B @ x + 0.25 * C * np.sum(x ** 4)


def grad_np(x):
    return A @ x + B + C * x ** 3


def hess_np(x):
    return A + 3 * C * np.diag(x ** 2)


@pytest.fixture(params=["numpy", "triton"])
def backend(request, monkeypatch, tmp_path):
    if request.param == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "cache"))
    return request.param


def run(cls, steps: int, backend: str = "numpy", create_graph: bool = False, **kwargs):
    """The program's iterates on f (its vector split over two tensors), one per step."""
    a, b, c = (torch.tensor(v, dtype=torch.float64) for v in (A, B, [C]))
    params = [torch.nn.Parameter(torch.tensor(START[:2])),
              torch.nn.Parameter(torch.tensor(START[2:]))]
    opt = cls(params, backend=backend, **kwargs)

    def closure():
        opt.zero_grad()
        x = torch.cat([p.reshape(-1) for p in params])
        loss = 0.5 * x @ a @ x + b @ x + 0.25 * c[0] * (x ** 4).sum()
        loss.backward(create_graph=create_graph)
        return loss

    path = []
    for _ in range(steps):
        opt.step(closure)
        path.append(np.concatenate([p.detach().numpy().reshape(-1) for p in params]))
    return path, opt


def close(path, reference, tol=1e-10):
    for k, (got, want) in enumerate(zip(path, reference)):
        assert np.max(np.abs(got - want)) <= tol * max(1.0, np.max(np.abs(want))), k


def strong_wolfe_np(x, d, t, f, g):
    """The line search the programs call, on NumPy values (its decisions are torch's:
    tests/test_closure_lbfgs.py checks them against torch.optim.LBFGS)."""
    def objective(step):
        point = x + step * d
        grad = grad_np(point)
        return f_np(point), grad, grad @ d

    _, _, t_new, _ = line_search.strong_wolfe(
        objective, lambda v: v.copy(), t, f, g, g @ d, np.max(np.abs(d)))
    return t_new


# -- Newton -------------------------------------------------------------------------------------

@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_newton_exact(backend, damping):
    path, _ = run(Newton, 3, backend, create_graph=True, damping=damping, lr=0.8)
    x, want = START.copy(), []
    for _ in range(3):
        x = x - 0.8 * np.linalg.solve(hess_np(x) + damping * np.eye(N), grad_np(x))
        want.append(x.copy())
    close(path, want)


def test_newton_cg(backend):
    path, _ = run(Newton, 3, backend, create_graph=True, solver="cg", cg_iters=3, damping=0.1)
    x, want = START.copy(), []
    for _ in range(3):
        g, h = grad_np(x), hess_np(x) + 0.1 * np.eye(N)
        d, r = np.zeros(N), -g
        p, rr = r.copy(), r @ r
        for _ in range(3):  # conjugate gradients on h d = -g, three iterations
            hp = h @ p
            alpha = rr / (p @ hp)
            d, r = d + alpha * p, r - alpha * hp
            rr, rr_old = r @ r, rr
            p = r + rr / rr_old * p
        x = x + d
        want.append(x.copy())
    close(path, want)


def test_newton_with_line_search_descends():
    path, opt = run(Newton, 4, create_graph=True, line_search_fn="strong_wolfe")
    values = [f_np(START)] + [f_np(x) for x in path]
    assert all(b <= a for a, b in itertools.pairwise(values))
    assert np.max(np.abs(grad_np(path[-1]))) < 1e-8
    assert opt.state[opt.param_groups[0]["params"][0]]["n_iter"] == 4


def test_saddle_free_newton(backend):
    path, _ = run(SaddleFreeNewton, 3, backend, create_graph=True, damping=0.2)
    x, want = START.copy(), []
    for _ in range(3):
        values, vectors = np.linalg.eigh(hess_np(x))
        absolute = vectors @ np.diag(np.abs(values)) @ vectors.T
        x = x - np.linalg.solve(absolute + 0.2 * np.eye(N), grad_np(x))
        want.append(x.copy())
    close(path, want)


# -- BFGS ---------------------------------------------------------------------------------------

def bfgs_np(steps: int, lr: float, wolfe: bool):
    x, H, want = START.copy(), np.eye(N), []
    prev_g, s, updates = None, None, 0
    for _ in range(steps):
        g = grad_np(x)
        if prev_g is not None:
            y = g - prev_g
            ys = y @ s
            if ys > 1e-10:
                if updates == 0:
                    H = ys / (y @ y) * np.eye(N)
                rho, eye = 1 / ys, np.eye(N)
                H = (eye - rho * np.outer(s, y)) @ H @ (eye - rho * np.outer(y, s)) \
                    + rho * np.outer(s, s)  # the textbook product form
                updates += 1
        d = -H @ g
        t = strong_wolfe_np(x, d, lr, f_np(x), g) if wolfe else lr
        s = t * d
        x, prev_g = x + s, g
        want.append(x.copy())
    return want


@pytest.mark.parametrize("wolfe", [False, True])
def test_bfgs(backend, wolfe):
    steps = 6 if backend == "numpy" else 3
    lr = 1.0 if wolfe else 0.3
    path, _ = run(BFGS, steps, backend, lr=lr,
                  line_search_fn="strong_wolfe" if wolfe else None)
    close(path, bfgs_np(steps, lr, wolfe), tol=1e-9)


# -- conjugate gradients ------------------------------------------------------------------------

def cg_np(steps: int, lr: float, rule: str, restart: int, wolfe: bool):
    x, want = START.copy(), []
    d = prev_g = None
    k = 0
    for _ in range(steps):
        g = grad_np(x)
        if k == 0 or k >= (restart or N):
            d, k = -g, 0
        else:
            if rule == "fletcher_reeves":
                beta = (g @ g) / (prev_g @ prev_g)
            else:
                beta = max(0.0, g @ (g - prev_g) / (prev_g @ prev_g))
            d = -g + beta * d
        if g @ d >= 0:
            d, k = -g, 0
        t = strong_wolfe_np(x, d, lr, f_np(x), g) if wolfe else lr
        x, prev_g, k = x + t * d, g, k + 1
        want.append(x.copy())
    return want


@pytest.mark.parametrize("rule,restart,wolfe", [("polak_ribiere", 0, True),
                                                 ("fletcher_reeves", 3, False),
                                                 ("polak_ribiere", 2, False)])
def test_nonlinear_cg(backend, rule, restart, wolfe):
    steps = 7 if backend == "numpy" else 3
    lr = 1.0 if wolfe else 0.1
    path, _ = run(NonlinearCG, steps, backend, lr=lr, beta_rule=rule, restart=restart,
                  line_search_fn="strong_wolfe" if wolfe else None)
    close(path, cg_np(steps, lr, rule, restart, wolfe), tol=1e-9)


# -- coordinate descent -------------------------------------------------------------------------

def splitmix_index(n: int, seed: int, k: int) -> int:
    """The documented draw of random_index: SplitMix64 of (seed, k), mod n."""
    mask = (1 << 64) - 1
    x = (seed * 0x9E3779B97F4A7C15 + k + 1) & mask
    for _ in range(2):
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        x = z ^ (z >> 31)
    return x % n


@pytest.mark.parametrize("order,rule", [("cyclic", "gradient"), ("random", "gradient"),
                                        ("cyclic", "newton"), ("random", "newton")])
def test_coordinate_descent(backend, order, rule):
    steps = 8 if backend == "numpy" else 3
    newton = rule == "newton"
    path, _ = run(CoordinateDescent, steps, backend, create_graph=newton, order=order,
                  rule=rule, lr=0.2, seed=7)
    x, want = START.copy(), []
    for k in range(steps):
        i = k % N if order == "cyclic" else splitmix_index(N, 7, k)
        g = grad_np(x)
        x = x.copy()
        x[i] -= g[i] / hess_np(x)[i, i] if newton else 0.2 * g[i]
        want.append(x)
    close(path, want)


def test_coordinate_descent_moves_one_coordinate_a_step():
    path, _ = run(CoordinateDescent, 4, lr=0.2)
    previous = START
    for k, x in enumerate(path):
        moved = np.nonzero(x != previous)[0]
        assert list(moved) == [k % N]
        previous = x


def test_the_gradient_rule_needs_no_closure():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = CoordinateDescent([p], lr=0.5)
    p.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.step()
    assert p.tolist() == [0.5, 2.0]


# -- the lectures' outcomes ---------------------------------------------------------------------

def _race(cls, fn, start, steps, create_graph=True, **kwargs):
    p = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = cls([p], **kwargs)

    def closure():
        opt.zero_grad()
        loss = fn(p)
        loss.backward(create_graph=create_graph)
        return loss

    return [opt.step(closure) and p.detach().clone() for _ in range(steps)]


def test_newton_reaches_the_bowls_minimum_in_one_step():
    (x,) = _race(Newton, lambda p: p[0] ** 2 + 10 * p[1] ** 2, [-4.0, 2.0], 1)
    assert x.abs().max().item() < 1e-12


def test_newton_is_drawn_to_the_saddle_and_saddle_free_newton_leaves_it():
    saddle = lambda p: p[0] ** 2 - p[1] ** 2
    newton = _race(Newton, saddle, [-1.0, 0.5], 3)
    assert newton[-1].abs().max().item() < 1e-12  # the critical point (0, 0)
    free = _race(SaddleFreeNewton, saddle, [-1.0, 0.5], 3)
    assert abs(free[-1][0].item()) < 1e-12 and abs(free[-1][1].item()) >= 4.0  # escaping
    p = torch.nn.Parameter(torch.tensor([-1.0, 0.5], dtype=torch.float64))
    sgd = torch.optim.SGD([p], lr=0.1)
    for _ in range(30):
        sgd.zero_grad()
        saddle(p).backward()
        sgd.step()
    assert abs(p[1].item()) > 100 * 0.5  # gradient descent leaves it too
