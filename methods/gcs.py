"""GCS: gradient cosine similarity (Du, Czarnecki, Jayakumar, Farajtabar, Pascanu, Lakshminarayanan;
"Adapting Auxiliary Losses Using Gradient Similarity", arXiv 1812.02224, 2018, Alg. 1).

The shared update is g_main + Σ_{k ≠ main} [cos(g_main, g_k) > 0] · g_k (unweighted variant, the default),
or g_main + Σ_k max(cos(g_main, g_k), 0) · g_k (``weighted=True``), with one cosine per auxiliary over all
shared parameters, as in the official AuxiNash code. Every task-specific head is trained by its own loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import GradientMethod, gradient_space_setting
from .gradients import TaskGradients
from .settings import setting


@dataclass(frozen=True)
class GCSSettings:
    """GCS's variant."""

    weighted: bool = setting(False, "scale each auxiliary gradient by its positive cosine (False: keep or drop it)",
                             "Du et al. 2018 Alg. 1 (unweighted) and Sec. 3 (weighted); the official AuxiNash code")
    gradient_space: str = gradient_space_setting("Du et al. 2018 Alg. 1 (cosines of the shared parameters' "
                                                 "gradients), as the official AuxiNash code")


class GCS(GradientMethod):
    """Keep an auxiliary gradient only when it points into the main task's half-space."""

    Settings = GCSSettings
    label = "GCS"
    gram_based = True  # weights_from_gram (cosines from the Gram matrix)
    has_meta_update = False

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, weighted: bool = GCSSettings.weighted,
                 gradient_space: str = GCSSettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        self.weighted = weighted

    def combine(self, grads: TaskGradients):
        gram = grads.gram()  # K × K in float64 on the gradients' device: no host synchronisation
        norms = gram.diagonal().clamp(min=0).sqrt()
        cosine = gram[self.main_task] / (norms[self.main_task] * norms).clamp(min=1e-30)
        weights = cosine.clamp(min=0) if self.weighted else (cosine > 0).to(cosine.dtype)
        weights[self.main_task] = 1.0
        return weights, torch.ones_like(weights), {"weights": weights, "cosine": cosine}
