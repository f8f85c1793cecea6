"""IMTL, impartial multi-task learning (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang; "Towards Impartial
Multi-task Learning", ICLR 2021, Sec. 3 and Algorithms 1-3).

**IMTL-G** (gradient balance, closed form). With g_k the per-task gradients of the shared parameters and
u_k = g_k / ‖g_k‖, the shared update g = Σ_k α_k g_k with Σ_k α_k = 1 has equal projections gᵀu_k on every task:

    D = [g_1 − g_2, …, g_1 − g_K]ᵀ,   U = [u_1 − u_2, …, u_1 − u_K]ᵀ,
    α_{2..K} = g_1 Uᵀ (D Uᵀ)⁻¹,       α_1 = 1 − Σ_{k≥2} α_k.

**IMTL-L** (loss balance). Each task has a learned scale s_k, its loss becomes e^{s_k} L_k − s_k, and s_k descends
∂/∂s_k = e^{s_k} L_k − 1 (so e^{s_k} L_k is driven to 1).

There is no official code release (OpenReview lists community implementations only). We follow LibMTL
(median-research-group/LibMTL ``LibMTL/weighting/IMTL.py``), the implementation issue 32 names, which is the
paper's **hybrid** (Algorithm 3), ``mode="hybrid"`` (default):

- scales s = 0 at the start (``IMTL.py`` line 20), losses e^{s}L − s (line 23);
- α from the gradients of the *scaled* losses, e^{s_k} g_k (lines 24-34), applied to them (lines 36-39): the shared
  update is Σ_k α_k e^{s_k} g_k;
- the heads get the plain gradients of their scaled losses, e^{s_k} ∇L_k, not weighted by α (LibMTL's per-task
  ``losses[tn].backward()`` reaches each head, and only the shared parameters' ``.grad`` is reset:
  ``abstract_weighting.py`` lines 44-55, 67-74; the paper's Algorithm 1 line "update task-specific parameters with
  ∇L_t");
- s is stepped by the model's optimiser at the model's learning rate (LibMTL's weighting is a base class of its
  model, ``trainer.py`` lines 111-114, and one optimiser takes ``self.model.parameters()``, line 144): here
  through ``main_optimizer_parameters()``, a group without its own learning rate (``scale_lr`` > 0 gives it one).

We compute α from the K × K Gram matrix in float64: with n_k = ‖g_k‖, (g_1 Uᵀ)_j = M_11/n_1 − M_1j/n_j and
(D Uᵀ)_ij = M_11/n_1 − M_1j/n_j − M_i1/n_1 + M_ij/n_j (i, j ≥ 2), the same numbers LibMTL forms from the vectors.
Where D Uᵀ is singular (two tasks with parallel gradients; LibMTL's ``torch.inverse`` raises) we take the
least-squares solution (pseudo-inverse), which keeps α_1 = 1 − Σ α_k; a task with a zero gradient has u_k = 0
(LibMTL: 0/0 = NaN). Nash-MTL's ``IMTLG`` (AvivNavon/nash-mtl ``methods/weight_methods.py`` lines 671-741) adds
1e-8·I instead and is IMTL-G alone, with the heads weighted by α too (line 739, the backward of Σ α_k L_k).

``mode="gradient"``: IMTL-G alone on the raw gradients (the paper's Algorithm 1; heads unweighted, weight 1);
``mode="loss"``: IMTL-L alone (Algorithm 2: one backward of Σ_k e^{s_k} L_k, no per-task gradients). The paper
takes IMTL-G's gradients with respect to the shared feature z (Algorithm 1: "gradient of shared feature"), as
MGDA-UB does; LibMTL and Nash-MTL take them of the shared parameters (LibMTL's ``--rep_grad`` off by default),
as our default ``gradient_space="parameters"``; ``"representation"`` (the trainers' ``--representation``) is the
paper's.

``info["weights"]`` is the multiplier of each raw shared gradient g_k: α_k e^{s_k} (hybrid), α_k (gradient),
e^{s_k} (loss); ``info["alpha"]`` is α (what LibMTL's ``backward`` returns, line 40) and ``info["scales"]`` e^{s}.
The scales' gradient uses the loss values ``backward`` checks (averaged over ranks under torch.distributed), with
micro-batches their sums (one −1 per optimiser step, as one backward on the union batch's mean losses).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from .base import (BackwardResult, GradientMethod, ReadsLossValues, add_to_grad, gradient_space_setting,
                   learned_weights_group)
from .gradients import TaskGradients
from .settings import setting

LIBMTL = "LibMTL (median-research-group/LibMTL) LibMTL/weighting/IMTL.py"
MODES = ("hybrid", "gradient", "loss")


@dataclass(frozen=True)
class IMTLSettings:
    """IMTL's hyperparameters; defaults: LibMTL's IMTL (the paper's hybrid)."""

    mode: str = setting("hybrid", "'hybrid': IMTL-G on the IMTL-L-scaled losses; 'gradient': IMTL-G alone; "
                        "'loss': IMTL-L alone", LIBMTL + " (hybrid); paper Algorithms 1-3", choices=MODES)
    scale_lr: float = setting(0.0, "learning rate of the loss scales s in the model's optimiser (0: the model's own, "
                              "--lr)", "LibMTL/trainer.py line 144 (one optimiser over the model and loss_scale)",
                              allow_zero=True)
    gradient_space: str = gradient_space_setting(LIBMTL + " (rep_grad off: the shared parameters); the paper uses "
                                                 "the shared feature z (representation)")


def imtl_g_weights(gram: torch.Tensor) -> torch.Tensor:
    """α of IMTL-G from the Gram matrix M = G Gᵀ (float64): Σ α_k = 1 and (Σ α_k g_k)ᵀu_k equal for all k."""
    gram = gram.double()
    k = gram.shape[0]
    if k == 1:
        return torch.ones(1, dtype=torch.float64, device=gram.device)
    norms = gram.diagonal().clamp(min=0).sqrt()
    inverse = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))  # u_k = 0 for a zero gradient
    gu = gram * inverse[None, :]  # (g_i · u_j)
    first = gu[0, 0] - gu[0, 1:]  # g_1 Uᵀ
    du = gu[0, 0] - gu[0, 1:][None, :] - gu[1:, 0][:, None] + gu[1:, 1:]  # D Uᵀ
    try:
        rest = torch.linalg.solve(du.T, first)  # α_{2..K} = (g_1 Uᵀ)(D Uᵀ)⁻¹, i.e. (D Uᵀ)ᵀ αᵀ = (g_1 Uᵀ)ᵀ
        if not bool(torch.isfinite(rest).all()):
            raise RuntimeError("non-finite")
    except RuntimeError:  # singular D Uᵀ (parallel gradients): the least-squares α (LibMTL would raise)
        rest = torch.linalg.pinv(du.T) @ first
    return torch.cat([(1 - rest.sum()).reshape(1), rest])


class IMTL(ReadsLossValues, GradientMethod):
    """Impartial MTL: closed-form gradient balance (IMTL-G) on learned loss scales (IMTL-L)."""

    Settings = IMTLSettings
    label = "IMTL"
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task
    in_paper = False
    state_tensors = ("loss_scale",)

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, mode: str = IMTLSettings.mode,
                 scale_lr: float = IMTLSettings.scale_lr,
                 gradient_space: str = IMTLSettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        if mode not in MODES:
            raise ValueError(f"IMTL mode must be one of {MODES} (--imtl-mode), got {mode!r}")
        if not scale_lr >= 0:
            raise ValueError(f"IMTL scale_lr must be ≥ 0 (0: the model optimiser's learning rate), got {scale_lr!r}")
        self.mode = mode
        self.scale_lr = scale_lr
        #: s (IMTL-L), 0 at the start (IMTL.py line 20); a leaf the model's optimiser steps in hybrid and loss modes
        self.loss_scale = torch.nn.Parameter(torch.zeros(n_tasks, device=self.device))

    @property
    def gram_based(self) -> bool:
        """IMTL-G alone (``mode="gradient"``) is Gram-based; the hybrid and loss modes also learn the loss scales
        from the loss values, written into their ``.grad`` by ``backward`` (not served by ``weights_from_gram``)."""
        return self.mode == "gradient"

    @property
    def learns_scales(self) -> bool:
        return self.mode in ("hybrid", "loss")

    def main_optimizer_parameters(self) -> List[Dict[str, Any]]:
        return learned_weights_group(self.loss_scale, self.scale_lr) if self.learns_scales else []

    def scales(self, device=None) -> torch.Tensor:
        """e^{s} in float64 (ones in gradient mode)."""
        s = self.loss_scale.detach().double()
        scales = torch.exp(s) if self.learns_scales else torch.ones_like(s)
        return scales if device is None else scales.to(device)

    # -- the step -------------------------------------------------------------------------------------------------
    def reused_weights(self) -> Optional[torch.Tensor]:
        return self.scales().float() if self.mode == "loss" else None  # IMTL-L alone: one backward, no G

    def combine(self, grads: TaskGradients):
        scales = self.scales(grads.shared.device)
        gram = grads.gram().to(scales.device)
        alpha = imtl_g_weights(scales[:, None] * gram * scales[None, :])  # the scaled losses' gradients e^{s_k} g_k
        shared_weights = alpha * scales
        return shared_weights, scales, {"alpha": alpha, "scales": scales}

    def _add_scale_gradient(self) -> None:
        """∂/∂s_k Σ_j (e^{s_j} L_j − s_j) = e^{s_k} L_k − 1, added to ``.grad`` (hybrid and loss modes)."""
        if not self.learns_scales or self._values is None:
            return
        add_to_grad(self.loss_scale, self.scales() * self._values.detach().to(self.loss_scale.device, torch.float64) - 1.0)
        self._values = None  # the step's loss values (ReadsLossValues), used once

    def apply_gradients(self, grads, shared, specific, representation=None) -> BackwardResult:
        result = super().apply_gradients(grads, shared, specific, representation)
        self._add_scale_gradient()
        return result

    def finish_weighted(self, weights, shared, specific) -> BackwardResult:
        result = super().finish_weighted(weights, shared, specific)
        result["alpha"] = torch.ones_like(result["weights"])
        result["scales"] = weights.detach()
        self._add_scale_gradient()
        return result

