"""Uncertainty weighting, UW (Kendall, Gal, Cipolla; "Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics", CVPR 2018, Eq. 7 and Sec. 3.2).

Each task has a learned log-variance s_k = log σ_k², and the training loss is

    L = Σ_k ( L_k / (2 exp(s_k)) + s_k / 2 ),

so the model receives Σ_k w_k ∇L_k with w_k = 1 / (2 exp(s_k)) (shared parameters *and* heads: one backward of
the whole loss), and s_k receives ∂L/∂s_k = 1/2 − L_k / (2 exp(s_k)). Kendall et al. released no code; we follow
LibMTL (median-research-group/LibMTL ``LibMTL/weighting/UW.py``, the implementation issue 32 names), which is
also the loss of the MTAN code (lorenmt/mtan ``im2im_pred/utils.py`` line 168, ``--weight uncert``):

- the loss above for every task (``UW.py`` line 22; ``utils.py`` line 168): the paper's regression form. The
  paper's classification form, L_k / σ_k² + log σ_k, is used by neither, nor here;
- s initialised to −0.5 for every task (``UW.py`` line 19; mtan ``model_segnet_mtan.py`` line 75, ``logsigma =
  [-0.5, -0.5, -0.5]``). The paper states no initial value. The setting is the initial *variance*
  σ₀² = exp(s₀) (default exp(−0.5) ≈ 0.607; a float flag must be positive), so ``initial_variance=1`` is
  Nash-MTL's s₀ = 0 (AvivNavon/nash-mtl ``methods/weight_methods.py`` line 425);
- s is stepped by the model's own optimiser at the model's learning rate: LibMTL's weighting is a base class of
  its model (``LibMTL/trainer.py`` lines 111-114, ``init_param``), so ``loss_scale`` is in
  ``self.model.parameters()``, which one optimiser takes (``trainer.py`` line 144); mtan's ``logsigma`` is a model
  parameter under the one Adam (``model_segnet_mtan.py`` line 185). Here s goes through
  ``main_optimizer_parameters()`` as a parameter group without its own learning rate (so the loop's ``--lr`` and
  its scheduler apply); ``lr`` > 0 gives it its own, e.g. Nash-MTL's separate group at ``--method-params-lr``
  0.025 (``experiments/utils.py`` lines 43-47, ``experiments/nyuv2/trainer.py`` line 90). LibMTL's optimiser also
  applies its weight decay (``LibMTL/config.py`` line 28) to s; the loop's Adam has none.

``info["weights"]`` is w_k = 1 / (2 exp(s_k)), the multiplier each ∇L_k receives this step (what LibMTL's
``backward`` returns, ``UW.py`` line 24; Nash-MTL reports exp(−s_k), twice that, "not exactly task weights").

s is written to ``.grad`` from the loss values that ``backward`` checks (averaged over ranks under
torch.distributed, so every replica steps s alike), in float64 and cast to s's dtype (float32); with micro-batches
(``accumulate``) from the summed loss values, once per optimiser step, as one backward on the union batch's mean
losses would give. Nothing is learned in ``meta_update``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from .base import BackwardResult, FixedWeightMethod, ReadsLossValues, add_to_grad, learned_weights_group
from .settings import setting

LIBMTL = "LibMTL (median-research-group/LibMTL) LibMTL/weighting/UW.py"


@dataclass(frozen=True)
class UWSettings:
    """UW's hyperparameters; defaults: LibMTL's UW (= the MTAN code's ``uncert``)."""

    initial_variance: float = setting(
        math.exp(-0.5), "initial σ² = exp(s₀) of every task (s₀ = −0.5: w = 1/(2σ²) ≈ 0.82; 1.0: Nash-MTL's s₀ = 0)",
        LIBMTL + " line 19 (loss_scale = -0.5); lorenmt/mtan im2im_pred/model_segnet_mtan.py line 75")
    lr: float = setting(
        0.0, "learning rate of the log-variances in the model's optimiser (0: the model's own, --lr)",
        "LibMTL/trainer.py line 144 (one optimiser over the model and loss_scale); Nash-MTL uses 0.025 "
        "(experiments/utils.py --method-params-lr)", allow_zero=True)


class UW(ReadsLossValues, FixedWeightMethod):
    """Σ_k (L_k / (2 exp(s_k)) + s_k / 2), the log-variances s learned by the model's optimiser."""

    Settings = UWSettings
    label = "UW"
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task
    in_paper = False
    state_tensors = ("log_variance",)

    def __init__(self, n_tasks: int, main_task: int = 0, device=None,
                 initial_variance: float = UWSettings.initial_variance, lr: float = UWSettings.lr) -> None:
        super().__init__(n_tasks, main_task, device)
        if not initial_variance > 0 or not math.isfinite(initial_variance):
            raise ValueError(f"UW initial_variance must be a positive number (σ² = exp(s₀)), got {initial_variance!r}")
        if not lr >= 0:
            raise ValueError(f"UW lr must be ≥ 0 (0: the model optimiser's learning rate), got {lr!r}")
        self.lr = lr
        #: s_k = log σ_k², a leaf the model's optimiser steps (``main_optimizer_parameters``)
        self.log_variance = torch.nn.Parameter(
            torch.full((n_tasks,), math.log(initial_variance), device=self.device))

    # -- the learned log-variances: one more parameter group of the model's optimiser -------------------------
    def main_optimizer_parameters(self) -> List[Dict[str, Any]]:
        return learned_weights_group(self.log_variance, self.lr)

    def task_weights(self) -> torch.Tensor:
        return (0.5 * torch.exp(-self.log_variance)).detach()  # UW.py line 24: 1 / (2 exp(s))

    def _add_log_variance_gradient(self, values: torch.Tensor) -> None:
        """∂/∂s_k Σ_j (L_j / (2 exp(s_j)) + s_j / 2) = 1/2 − L_k / (2 exp(s_k)), added to ``.grad``."""
        s = self.log_variance.detach().double()
        add_to_grad(self.log_variance, 0.5 - 0.5 * values.detach().to(s.device, torch.float64) * torch.exp(-s))

    # -- the step: FixedWeightMethod's one backward of Σ w_k L_k, then s's gradient (the step's loss values:
    # ReadsLossValues, a micro-batch's under accumulate, their sum in backward_accumulated) ------------------------
    def finish_weighted(self, weights: torch.Tensor, shared, specific) -> BackwardResult:
        result = super().finish_weighted(weights, shared, specific)
        self._add_log_variance_gradient(self._values)
        self._values = None
        return result
