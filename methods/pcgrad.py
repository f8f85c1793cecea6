"""PCGrad: projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman, Finn; "Gradient Surgery for
Multi-Task Learning", NeurIPS 2020, Alg. 1).

For each task i, in a random order over the other tasks j: if g_iᵀ g_j < 0, replace g_i by
g_i − (g_iᵀ g_j / ‖g_j‖²) g_j. The update is the sum of the projected gradients. Every projected gradient
is a combination of the original ones, so the surgery runs on the K × K Gram matrix alone and the update is
Σ_k w_k g_k with w the summed coefficients. Task-specific heads are trained by their own losses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from .base import GradientMethod, gradient_space_setting
from .gradients import TaskGradients
from .settings import setting


@dataclass(frozen=True)
class PCGradSettings:
    """PCGrad's random task order is seeded by the run."""

    seed: int = setting(0, "seed of the random order over the other tasks", "Yu et al. 2020 Alg. 1 (random order)",
                        run_setting="seed")
    gradient_space: str = gradient_space_setting("Yu et al. 2020 Alg. 1 (gradients of the shared parameters), as the "
                                                 "official AuxiNash code's PCGrad")


def pcgrad_weights(gram: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Coefficients w (K,) such that Σ_i PCGrad(g_i) = Σ_k w_k g_k, from the Gram matrix (float64, CPU)."""
    k = gram.shape[0]
    coefficients = torch.eye(k, dtype=torch.float64)  # row i: the projected g_i in the basis of the g_k
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i or gram[j, j] <= 0:
                continue
            dot = coefficients[i] @ gram[:, j]
            if dot < 0:
                coefficients[i, j] -= dot / gram[j, j]
    return coefficients.sum(dim=0)


class PCGrad(GradientMethod):
    """Sum of the per-task gradients after removing their pairwise conflicts."""

    Settings = PCGradSettings
    label = "PCGrad"
    gram_based = True  # weights_from_gram (the surgery runs on the Gram matrix)
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, seed: int = PCGradSettings.seed,
                 gradient_space: str = PCGradSettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        self.generator = torch.Generator().manual_seed(seed)

    def combine(self, grads: TaskGradients):
        weights = pcgrad_weights(grads.gram().cpu(), self.generator).to(grads.shared.device)
        return weights, torch.ones_like(weights), {"weights": weights}

    def state_dict(self) -> Dict:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
