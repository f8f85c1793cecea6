"""ARML: auxiliary task reweighting by gradient matching (Shi, Hoffman, Saenko, Darrell, Xu; "Auxiliary Task
Reweighting for Minimum-data Learning", NeurIPS 2020).

Official code: bfshi/ARML_Auxiliary_Task_Reweighting, ``SSL/lib/task_weighter.py`` and ``SSL/train.py``, which
we follow line by line. The training loss is L_main + Σ_k α_k L_k (``Task_Weighter.forward``, task_weighter.py:18-21):
the shared parameters *and* each auxiliary head receive α_k ∇L_k; α starts at 1 (task_weighter.py:12). With
g_k = ∇L_k over the shared parameters, the weights minimise

    ‖g_main − Σ_k α_k g_k‖²                                  (``arml_weight_loss``, task_weighter.py:44-52)

over ``model.parameters()`` without the last six, i.e. without the three output heads of their WRN
(``loss_grad_gap[:-6]``; ``wrn.py``: ``output``, ``rotate_output``, ``jigsaw_output``): our shared parameters.
What the code does that the paper's prose leaves open, and we follow:

- **Interval, and no model step then** (train.py:193-214): on iterations with ``iteration % 20 == 0`` the weights
  take one step on that iteration's batch and the model takes *none* (its update sits under
  ``if iteration % 20 != 0``); ``interval`` = 20, counted in optimiser steps by ``backward`` itself (``self.step``,
  saved with the state), independent of the loop's ``--meta-every``. On the other iterations no per-task
  gradients are needed: one backward pass of the weighted loss. On a weight iteration ``backward`` leaves no
  ``.grad`` (the optimiser skips every parameter), as OL-AUX's ARML form does.
- **The step**: plain SGD (``optim.SGD``, no momentum, train.py:110) with lr = ``task_weighter_lr`` = 0.05
  (``SSL/config.py``:10). The gradient of the loss above is ∂/∂α_k = −2 g_kᵀ(g_main − Σ_j α_j g_j), so

      α_k ← α_k + 2β g_kᵀ(g_main − Σ_j α_j g_j),      β = ``lr``,

  computed from the float64 Gram matrix G (g_kᵀg_j = G_kj).
- **Normalisation, then clamp** (train.py:208-212): α ← α + (n − Σα)/n with n the number of auxiliaries (the
  Euclidean projection onto Σα = n), then α ← max(α, 0) (so Σα may exceed n after the clamp, as in the code).

**Langevin noise** (``langevin``, off by default as in the official run command, whose ``--lagrange`` flag is
off; train.py:26, :196-198 and task_weighter.py:28-32): the paper samples θ by Langevin dynamics; the code adds, on
the model's steps of the first ``langevin_iterations`` = 50,000 iterations, to every model gradient (shared and
heads)

    ∇ ← ∇ + ξ · √v · √(1 − μ) / η · |∇|^½,     ξ ~ N(0, 1),  v = 2η(1 − μ)/N,

with η the model optimiser's current learning rate (``bind_optimizer``: ``param_groups[0]["lr"]``), μ =
``langevin_momentum`` = 0.9 and N = ``langevin_dataset_size`` (``len(u_loader.dataset)``, the unlabelled
training set's size: set it for your data; required when ``langevin`` is on). ξ comes from the method's own
generator (seeded by the run's seed; float32 draws on the CPU, one tensor per parameter in list order, shared then
heads; saved with the state), so a resumed run, and every rank under torch.distributed, draws the same noise.

``weights`` reports (1 for the main task, α for the auxiliaries) as applied on this step, the updated α on a
weight iteration. ``gradient_space="representation"`` (the trainers' ``--representation``; not in the official
code) takes g_k with respect to the shared representation instead. ``meta_update`` is a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .base import BackwardResult, GradientMethod, gradient_space_setting
from .gradients import TaskGradients
from .settings import setting

OFFICIAL = "bfshi/ARML_Auxiliary_Task_Reweighting"


@dataclass(frozen=True)
class ARMLSettings:
    """ARML's hyperparameters; defaults: the official SSL code."""

    lr: float = setting(0.05, "SGD step size of the auxiliary weights α (not the model's learning rate)",
                        OFFICIAL + " SSL/config.py:10 task_weighter_lr, SSL/train.py:110 optim.SGD")
    interval: int = setting(20, "iterations between weight steps; the model does not step on those iterations "
                            "(independent of the loop's --meta-every)", OFFICIAL + " SSL/train.py:193, :200")
    langevin: bool = setting(False, "add the official Langevin gradient noise to the model's steps",
                             OFFICIAL + " SSL/train.py:26 --lagrange (off), :196-198")
    langevin_iterations: int = setting(50000, "iterations during which the noise is added (with langevin)",
                                       OFFICIAL + " SSL/train.py:196 iteration < 50000")
    langevin_momentum: float = setting(0.9, "momentum μ in the noise's scale (with langevin)",
                                       OFFICIAL + " SSL/train.py:197-198 (0.9)", allow_zero=True)
    langevin_dataset_size: int = setting(0, "N, the training set's size in the noise variance 2η(1 − μ)/N "
                                         "(required with langevin; 0: unset)",
                                         OFFICIAL + " SSL/train.py:197 len(u_loader.dataset)", allow_zero=True)
    seed: int = setting(0, "seed of the Langevin noise's generator", "ours: the run's seed", run_setting="seed")
    gradient_space: str = gradient_space_setting(OFFICIAL + " SSL/lib/task_weighter.py:48-51 (the shared "
                                                 "parameters: model.parameters() without the heads)")


class ARML(GradientMethod):
    """Auxiliary weights that make Σ α_k g_k approximate the main task's gradient."""

    Settings = ARMLSettings
    label = "ARML"
    has_meta_update = False  # its weights are updated inside backward, on their own interval
    in_paper = False
    state_tensors = ("weights", "noise_state")

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, lr: float = ARMLSettings.lr,
                 interval: int = ARMLSettings.interval, langevin: bool = ARMLSettings.langevin,
                 langevin_iterations: int = ARMLSettings.langevin_iterations,
                 langevin_momentum: float = ARMLSettings.langevin_momentum,
                 langevin_dataset_size: int = ARMLSettings.langevin_dataset_size, seed: int = ARMLSettings.seed,
                 gradient_space: str = ARMLSettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        if int(interval) != interval or interval < 1:
            raise ValueError(f"ARML interval must be a positive integer (--arml-interval), got {interval!r}")
        if langevin and not langevin_dataset_size > 0:
            raise ValueError("ARML langevin needs the training set's size N in its noise variance 2η(1 − μ)/N "
                             "(--arml-langevin-dataset-size, the official len(u_loader.dataset))")
        if not 0.0 <= langevin_momentum < 1.0:
            raise ValueError(f"ARML langevin_momentum must be in [0, 1), got {langevin_momentum!r}")
        self.lr = lr
        self.interval = int(interval)
        self.langevin = bool(langevin)
        self.langevin_iterations = int(langevin_iterations)
        self.langevin_momentum = float(langevin_momentum)
        self.langevin_dataset_size = int(langevin_dataset_size)
        self.weights = torch.ones(n_tasks, dtype=torch.float64, device=self.device)  # task_weighter.py:12
        self._generator = torch.Generator().manual_seed(int(seed))
        self._optimizer: Optional[torch.optim.Optimizer] = None

    # -- the noise generator's state, as a tensor of the learned state --------------------------------------------
    @property
    def noise_state(self) -> torch.Tensor:
        return self._generator.get_state()

    @noise_state.setter
    def noise_state(self, value: torch.Tensor) -> None:
        self._generator.set_state(value.detach().to("cpu", torch.uint8))

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer  # its current learning rate scales the Langevin noise

    # -- the weight iterations --------------------------------------------------------------------------------------
    def _weight_iteration(self) -> bool:
        """True on iterations interval, 2·interval, ... (``self.step`` counts the iterations before this one)."""
        return (self.step + 1) % self.interval == 0

    def reused_weights(self) -> Optional[torch.Tensor]:
        return None if self._weight_iteration() else self.weights

    def needs_task_specific_gradients(self) -> bool:
        return False  # only the weight iterations take per-task gradients, and read the shared ones alone

    def step_weights(self, gram: torch.Tensor) -> None:
        """One SGD step of α on ‖g_main − Σ α_k g_k‖², the projection onto Σα = n, the clamp at 0
        (task_weighter.py:44-52, train.py:205-212)."""
        aux = [k for k in range(self.n_tasks) if k != self.main_task]
        if not aux:
            return
        gram = gram.to(self.weights.device, torch.float64)
        residual = -self.weights.clone()  # g_main − Σ_j α_j g_j as coefficients of the g's
        residual[self.main_task] = 1.0
        alpha = self.weights[aux] + 2.0 * self.lr * (gram @ residual)[aux]
        alpha = alpha + (len(aux) - alpha.sum()) / len(aux)
        weights = self.weights.clone()
        weights[aux] = alpha.clamp(min=0)
        self.weights = weights

    def apply_gradients(self, grads: TaskGradients, shared: List[torch.Tensor], specific: List[torch.Tensor],
                        representation=None) -> BackwardResult:
        # only reached on a weight iteration (reused_weights is None only then): the weights step on this batch
        # and the model does not (no .grad)
        self.step_weights(grads.gram())
        for parameter in shared + specific:
            parameter.grad = None
        self.step += 1
        return BackwardResult(weights=self.weights.clone())

    def combine(self, grads: TaskGradients):
        raise NotImplementedError("ARML's weight iterations are in apply_gradients; its other steps reuse α")

    def finish_weighted(self, weights: torch.Tensor, shared: List[torch.Tensor],
                        specific: List[torch.Tensor]) -> BackwardResult:
        result = super().finish_weighted(weights, shared, specific)  # self.step is now this iteration's number
        if self.langevin and self.step < self.langevin_iterations:  # train.py:196 iteration < 50000
            self.add_noise(shared + specific)
        return result

    def add_noise(self, parameters: List[torch.Tensor]) -> None:
        """∇ += ξ √v √(1 − μ) / η |∇|^½ with v = 2η(1 − μ)/N (task_weighter.py:28-32, train.py:197-198)."""
        if self._optimizer is None:
            raise RuntimeError("ARML with langevin scales its noise by the model optimiser's learning rate: call "
                               "method.bind_optimizer(optimizer) once before training (the loop does)")
        lr = float(self._optimizer.param_groups[0]["lr"])
        momentum = self.langevin_momentum
        variance = 2.0 * lr * (1.0 - momentum) / self.langevin_dataset_size
        scale = variance**0.5 * (1.0 - momentum) ** 0.5 / lr
        for parameter in parameters:
            if parameter.grad is None:
                continue
            noise = torch.randn(parameter.grad.shape, generator=self._generator, dtype=torch.float32)
            noise = noise.to(parameter.grad.device, parameter.grad.dtype)
            parameter.grad.add_(noise * scale * parameter.grad.abs().sqrt())  # (∇²)^¼ without fp16's overflow of ∇²
