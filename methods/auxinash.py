"""AuxiNash (Shamsian, Navon, Glazer, Kawaguchi, Chechik, Fetaya; ICML 2023, arXiv 2301.13501).

Update (Eq. 3 / Prop. 3.1): Δθ = Σ_k α_k g_k with α_k (Gᵀ G α)_k = p_k (``nash_solver``), the asymmetric
Nash bargaining solution for bargaining powers p; the shared gradient is then clipped to norm ``max_norm``
(1.0, as in Nash-MTL). The task-specific parameters get Σ_k α_k ∇L_k, as the official code's weighted loss
gives them.

Bargaining power (Sec. 4, Alg. 1): every ``meta_update`` call (the loop calls it every ``--meta-every`` = 25
optimiser steps by default)

    dL_V/dp = dL_V/dα · dα/dp,    dα/dp = (M + diag(p/α²))⁻¹ diag(1/α),
    dL_V/dα_k = −∇_θ L_Vᵀ H⁻¹ g_k                     (implicit differentiation through θ*(α)),

with H⁻¹ by a truncated Neumann series (3 terms, scale 1e-4, ``implicit``; ``hvp`` picks how its
Hessian-vector products are computed), the Gram matrix M and α of the
last solve, L_V the main-task loss on a meta-validation batch, and H the Hessian of Σ_k α_k L_k on a training
batch, over the shared parameters. The hypergradient is clipped to norm 1, p takes an SGD step (lr 5e-3,
momentum 0.9), is clamped at ≥ 1e-4 and rescaled to sum to K: the official code's defaults.

``p`` given and ``learn_p=False`` is the paper's fixed-p ablation (Table 8); p = 1 is Nash-MTL.

Fast mode (``fast=True``, the trainers' ``--fast``; not in the paper, issue 24) is ``gradient_space=
"representation"`` (the trainers' ``--representation``), the same computation under a second name: the K per-task
gradients are taken with respect to the shared representation z (the encoder's output, which the training loop
then hands to ``backward``) instead of the shared parameters θ, α solves the bargaining condition on the
representation Gram matrix M_z = G_z G_zᵀ, and one backward pass of Σ_k α_k L_k (through the encoder) gives every
parameter its update. The K backward passes then stop at z (they run through the task heads only), so a step costs about one
forward and one backward pass: linear scalarisation's cost. What it approximates:

* the Gram matrix: with J = ∂z/∂θ, the parameter gradients are g_θ,k = Jᵀ g_z,k and the exact method's Gram
  matrix is (M_θ)_jk = g_z,jᵀ J Jᵀ g_z,k; the fast mode replaces J Jᵀ by the identity. The two agree up to a
  factor when J Jᵀ is a multiple of the identity: one sample x through one linear shared layer without bias
  gives M_θ = ‖x‖² M_z, so α_exact = α_fast / ‖x‖ (tests/test_fast_mode.py); in general the ratios of the α_k,
  hence the direction of the update, differ too;
* the scale of α: α scales as 1/‖G‖ (see ``nash_solver``), so the fast α is on the scale of the representation
  gradients, not the parameter gradients (on Multi-MNIST ~150× larger, results/reference/fast_mode). The
  exact update Σ_k α_k g_θ,k has norm √(Σ p) ≥ 1 and is always clipped to ``max_norm``; the fast one has no
  fixed norm and is clipped only when larger. The task-specific parameters get Σ_k α_k ∇L_k on the fast
  scale (Adam is nearly invariant to a constant scale);
* the bargaining-power meta-update is unchanged (implicit differentiation over all shared parameters) but uses
  the fast α and M_z: dα/dp = (M_z + diag(p/α²))⁻¹ diag(1/α) scales with α, so the hypergradient's clipping at
  norm 1 may bind at other steps than in the exact method.

The official Nash-MTL code (AvivNavon/nash-mtl, ``methods/weight_methods.py``) has no representation variant of
Nash-MTL: its ``NashMTL.backward`` accepts ``representation`` and ignores it (only MGDA's ``params="rep"``,
MGDA-UB, uses it), and so does the official AuxiNash code; ours ignores it too, with one warning, unless
``gradient_space="representation"`` (or ``fast``) asks for it. Their cheaper option is ``update_weights_every``
(α reused between solves), which is the separate switch here (``update_weights_every``; on the other steps one
backward of Σ_k α_k L_k with the last solve's α, counted in optimiser steps). Both switches default to the exact
method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from .base import BackwardResult, GradientMethod, LossFunction, gradient_space_setting
from .gradients import TaskGradients
from . import implicit
from .implicit import HVP_MODES, MIXED_MODES, implicit_hypergradient, weighted_sum_hypergradient
from .nash_solver import CvxpyNashSolver, nash_alpha_derivative, solve_nash
from .settings import setting

SOLVERS = ("newton", "cvxpy")
OFFICIAL = "official AuxiNash code (AvivSham/auxinash), ../shared/PAPER.md 'Learning the bargaining power'"


@dataclass(frozen=True)
class AuxiNashSettings:
    """AuxiNash's hyperparameters; defaults: the paper (Sec. 4) and its official code."""

    p: Optional[Tuple[float, ...]] = setting(None, "fixed bargaining powers (one per task; None: all 1)",
                                             "paper Table 8 (fixed-p ablation); set with a script's --p", cli=False)
    learn_p: bool = setting(True, "learn p by implicit differentiation (False: keep p fixed)", "paper Alg. 1",
                            cli=False)
    max_norm: float = setting(1.0, "clip the shared update to this norm (0: no clipping)",
                              "Nash-MTL code (AvivNavon/nash-mtl, max_norm=1.0), kept by the official AuxiNash code", allow_zero=True)
    update_weights_every: int = setting(1, "steps between Nash solves; α is reused in between",
                                        "Nash-MTL code (update_weights_every=1)")
    meta_lr: float = setting(5e-3, "SGD learning rate of p", OFFICIAL)
    meta_momentum: float = setting(0.9, "SGD momentum of p", OFFICIAL, allow_zero=True)
    neumann_terms: int = setting(3, "Neumann-series terms of the inverse Hessian", OFFICIAL + " (as AuxiLearn)", allow_zero=True)
    neumann_scale: float = setting(1e-4, "Neumann-series step", OFFICIAL + " (as AuxiLearn)")
    hypergrad_clip: float = setting(1.0, "clip the hypergradient of p to this norm", OFFICIAL)
    min_p: float = setting(1e-4, "p is clamped at this value before being rescaled to sum to K", OFFICIAL)
    solver: str = setting("newton", "Nash solver: our exact Newton solve or the reference CVXPY program",
                          "ours; 'cvxpy' = the official/Nash-MTL program", choices=SOLVERS)
    hvp: Optional[str] = setting(None, "Hessian-vector products of the meta-update (None: implicit.DEFAULT_HVP_MODE)",
                                 "ours (both exact)", choices=HVP_MODES)
    fast: bool = setting(False, "fast mode: per-task gradients w.r.t. the shared representation, then one backward "
                         "of the weighted loss (an approximation: see the module docstring); the same as "
                         "gradient_space='representation'",
                         "ours (issue 24); Nash-MTL's cheaper option is update_weights_every")
    mixed_term: str = setting("gradients", "how the meta-update's mixed term is computed (same value): K plain "
                              "gradients, or the official double backward", "ours; 'double_backward' = official code",
                              choices=MIXED_MODES)
    gradient_space: str = gradient_space_setting(OFFICIAL + " (the shared parameters; its backward ignores the "
                                                 "representation it is passed)")


class AuxiNash(GradientMethod):
    """Asymmetric Nash bargaining with learned bargaining power p."""

    Settings = AuxiNashSettings
    label = "AuxiNash"
    has_meta_update = True
    state_tensors = ("p", "alpha", "gram", "momentum_buffer")
    reports_p = True  # backward's info carries p (logged as p_<task> by the training loop)
    gram_based = True  # weights_from_gram: the Nash solve reads the Gram matrix only

    def __init__(
        self,
        n_tasks: int,
        main_task: int = 0,
        device: torch.device | str | None = None,
        p: Optional[Sequence[float]] = AuxiNashSettings.p,
        learn_p: bool = AuxiNashSettings.learn_p,
        max_norm: float = AuxiNashSettings.max_norm,
        update_weights_every: int = AuxiNashSettings.update_weights_every,
        meta_lr: float = AuxiNashSettings.meta_lr,
        meta_momentum: float = AuxiNashSettings.meta_momentum,
        neumann_terms: int = AuxiNashSettings.neumann_terms,
        neumann_scale: float = AuxiNashSettings.neumann_scale,
        hypergrad_clip: float = AuxiNashSettings.hypergrad_clip,
        min_p: float = AuxiNashSettings.min_p,
        solver: str = AuxiNashSettings.solver,
        hvp: Optional[str] = AuxiNashSettings.hvp,
        fast: bool = AuxiNashSettings.fast,
        mixed_term: str = AuxiNashSettings.mixed_term,
        gradient_space: str = AuxiNashSettings.gradient_space,
    ) -> None:
        super().__init__(n_tasks, main_task, device, "representation" if fast else gradient_space)
        if solver not in SOLVERS:
            raise ValueError(f"unknown Nash solver {solver!r}; choose one of {SOLVERS}")
        if update_weights_every < 1:
            raise ValueError(f"update_weights_every must be >= 1, got {update_weights_every}")
        self.learn_p = learn_p
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.meta_lr = meta_lr
        self.meta_momentum = meta_momentum
        self.neumann_terms = neumann_terms
        self.neumann_scale = neumann_scale
        self.hypergrad_clip = hypergrad_clip
        self.min_p = min_p
        self.solver = solver
        self.mixed_term = mixed_term  # "gradients" or "double_backward" (same value; ``implicit``)
        self.fast = self.gradient_space == "representation"  # fast mode = the representation's gradients
        self.hvp = hvp  # Hessian-vector products: "reverse", "forward" or None (``implicit.DEFAULT_HVP_MODE``)
        self._cvxpy: Optional[CvxpyNashSolver] = None
        initial = torch.ones(n_tasks, dtype=torch.float64) if p is None else torch.as_tensor(p, dtype=torch.float64)
        if initial.shape != (n_tasks,) or not torch.all(initial > 0):
            raise ValueError(f"p must hold {n_tasks} positive bargaining powers, got {list(initial)}")
        self.p = self._normalise(initial)
        self.alpha = torch.ones(n_tasks, dtype=torch.float64)  # last solution, raw scale (a warm start)
        self.gram = torch.eye(n_tasks, dtype=torch.float64)  # raw Gram matrix of the last solve
        self.momentum_buffer = torch.zeros(n_tasks, dtype=torch.float64)

    def _normalise(self, p: torch.Tensor) -> torch.Tensor:
        """Clamp at ``min_p`` and rescale to sum to K (the official code's ``set_p``)."""
        p = p.clamp(min=self.min_p)
        return p / p.sum() * self.n_tasks

    # The K×K quantities live on the CPU in float64: the solve needs them there anyway (one transfer a step).
    def to(self, device: torch.device | str) -> "AuxiNash":
        self.device = torch.device(device)
        return self

    def load_state_dict(self, state: Dict) -> None:
        self.step = int(state["step"])
        for name in self.state_tensors:
            setattr(self, name, state[name].detach().cpu().double().clone())

    def reused_weights(self) -> Optional[torch.Tensor]:
        if self.step % self.update_weights_every == 0:
            return None
        return self.alpha.to(self.device)

    def combine(self, grads: TaskGradients):
        gram = grads.gram().cpu()
        if self.solver == "newton":
            alpha = solve_nash(gram, self.p, alpha0=self.alpha)
        else:  # the reference program, rebuilt whenever p has changed
            if self._cvxpy is None or not np.array_equal(self._cvxpy.p, self.p.numpy()):
                self._cvxpy = CvxpyNashSolver(self.n_tasks, self.p.numpy())
            alpha = self._cvxpy.solve(gram.numpy(), alpha0=self.alpha.numpy())
        self.gram = gram
        self.alpha = torch.from_numpy(np.asarray(alpha, dtype=np.float64))
        weights = self.alpha.to(grads.shared.device)  # float64; the base casts it for the combination
        return weights, weights, {"weights": weights}

    def backward(self, losses, shared_parameters, task_specific_parameters=(), representation=None
                 ) -> BackwardResult:
        return self._with_p(super().backward(losses, shared_parameters, task_specific_parameters, representation))

    def backward_accumulated(self) -> BackwardResult:
        return self._with_p(super().backward_accumulated())

    def weights_from_gram(self, gram: torch.Tensor, loss_values: Optional[torch.Tensor] = None) -> BackwardResult:
        return self._with_p(super().weights_from_gram(gram, loss_values))

    def _with_p(self, info: BackwardResult) -> BackwardResult:
        if self.reports_p:
            info["p"] = self.p.to(info["weights"].device, torch.float32)
        return info

    def p_hypergradient(
        self,
        compute_losses: LossFunction,
        train_batch,
        val_batch,
        shared_parameters: Iterable[torch.Tensor],
    ) -> torch.Tensor:
        """dL_V/dp (times 1/neumann_scale, see ``implicit``), float64 on the CPU, before clipping."""
        shared = list(shared_parameters)
        val_loss = compute_losses(val_batch)[self.main_task]
        if (self.hvp or implicit.DEFAULT_HVP_MODE) == "reverse":  # mixed term from K plain gradients (exact)
            d_alpha = weighted_sum_hypergradient(val_loss, lambda: compute_losses(train_batch), self.alpha, shared,
                                                 self.neumann_terms, self.neumann_scale, mixed=self.mixed_term)
        else:
            alpha = self.alpha.to(val_loss.device, val_loss.dtype).clone().requires_grad_(True)
            (d_alpha,) = implicit_hypergradient(val_loss, lambda: (alpha * compute_losses(train_batch)).sum(),
                                                shared, [alpha], self.neumann_terms, self.neumann_scale, hvp=self.hvp)
        dalpha_dp = nash_alpha_derivative(self.gram.numpy(), self.p.numpy(), self.alpha.numpy())
        return d_alpha.detach().cpu().double() @ torch.from_numpy(dalpha_dp)

    def meta_update(
        self,
        compute_losses: LossFunction,
        train_batch,
        val_batch,
        shared_parameters: Iterable[torch.Tensor],
        task_specific_parameters: Iterable[torch.Tensor] = (),
    ) -> Dict[str, torch.Tensor]:
        """One SGD step of p (module docstring); θ of the implicit differentiation is the shared parameters alone,
        as in the official code, so ``task_specific_parameters`` is not used."""
        if not self.learn_p:
            return {}
        gradient = self.p_hypergradient(compute_losses, train_batch, val_batch, shared_parameters)
        if not torch.all(torch.isfinite(gradient)):
            raise FloatingPointError(f"the hypergradient of p is not finite ({gradient.tolist()}); "
                                     "check the losses of the meta-validation batch")
        norm = gradient.norm()
        if self.hypergrad_clip > 0 and norm > self.hypergrad_clip:
            gradient = gradient * (self.hypergrad_clip / norm)
        self.momentum_buffer = self.meta_momentum * self.momentum_buffer + gradient
        self.p = self._normalise(self.p - self.meta_lr * self.momentum_buffer)
        return {"p": self.p.float(), "p_hypergradient": gradient.float()}

