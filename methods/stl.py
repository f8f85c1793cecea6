"""Single-task learning (STL): the update is the gradient of the main-task loss alone."""
from __future__ import annotations

import torch

from .base import FixedWeightMethod


class STL(FixedWeightMethod):
    """L_main: the auxiliary losses are computed (for logging) but get weight 0."""

    def task_weights(self) -> torch.Tensor:
        weights = torch.zeros(self.n_tasks, device=self.device)
        weights[self.main_task] = 1.0
        return weights
