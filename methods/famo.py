"""FAMO: Fast Adaptive Multitask Optimization (Liu, Liang, Liu, Stone, Liu; NeurIPS 2023).

Task logits ξ (from 0) give z = softmax(ξ); with D_k = L_k − L_k* + 1e-8 (L* = 0) and c = Σ_k z_k / D_k (a constant),
the model descends

    Σ_k z_k log D_k / c,   i.e. the update Σ_k m_k ∇L_k with m_k = z_k / (c D_k)   (Σ_k m_k = 1),

one backward pass per step (no per-task gradients: O(1) in K). After the model's step, the losses L' of the *same*
batch under the new parameters give each task's log-improvement δ_k = log D_k − log D'_k, and ξ takes one Adam step
on the gradient J_softmax(ξ)ᵀ δ = z ⊙ (δ − zᵀδ), with weight decay γ. Official code: Cranial-XIX/FAMO, whose
experiments (NYUv2, Cityscapes, CelebA, QM9) run ``methods/weight_methods.py`` class ``FAMO`` (lines 106-144); we
follow it, and name where the example ``famo.py`` at the repository's root and LibMTL's ``weighting/FAMO.py`` (a port
of it) differ:

- the weighted loss and c: ``weight_methods.py`` lines 127-133 (``famo.py`` lines 28-34); L* = ``min_losses`` = 0
  (line 119: ``set_min_losses`` is never called by the trainers);
- the update: lines 135-144 (``famo.py`` lines 36-45): δ from the losses before the step (``prev_loss``, stored by
  ``get_weighted_loss``) and after it, on the same batch, computed by the trainer after ``optimizer.step()`` under
  ``torch.no_grad()`` (``experiments/nyuv2/trainer.py`` lines 143-155; the model stays in training mode, so its
  BatchNorm statistics see the batch again). Here the loop's ``after_step`` hook does this (``needs_after_step``),
  or a user's loop calls ``update(losses_after)``;
- ξ's own Adam (not the model's optimiser: ``parameters()`` of the method is empty, so the trainers' second
  parameter group is empty too), lr ``lr`` = 0.025 = ``--method-params-lr`` (``experiments/utils.py`` lines 43-48,
  passed as ``w_lr``, lines 132-134), L2 weight decay γ = ``gamma`` (torch Adam's ``weight_decay``, line 121):
  0.001 in the NYUv2, CelebA and QM9 ``run.sh`` (and LibMTL, ``config.py`` line 74), 0.01 in Cityscapes' ``run.sh``
  (and the parser default, ``utils.py`` line 71, and ``famo.py`` line 14; the class default, line 113, is 1e-5:
  unused). We keep ξ and Adam's moments in float64 (official: float32), and write Adam's step out (torch's
  formula: β = (0.9, 0.999), ε = 1e-8, bias-corrected) so that its state is in ``state_tensors``;
- **no gradient clipping** (``max_norm`` = 0): the experiments' ``WeightMethod.backward`` calls
  ``clip_grad_norm_(shared_parameters, 1.0)`` *before* ``loss.backward()`` (lines 77-80), on the gradients that
  ``optimizer.zero_grad()`` has just cleared, so it clips nothing; ``famo.py`` clips after (lines 67-69): set
  ``max_norm=1`` for that. LibMTL does not clip;
- the whole loss is back-propagated, so the heads receive m_k ∇L_k too.

What FAMO reports: the official ``get_weighted_loss`` returns ``{"weights": z}`` (line 133), but what multiplies each
task's gradient is m_k = z_k / (c D_k). ``info["weights"]`` is m (as for every method here: the multipliers applied
to the shared parameters; they too sum to 1), ``info["z"]`` the official z, ``info["logits"]`` ξ.

A loss below L* − 1e-8 makes log D undefined (NaN in the official code): ValueError naming the task. A loss of 0
(a batch without a valid target) gives D = 1e-8, so that task takes almost all of the weight m on that step, as in
the official code. With gradient accumulation (``accumulate``) the multipliers depend on the step's summed losses,
so the per-task gradients of each micro-batch are kept (K backward passes per micro-batch) and combined once; a
plain ``backward`` is one backward pass. Under torch.distributed the loss values before and after the step are
averaged over the ranks, so every replica steps ξ alike. Nothing is learned in ``meta_update``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch

from .base import BackwardResult, WeightMethod, reduce_gradients, weighted_sum_backward
from .distributed import average_grads_, average_one, is_distributed
from .gradients import accumulation_dtype, per_task_gradients, write_grad
from .settings import setting

OFFICIAL = "Cranial-XIX/FAMO"
EPS = 1e-8  # D = L − L* + 1e-8 (weight_methods.py line 130, famo.py line 31)
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults (weight_methods.py line 121)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class FAMOSettings:
    """FAMO's hyperparameters; defaults: the official experiments'."""

    lr: float = setting(0.025, "learning rate of the task logits ξ in their own Adam",
                        OFFICIAL + " experiments/utils.py lines 43-48 (--method-params-lr 0.025), 132-134 (w_lr); "
                        "methods/weight_methods.py line 121")
    gamma: float = setting(0.001, "weight decay γ of the logits' Adam (Cityscapes' run.sh: 0.01)",
                           OFFICIAL + " experiments/{nyuv2,celeba,quantum_chemistry}/run.sh (gamma=0.001; "
                           "cityscapes/run.sh 0.01); LibMTL/config.py line 74", allow_zero=True)
    max_norm: float = setting(0.0, "clip the shared parameters' gradient norm to this (0: no clipping)",
                              OFFICIAL + " methods/weight_methods.py lines 77-80 (clips before loss.backward(): no "
                              "effect); famo.py lines 67-69 (max_norm 1.0, after)", allow_zero=True)


class FAMO(WeightMethod):
    """Balanced loss decrease with O(1) cost per step: softmax weights learned from each task's log-improvement."""

    Settings = FAMOSettings
    label = "FAMO"
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task
    in_paper = False
    needs_after_step = True  # ξ learns from the same batch's losses after the model's step
    state_tensors = ("logits", "adam_exp_avg", "adam_exp_avg_sq", "adam_steps", "previous_losses")

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, lr: float = FAMOSettings.lr,
                 gamma: float = FAMOSettings.gamma, max_norm: float = FAMOSettings.max_norm) -> None:
        super().__init__(n_tasks, main_task, device)
        for name, value in (("lr", lr), ("gamma", gamma), ("max_norm", max_norm)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"FAMO {name} must be a finite number ≥ 0 (--famo-{name.replace('_', '-')}), got "
                                 f"{value!r}")
        self.lr = float(lr)
        self.gamma = float(gamma)
        self.max_norm = float(max_norm)
        #: ξ, float64, from 0 (weight_methods.py line 120); Adam's moments and step count
        self.logits = torch.zeros(n_tasks, dtype=torch.float64, device=self.device)
        self.adam_exp_avg = torch.zeros_like(self.logits)
        self.adam_exp_avg_sq = torch.zeros_like(self.logits)
        self.adam_steps = 0
        #: the loss values the last step was taken on (``prev_loss``, line 128), until ``after_step`` uses them
        self.previous_losses: Optional[torch.Tensor] = None

    # -- the step: one backward of Σ m_k L_k ---------------------------------------------------------------------
    def multipliers(self, values: torch.Tensor):
        """(m, z): z = softmax(ξ), m_k = z_k / (c D_k) with c = Σ z / D (weight_methods.py lines 129-132)."""
        z = torch.softmax(self.logits, dim=0)
        gaps = values.detach().to(self.logits) + EPS
        c = (z / gaps).sum()
        return z / (c * gaps), z

    def _check_values(self, values: torch.Tensor, call: str) -> None:
        below = [k for k, v in enumerate(values.tolist()) if not v + EPS > 0]
        if below:
            raise ValueError(f"FAMO.{call}: the loss of task {', '.join(map(str, below))} is below −1e-8 "
                             f"({values.tolist()}): FAMO takes log(L_k + 1e-8), so its losses must be ≥ 0")

    def backward(self, losses, shared_parameters, task_specific_parameters=(), representation=None) -> BackwardResult:
        """One backward pass of Σ_k m_k L_k (the official ``loss.backward()`` of Σ z log D / c); a representation
        changes nothing and is not used."""
        values, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters,
                                                     representation)
        self._check_values(values, "backward")
        weights, _ = self.multipliers(values)
        weighted_sum_backward(losses, weights)
        average_grads_(shared + specific)  # torch.distributed: the union batch's gradient (no-op otherwise)
        return self._finish(weights, values, shared)

    def _finish(self, weights: torch.Tensor, values: torch.Tensor, shared) -> BackwardResult:
        """Clip (``max_norm``), count the step, remember its losses for ``after_step``; the result."""
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(shared, self.max_norm)
        self.step += 1
        self.previous_losses = values.detach().to(self.logits).clone()
        return BackwardResult(weights=weights.detach(), z=torch.softmax(self.logits, dim=0),
                              logits=self.logits.clone())

    # -- micro-batches: the multipliers need the step's summed losses, so the per-task gradients are kept ---------
    def accumulate(self, losses, shared_parameters, task_specific_parameters=(), representation=None) -> None:
        values, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters,
                                                     representation, call="accumulate")
        self._check_values(values, "accumulate")
        accumulation = self.start_accumulation(values, shared, specific)
        accumulation.add_gradients(per_task_gradients(losses, shared, specific))

    def backward_accumulated(self) -> BackwardResult:
        accumulation = self.finish_accumulation()
        shared, specific, values = accumulation.shared, accumulation.specific, accumulation.loss_sum
        self._check_values(values, "backward_accumulated")
        grads = reduce_gradients(accumulation.gradients, shared, specific)  # shared rows averaged over ranks
        weights, _ = self.multipliers(values)
        dtype = accumulation_dtype(grads.shared.dtype)  # Σ m_k g_k in float32 at least, cast to the parameters'
        combination = weights.to(grads.shared.device, dtype)
        write_grad(shared, combination @ grads.shared.to(dtype), grads.shared_used)
        if specific:
            write_grad(specific, average_one(combination @ grads.task_specific.to(dtype)), grads.specific_used)
        return self._finish(weights, values, shared)

    # -- after the model's step: ξ learns from the same batch's new losses ----------------------------------------
    def after_step(self, compute_losses: Callable[[Any], torch.Tensor], batch: Any) -> None:
        """The losses of ``batch`` after the model's step (one forward pass without gradients), then ``update``."""
        with torch.no_grad():
            losses = compute_losses(batch)
        self.update(losses)

    def update(self, losses_after: torch.Tensor) -> None:
        """One Adam step of ξ on z ⊙ (δ − zᵀδ), δ_k = log D_k(before) − log D_k(after) (weight_methods.py lines
        135-144); ``losses_after``: the K losses of the last step's batch under the stepped model."""
        if self.previous_losses is None:
            raise RuntimeError("FAMO.update: no step to learn from; call backward (then optimizer.step()) first, "
                               "then update with the same batch's losses after the step (or let the loop call "
                               "after_step)")
        after = torch.as_tensor(losses_after).detach().to(self.logits).reshape(-1)
        if after.numel() != self.n_tasks:
            raise ValueError(f"FAMO.update: expected the {self.n_tasks} losses after the step, got {after.numel()}")
        if is_distributed():
            after = average_one(after)
        if not bool(torch.isfinite(after).all()) or not bool((after + EPS > 0).all()):
            raise FloatingPointError(f"FAMO.update: the losses after the step must be finite and ≥ 0 (FAMO takes "
                                     f"their log), got {after.tolist()}")
        before = self.previous_losses.to(self.logits)
        delta = torch.log(before + EPS) - torch.log(after + EPS)
        z = torch.softmax(self.logits, dim=0)
        gradient = z * (delta - (z * delta).sum())  # softmax's vector-Jacobian product (lines 139-141)
        self._adam_step(gradient)
        self.previous_losses = None

    def _adam_step(self, gradient: torch.Tensor) -> None:
        """torch.optim.Adam's step (weight_decay as L2, amsgrad off) on ξ, written out."""
        beta1, beta2 = ADAM_BETAS
        self.adam_steps += 1
        gradient = gradient + self.gamma * self.logits
        self.adam_exp_avg = beta1 * self.adam_exp_avg + (1 - beta1) * gradient
        self.adam_exp_avg_sq = beta2 * self.adam_exp_avg_sq + (1 - beta2) * gradient * gradient
        correction1 = 1 - beta1**self.adam_steps
        correction2 = 1 - beta2**self.adam_steps
        denominator = self.adam_exp_avg_sq.sqrt() / math.sqrt(correction2) + ADAM_EPS
        self.logits = self.logits - (self.lr / correction1) * self.adam_exp_avg / denominator

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.adam_steps = int(self.adam_steps)
