"""Single-task learning (STL): the update is the gradient of the main-task loss alone."""
from __future__ import annotations

import torch

from .base import FixedWeightMethod


class STL(FixedWeightMethod):
    """L_main: the auxiliary losses get weight 0.

    ``needs_auxiliary_losses = False`` tells a benchmark that it may skip the auxiliaries' forward passes (the
    CIFAR benchmark then forwards the labelled images only, so that its BatchNorm statistics are those of a
    supervised baseline, as ARML's ``--alg supervised``); the skipped losses are reported as 0.
    """

    label = "STL"
    has_meta_update = False
    needs_auxiliary_losses = False

    def task_weights(self) -> torch.Tensor:
        weights = torch.zeros(self.n_tasks, device=self.device)
        weights[self.main_task] = 1.0
        return weights
