"""Equal weighting (linear scalarisation, LS): the update is the gradient of Σ_k L_k."""
from __future__ import annotations

import torch

from .base import FixedWeightMethod


class Equal(FixedWeightMethod):
    """Σ_k L_k: every task, main or auxiliary, with weight 1."""

    uses_main_task = False  # a multi-task method: one model serves every task

    def task_weights(self) -> torch.Tensor:
        return torch.ones(self.n_tasks, device=self.device)
