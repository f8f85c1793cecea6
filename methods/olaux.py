"""OL-AUX: online auxiliary weighting (Lin, Baweja, Kantor, Held; "Adaptive Auxiliary Task Weighting for
Reinforcement Learning", NeurIPS 2019, Alg. 1).

The training loss is L_main + Σ_k w_k L_k: the shared parameters *and* each auxiliary head receive w_k ∇L_k
(ARML ``SSL/lib/task_weighter.py`` ``Task_Weighter.forward``; Lin et al. ``olaux/ddpg.py``: the auxiliary
losses enter the training loss as ``stop_gradient(w_i) * loss``). w_main = 1; the auxiliary weights start at
``initial_weight`` = 1 and are clamped at ≥ 0 after every update. With g_k = ∇L_k over the shared parameters,
they climb the agreement between main and auxiliary gradients every ``interval`` iterations, in one of two forms:

``form="arml"`` (default). There is no official OL-AUX implementation; the public one closest to the paper's
setting is ARML's own CIFAR code (bfshi/ARML_Auxiliary_Task_Reweighting), which we follow:

- ``SSL/train.py`` (~106, ~187-207): on every iteration with ``iteration % 20 == 0`` the weights take one step
  of plain SGD (``optim.SGD``, no momentum, lr = ``task_weighter_lr``) on that iteration's batch alone, and the
  model takes *no* step on that iteration (its update sits under ``if iteration % 20 != 0``);
- ``SSL/lib/task_weighter.py`` ``ol_aux_weight_loss``: the weights' loss is −g_mainᵀ(Σ_k w_k g_k) over the
  shared parameters (``model.parameters()`` without the last six, i.e. without the three output heads), with
  g_main detached; its gradient with respect to w_k is −g_mainᵀg_k, so the step is

      w_k ← max(0, w_k + β · g_mainᵀ g_k),      β = ``lr`` = 0.05 (``SSL/config.py`` ``task_weighter_lr``),

  the clamp from ``train.py`` (``torch.clamp(task_weighter.alpha.data, 0)``), ``interval`` = 20 (``train.py``'s
  hard-coded ``iteration % 20``; our own argument, independent of the loop's ``--meta-every``).

On the other iterations no per-task gradients are needed: one backward pass of the weighted loss.

``form="accumulated"``: Lin et al.'s Alg. 1 (and ``olaux/quadratic.py`` ``adaptive_training``,
``olaux/ddpg.py`` ``_update_aux_weights``): the model steps on every iteration; the dot products g_mainᵀg_k are
summed over the last ``interval`` iterations and applied as one step,

      w_k ← max(0, w_k + β · Σ_{last N iterations} g_mainᵀ g_k),

at the end of every ``interval``-th iteration (this iteration's update still uses the old weights, as in
``quadratic.py``). With the same β this step is ~N times ARML's. Lin et al.'s RL code uses N = 5 and a step
size tied to its critic's learning rate (``olaux/main.py``); we keep β and N as arguments.

Both forms count the iterations themselves in ``backward`` (``self.step``, saved with the state: optimiser
steps, so with gradient accumulation an interval counts ``backward_accumulated`` calls, not micro-batches), and
``meta_update`` is a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .base import BackwardResult, GradientMethod, gradient_space_setting
from .gradients import TaskGradients
from .settings import setting

FORMS = ("arml", "accumulated")
ARML = "ARML's CIFAR code (bfshi/ARML_Auxiliary_Task_Reweighting)"


@dataclass(frozen=True)
class OLAUXSettings:
    """OL-AUX's hyperparameters; defaults: ARML's CIFAR code (there is no official OL-AUX code)."""

    lr: float = setting(0.05, "step size β of the auxiliary weights (not the model's learning rate)",
                        ARML + " SSL/config.py task_weighter_lr")
    interval: int = setting(20, "iterations between weight updates (independent of the loop's --meta-every)",
                            ARML + " SSL/train.py iteration % 20")
    form: str = setting("arml", "'arml': one SGD step on that iteration's batch, the model not stepping then; "
                        "'accumulated': dot products summed over the interval (Lin et al.'s Alg. 1)",
                        ARML + " SSL/train.py; Lin et al. 2019 Alg. 1", choices=FORMS)
    initial_weight: float = setting(1.0, "initial weight of every auxiliary", ARML + " SSL/lib/task_weighter.py", allow_zero=True)
    gradient_space: str = gradient_space_setting(ARML + " SSL/lib/task_weighter.py (the shared parameters: "
                                                 "model.parameters() without the heads)")


class OLAUX(GradientMethod):
    """Auxiliary weights adapted online from main/auxiliary gradient agreement."""

    Settings = OLAUXSettings
    label = "OL-AUX"
    has_meta_update = False  # its weights are updated inside backward, on their own interval
    state_tensors = ("weights", "accumulated_dots")

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, lr: float = OLAUXSettings.lr,
                 interval: int = OLAUXSettings.interval, form: str = OLAUXSettings.form,
                 initial_weight: float = OLAUXSettings.initial_weight,
                 gradient_space: str = OLAUXSettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        if form not in FORMS:
            raise ValueError(f"OL-AUX form must be one of {FORMS} (--olaux-form), got {form!r}")
        if int(interval) != interval or interval < 1:
            raise ValueError(f"OL-AUX interval must be a positive integer (--olaux-interval), got {interval!r}")
        self.lr = lr
        self.interval = int(interval)
        self.form = form
        self.weights = torch.full((n_tasks,), float(initial_weight), device=self.device)
        self.weights[main_task] = 1.0
        self.accumulated_dots = torch.zeros(n_tasks, device=self.device)

    def _update_due(self) -> bool:
        """True on iterations interval, 2·interval, ... (``self.step`` counts the iterations before this one)."""
        return (self.step + 1) % self.interval == 0

    def _weight_iteration(self) -> bool:
        """ARML's weight iteration: the weights step on this batch and the model does not."""
        return self.form == "arml" and self._update_due()

    def _step_weights(self, dots: torch.Tensor) -> None:
        """w ← max(0, w + β · dots), the main task's weight kept at 1."""
        updated = (self.weights + self.lr * dots.detach().to(self.weights)).clamp(min=0)
        updated[self.main_task] = 1.0
        self.weights = updated

    def reused_weights(self) -> Optional[torch.Tensor]:
        # ARML's form needs the per-task gradients only on its weight iterations
        return self.weights if self.form == "arml" and not self._update_due() else None

    def needs_task_specific_gradients(self) -> bool:
        return not self._weight_iteration()  # the weights' step reads the shared gradients only

    def apply_gradients(self, grads, shared: List[torch.Tensor], specific: List[torch.Tensor],
                        representation=None) -> BackwardResult:
        if not self._weight_iteration():
            return super().apply_gradients(grads, shared, specific, representation)
        # ARML's weight iteration: one SGD step of the weights on this batch, and no model step (no .grad)
        self._step_weights(grads.gram()[self.main_task])  # g_mainᵀ g_k in float64 (averaged over ranks)
        for parameter in shared + specific:
            parameter.grad = None
        self.step += 1
        return BackwardResult(weights=self.weights.clone())

    def combine(self, grads: TaskGradients):
        weights = self.weights.to(grads.shared.device).clone()  # applied on this iteration
        self.accumulated_dots = self.accumulated_dots.to(grads.shared.device) + \
            grads.gram()[self.main_task].detach().to(self.accumulated_dots.dtype)  # g_mainᵀ g_k, float64
        if self._update_due():
            self._step_weights(self.accumulated_dots)
            self.accumulated_dots = torch.zeros_like(self.accumulated_dots)
        return weights, weights, {"weights": weights}
