"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone, Liu; NeurIPS 2021, Eq. 3 and Alg. 1).

With A = GGᵀ, g₀ the average gradient and c = ``c`` · ‖g₀‖ (c = 0.4 as in Nash-MTL's experiments), the dual
problem over the simplex is

    w* = argmin_{w ∈ Δ} wᵀ A 1/K + c √(wᵀ A w),                                       (1)

and the update is d = K · (g₀ + (c / ‖g_w‖) g_w) / (1 + ``c``²) with g_w = Σ_k w*_k g_k: divided by 1 + ``c``²
(``rescale=1``) and multiplied by K "to match the sum loss", as both the official AuxiNash code
(AvivSham/auxinash ``methods/weight_methods.py``, ``CAGrad.cagrad`` and ``overwrite_grad``: ``newgrad *
self.n_tasks``) and the CAGrad authors' code (Cranial-XIX/CAGrad ``nyuv2/utils.py`` and ``cityscapes/utils.py``,
``overwrite_grad``: ``newgrad * 3`` / ``* 2``) do. Equivalently d = Σ_k λ_k g_k with
λ = K (1/K + c w*/‖g_w‖) / (1 + ``c``²). The factor K matters under SGD and, through Adam's ε, under Adam.

(1) is a K-dimensional convex problem; we solve it exactly (duality gap ≤ 1e-10 on the normalised problem)
by a log-barrier interior-point method: equality-constrained Newton steps on t·F(w) − Σ log w_k, t ×10 each
round, instead of a general-purpose optimiser. Task-specific heads are trained by their own losses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import GradientMethod, gradient_space_setting
from .gradients import TaskGradients
from .settings import setting


@dataclass(frozen=True)
class CAGradSettings:
    """CAGrad's hyperparameter."""

    c: float = setting(0.4, "radius of the ball around the average gradient, in units of its norm",
                       "Nash-MTL's experiments (AvivNavon/nash-mtl) and the official AuxiNash code: c = 0.4", allow_zero=True)
    gradient_space: str = gradient_space_setting("CAGrad code (Cranial-XIX/CAGrad, grad2vec of the shared "
                                                 "parameters) and the official AuxiNash code")

EPS = 1e-8  # inside the square root, as in the reference implementation


def cagrad_objective(w: np.ndarray, gram: np.ndarray, radius: float, eps: float = EPS) -> float:
    """F(w) = wᵀ A 1/K + radius · √(wᵀ A w + ε) for the Gram matrix A."""
    return float(w @ gram.mean(axis=1) + radius * np.sqrt(max(w @ gram @ w, 0.0) + eps))


def solve_cagrad(gram: np.ndarray, radius: float, gap: float = 1e-10, eps: float = EPS) -> np.ndarray:
    """Minimise ``cagrad_objective`` over the probability simplex by a barrier method (float64)."""
    k = gram.shape[0]
    gram = 0.5 * (gram + gram.T)
    linear = gram.mean(axis=1)
    w = np.full(k, 1.0 / k)

    def barrier(x: np.ndarray, t: float) -> float:
        return t * cagrad_objective(x, gram, radius, eps) - float(np.log(x).sum())

    t = 1.0
    while True:
        for _ in range(100):
            a_w = gram @ w
            norm = np.sqrt(max(w @ a_w, 0.0) + eps)  # A may be singular: round-off can make wᵀAw < 0
            gradient = t * (linear + radius * a_w / norm) - 1.0 / w
            hessian = t * radius * (gram / norm - np.outer(a_w, a_w) / norm**3) + np.diag(1.0 / w**2)
            # Newton step with 1ᵀstep = 0, in the variables z = step / w where the barrier's Hessian is O(1)
            scaled = w[:, None] * hessian * w[None, :]
            solved = np.linalg.lstsq(scaled, np.stack([w * gradient, w], axis=1), rcond=None)[0]
            nu = -(w @ solved[:, 0]) / (w @ solved[:, 1])
            step = -w * (solved[:, 0] + nu * solved[:, 1])
            decrement = -gradient @ step
            if decrement / 2 <= 1e-12:  # Newton decrement: centred to within 1e-12 of the barrier minimum
                break
            shrinking = step < 0
            s = min(1.0, 0.99 * float(np.min(-w[shrinking] / step[shrinking]))) if shrinking.any() else 1.0
            current = barrier(w, t)
            while barrier(w + s * step, t) > current - 0.25 * s * decrement and s > 1e-14:
                s *= 0.5
            if s <= 1e-14:
                break
            w = w + s * step
            w = w / w.sum()  # remove the round-off drift off the simplex
        if k / t < gap:
            return w
        t *= 10.0


class CAGrad(GradientMethod):
    """Maximise the worst task improvement within a ball around the average gradient."""

    Settings = CAGradSettings
    label = "CAGrad"
    gram_based = True  # weights_from_gram
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, c: float = CAGradSettings.c,
                 gradient_space: str = CAGradSettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        self.c = c

    def combine(self, grads: TaskGradients):
        gram = grads.gram().cpu().numpy()
        scale = float(np.linalg.norm(gram))
        if scale == 0.0:
            weights = np.full(self.n_tasks, 1.0 / self.n_tasks)
        else:
            # F(w)/scale on A/scale: the same minimiser, a well-conditioned barrier. The reference's 1e-8 terms
            # (c = alpha · √(mean A + 1e-8), √(wᵀAw + 1e-8) in the objective, λ = c / (‖g_w‖ + 1e-8)) carried over
            # to the normalised units exactly, so that λ is the reference's to round-off.
            normalised = gram / scale
            eps = EPS / scale
            radius = self.c * np.sqrt(normalised.mean() + eps)
            w = solve_cagrad(normalised, radius, eps=eps)
            lam = radius / (np.sqrt(max(w @ normalised @ w, 0.0)) + 1e-8 / np.sqrt(scale))
            weights = (np.full(self.n_tasks, 1.0 / self.n_tasks) + lam * w) / (1 + self.c**2)
        weights = self.n_tasks * weights  # the official code's ``newgrad * n_tasks`` (see the module docstring)
        weights = torch.as_tensor(weights, dtype=torch.float64, device=grads.shared.device)
        return weights, torch.ones_like(weights), {"weights": weights}
