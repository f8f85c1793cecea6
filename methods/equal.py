"""Equal weighting (linear scalarisation, LS): the update is the gradient of Σ_k w_k L_k, w_k = 1 by default."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from .base import FixedWeightMethod
from .settings import setting


@dataclass(frozen=True)
class EqualSettings:
    """Linear scalarisation's fixed weights."""

    weights: Optional[Tuple[float, ...]] = setting(
        None, "one non-negative weight per task (None: all 1)",
        "paper Sec. 6.2 (LS with weights (w₁, 1 − w₁), Figure 2); set with train_multimnist.py --weights", cli=False)


class Equal(FixedWeightMethod):
    """Σ_k w_k L_k: every task, main or auxiliary, with weight 1, or with fixed ``weights`` (linear
    scalarisation with a preference, e.g. (w₁, 1 − w₁) on Multi-MNIST)."""

    Settings = EqualSettings
    label = "LS"
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task

    def __init__(self, n_tasks: int, main_task: int = 0, device: torch.device | str | None = None,
                 weights: Optional[Sequence[float]] = EqualSettings.weights) -> None:
        super().__init__(n_tasks, main_task, device)
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != n_tasks or any(not w >= 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"weights must be {n_tasks} non-negative numbers, not all zero; got {weights}")
        self.weights = weights

    def task_weights(self) -> torch.Tensor:
        if self.weights is None:
            return torch.ones(self.n_tasks, device=self.device)
        return torch.tensor(self.weights, dtype=torch.float32, device=self.device)
