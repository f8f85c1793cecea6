"""OL-AUX: online auxiliary weighting (Lin, Baweja, Kantor, Held; "Adaptive Auxiliary Task Weighting for
Reinforcement Learning", NeurIPS 2019, Alg. 1).

The shared update is Σ_k w_k g_k with w_main = 1 and auxiliary weights w_k (initially 1). The weights follow
gradient descent on the main loss with respect to w over the last N steps:

    w_k ← max(0, w_k + β · Σ_{last N steps} ∇L_mainᵀ ∇L_k),

β = ``lr`` (0.05) and the clamp at 0 as in ARML's public implementation. The dot products are accumulated at
every step from the per-task gradients the step computes anyway; ``meta_update`` applies the update, so N is
the training loop's ``--meta-every``. Task-specific heads are trained by their own losses.
"""
from __future__ import annotations

import torch

from .base import GradientMethod
from .gradients import TaskGradients


class OLAUX(GradientMethod):
    """Auxiliary weights adapted online from main/auxiliary gradient agreement."""

    state_tensors = ("weights", "accumulated_dots")

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, lr: float = 0.05,
                 initial_weight: float = 1.0) -> None:
        super().__init__(n_tasks, main_task, device)
        self.lr = lr
        self.weights = torch.full((n_tasks,), float(initial_weight), device=self.device)
        self.weights[main_task] = 1.0
        self.accumulated_dots = torch.zeros(n_tasks, device=self.device)

    def combine(self, grads: TaskGradients):
        dots = grads.shared @ grads.shared[self.main_task]
        self.accumulated_dots = self.accumulated_dots.to(dots.device) + dots.detach().float()
        weights = self.weights.to(dots.device)
        return weights, torch.ones_like(weights), {"weights": weights.clone()}

    def meta_update(self, compute_losses, train_batch, val_batch, shared_parameters):
        updated = (self.weights + self.lr * self.accumulated_dots.to(self.weights.device)).clamp(min=0)
        updated[self.main_task] = 1.0
        self.weights = updated
        self.accumulated_dots = torch.zeros_like(self.accumulated_dots)
        return {"weights": self.weights.clone()}
