"""The strong-Wolfe line search of closure-driven programs: torch.optim.LBFGS's (a port of
minFunc's / torch7's lswolfe.lua), decision for decision, on host numbers.

It finds a step t along a descent direction d with f(w + t d) <= f + c1 t g.d (sufficient
decrease) and |g(w + t d).d| <= -c2 g.d (curvature): it brackets an interval that holds such
a point (growing t by cubic interpolation, at most 10x a trial), then zooms into it. The
vector work is the caller's: ``objective(t)`` evaluates the closure at w + t d and returns
(loss, gradient, gradient . d), ``keep(gradient)`` makes a copy that survives the next
evaluation. Every comparison and interpolation is torch's, in float64, so on a deterministic
problem the twin takes torch's steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def cubic_interpolate(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
                      bounds: tuple[float, float] | None = None) -> float:
    """The minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to
    ``bounds`` (default: between x1 and x2); the bounds' middle when it has none."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def strong_wolfe(objective: Callable[[float], tuple[float, Any, float]],
                 keep: Callable[[Any], Any], t: float, f: float, g: Any, gtd: float,
                 d_norm: float, c1: float = 1e-4, c2: float = 0.9,
                 tolerance_change: float = 1e-9, max_ls: int = 25
                 ) -> tuple[float, Any, float, int]:
    """(loss, gradient, t, evaluations) at the accepted step; ``g`` is the gradient at t = 0
    (kept), ``d_norm`` the largest |d_i| (the bracket's width in parameter units)."""
    g = keep(g)
    f_new, g_new, gtd_new = objective(t)
    evals = 1
    if t == 0:  # lr = 0 (a warm-up's first step): nothing to search (torch's search would
        return f_new, g_new, 0.0, evals  # divide by the bracket's zero width)
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    bracket: list[float] = []
    bracket_f: list[float] = []
    bracket_g: list[Any] = []
    bracket_gtd: list[float] = []
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, keep(g_new)], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, keep(g_new)], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                              bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, keep(g_new), gtd_new
        f_new, g_new, gtd_new = objective(t)
        evals += 1
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]
    state = _Zoom(bracket, bracket_f, bracket_g, bracket_gtd)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = state.trial()
        f_new, g_new, gtd_new = objective(t)
        evals += 1
        ls_iter += 1
        done = state.update(t, f, gtd, f_new, g_new, gtd_new, c1, c2, keep)
    low = state.low
    return bracket_f[low], bracket_g[low], bracket[low], evals


class _Zoom:
    """The zoom phase: a bracket [low, high] refined until a point meets the conditions."""

    def __init__(self, bracket, bracket_f, bracket_g, bracket_gtd) -> None:
        self.bracket, self.f, self.g, self.gtd = bracket, bracket_f, bracket_g, bracket_gtd
        self.low, self.high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
        self.insuf_progress = False

    def trial(self) -> float:
        """The next t: cubic interpolation, kept 10% of the bracket away from its ends when
        it lands close to one twice (or at one)."""
        bracket = self.bracket
        t = cubic_interpolate(bracket[0], self.f[0], self.gtd[0], bracket[1], self.f[1],
                              self.gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if self.insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                self.insuf_progress = False
            else:
                self.insuf_progress = True
        else:
            self.insuf_progress = False
        return t

    def update(self, t, f, gtd, f_new, g_new, gtd_new, c1, c2, keep) -> bool:
        """Move an end of the bracket to t; True when t meets the strong Wolfe conditions."""
        low, high = self.low, self.high
        if f_new > (f + c1 * t * gtd) or f_new >= self.f[low]:
            self.bracket[high], self.f[high] = t, f_new
            self.g[high], self.gtd[high] = keep(g_new), gtd_new
            self.low, self.high = (0, 1) if self.f[0] <= self.f[1] else (1, 0)
            return False
        done = abs(gtd_new) <= -c2 * gtd
        if not done and gtd_new * (self.bracket[high] - self.bracket[low]) >= 0:
            self.bracket[high], self.f[high] = self.bracket[low], self.f[low]
            self.g[high], self.gtd[high] = self.g[low], self.gtd[low]
        self.bracket[low], self.f[low] = t, f_new
        self.g[low], self.gtd[low] = keep(g_new), gtd_new
        return done
