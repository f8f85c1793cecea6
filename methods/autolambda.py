"""Auto-λ (Liu, Davison, Johns; "Auto-Lambda: Disentangling Dynamic Task Relationships", TMLR 2022).

Official code: lorenmt/auto-lambda (commit bdba636), ``auto_lambda.py`` (class ``AutoLambda``) and
``trainer_dense.py``, which we follow; line numbers below are of those files.

**Training loss.** Σ_k λ_k L_k, one backward pass: the shared parameters *and* every head receive λ_k ∇L_k
(``trainer_dense.py`` 177-184). Every task's weight is learned, the primary (main) task's too; λ starts at
``initial_weight`` = 0.1 for every task (``auto_lambda.py`` 9, ``--autol_init`` 0.1, ``trainer_dense.py`` 20) and
is neither clamped nor normalised: a weight may become negative (the code has no projection).

**Meta step** (``AutoLambda.unrolled_backward``, ``auto_lambda.py`` 40-72), every iteration (``meta_interval`` = 1,
``trainer_dense.py`` 153-162; the loop's ``--meta-every`` does not apply). With θ every model parameter (the
shared ones and the heads: ``self.model.parameters()``), α the model optimiser's *current* learning rate
(``scheduler.get_last_lr()[0]``, line 161: read from the optimiser bound by ``bind_optimizer`` at each call, so a
schedule is followed) and L_V the primary task's loss on a validation batch:

1. look-ahead (``virtual_step``, 13-38), one step of the model optimiser's SGD-with-momentum on the weighted
   training loss, *not* differentiated through (``torch.autograd.grad`` without ``create_graph``, line 29):

       θ' = θ − α (μ·b + ∇_θ Σ_k λ_k L_k(θ) + w_d·θ),

   with μ and w_d the optimiser's ``momentum`` (0 where its groups have no such key, e.g. Adam) and
   ``weight_decay``, and b its momentum buffer (0 before the first step); for SGD without dampening or Nesterov
   (the official trainers') this is exactly the optimiser's next step;
2. d = ∇_θ' L_V(θ') (lines 56-66; the val loss is Σ over the primary tasks with binary weights, lines 48-62: here
   the main task; the other heads get d = 0);
3. the mixed term by a central finite difference at θ (``compute_hessian``, 74-110): ε = 0.01/‖d‖ (norm over all
   of θ), h_k = [L_k(θ + εd) − L_k(θ − εd)] / (2ε) ≈ ∇_θ L_k(θ)ᵀ d (the official code takes ∂/∂λ_k of Σ_j λ_j
   L_j(θ ± εd), which is L_k(θ ± εd) rounded to λ's float32: we read the losses directly, under ``no_grad``, in
   their own dtype);
4. ∂L_V(θ')/∂λ_k ≈ −α h_k (line 72), and λ takes one Adam step (``torch.optim.Adam`` defaults: β = (0.9, 0.999),
   eps 1e-8, no weight decay; lr ``meta_lr`` = 1e-4, ``--autol_lr`` ``trainer_dense.py`` 21, 74; the README
   gives 3e-5 for CityScapes and ``trainer_cifar.py`` 18 uses 3e-4 for CIFAR-100).

Steps 1-3 run in place on the model, not on a copy: θ is saved (one copy of the trainable parameters, the memory
the official ``model_`` copy takes), the look-ahead and the perturbations are written into the parameters and θ is
copied back, so after ``meta_update`` every parameter is bit-identical to before (the official code restores θ by
+εd, −2εd, +εd, which drifts by rounding). ``hessian_product="exact"`` (ours, not in the official code) replaces
step 3 by the exact directional derivatives ∇L_k(θ)ᵀd from one forward-mode pass (``torch.autograd.forward_ad``):
no truncation error (the central difference's is O(ε²)) and no ±εd rounding (which swamps the finite difference in
half precision).

**Buffers.** The official look-ahead's forward pass runs on its copy ``model_``, whose BatchNorm statistics are
never read; its three training-batch forward passes (at θ in ``virtual_step``, at θ ± εd) run on the model itself and
update its running statistics. Ours does the same: the validation forward at θ' leaves every buffer as it found it
(``implicit.frozen_buffers``), the training-batch forwards update them (two with ``hessian_product="exact"``);
``update_buffers=False`` leaves all buffers unchanged (ours).

**Where our loop differs from ``trainer_dense.py``**:

- *Order* (as the official code): the official iteration is a meta step on the iteration's batch, then the model
  step on the same batch with the new λ. This method declares ``meta_before_step = True``, so our loop calls
  ``meta_update`` before the step's forward pass with the step's own batch as L_T: the look-ahead starts from the θ
  and optimiser state that the step starts from, on that step's batch.
- *Validation batch.* Official: the next batch of a second shuffled, augmented loader over the training set
  (``trainer_dense.py`` 99-106, 155), each training image once per epoch. Ours: the benchmark's ``meta_batches``
  (with ``--meta-batches step``, a random un-augmented batch of the meta-validation items, the training items
  unless ``--meta-val-size`` holds some out; ``--meta-batches official`` draws a fresh augmented batch of them,
  the closer match, though with its own L_T batch too).
- *Model optimiser.* The official trainers use SGD (lr 0.1, momentum 0.9, weight decay 1e-4, cosine schedule,
  ``trainer_dense.py`` 76-77); our loop uses Adam, for which the same formula (no ``momentum`` key) makes the
  look-ahead a plain SGD step at Adam's learning rate, as the official code would.

Generalisations that equal the official code in its setting: each parameter's lr, momentum and weight decay are
read from the optimiser group that holds it (official: ``param_groups[0]`` for all); with groups of different
learning rates the look-ahead's derivative is −Σ_p α_p ∇L_kᵀd_p, so the finite difference runs along
(α_p/α_max)·d_p and is scaled by α_max (one group: along d, scaled by α, the official computation). A
parameter that no training loss reaches is left out of the look-ahead (``torch.optim`` skips it); ‖d‖ = 0 gives
h = 0 (official: ε = inf, NaN). Under ``torch.distributed`` every gradient and loss of the meta step is averaged
over the ranks. The meta step differentiates once (no double backward), so ``compute_losses`` may run a
``torch.compile``'d module (checked with the aot_eager backend: the same hypergradient as the uncompiled module).
With half-precision parameters the ±εd step falls below their resolution (bf16: the hypergradient off by ~50% on a
tiny model): use ``hessian_product="exact"`` there.

``info["weights"]`` is λ, the multiplier of each ∇L_k (shared parameters and heads) on this step. ``meta_update``
needs the model optimiser (``bind_optimizer``; RuntimeError otherwise) and raises ``FloatingPointError`` on a
non-finite meta-validation loss, leaving the parameters and λ unchanged.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.autograd.forward_ad as fwAD

from .base import FixedWeightMethod, LossFunction
from .checks import check_parameters
from .distributed import average
from .implicit import frozen_buffers
from .settings import setting

OFFICIAL = "lorenmt/auto-lambda"
AUTO = OFFICIAL + " auto_lambda.py"
DENSE = OFFICIAL + " trainer_dense.py"
HESSIAN_PRODUCTS = ("finite_difference", "exact")
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which trainer_dense.py line 74 keeps
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class AutoLambdaSettings:
    """Auto-λ's hyperparameters; defaults: the official dense-prediction trainer."""

    initial_weight: float = setting(0.1, "initial value of every task weight λ_k (the main task's too)",
                                    DENSE + " line 20 (--autol_init 0.1); auto_lambda.py line 9", allow_zero=True)
    meta_lr: float = setting(1e-4, "Adam learning rate of the task weights λ",
                             DENSE + " lines 21, 74 (--autol_lr 1e-4, NYUv2; README: 3e-5 CityScapes; "
                             "trainer_cifar.py line 18: 3e-4 CIFAR-100)")
    finite_difference: float = setting(0.01, "length ε‖d‖ of the central finite difference's step along d",
                                       AUTO + " line 76 (eps = 0.01 / norm)")
    hessian_product: str = setting("finite_difference", "how ∇L_k(θ)ᵀd is computed: the official central finite "
                                   "difference, or exactly by one forward-mode pass",
                                   AUTO + " lines 74-110; 'exact' ours", choices=HESSIAN_PRODUCTS)
    update_buffers: bool = setting(True, "the meta step's training-batch forward passes update BatchNorm running "
                                   "statistics as the official code's do (False: the meta step leaves every buffer "
                                   "unchanged)", AUTO + " lines 22, 86, 99 (forward passes of self.model)")


class AutoLambda(FixedWeightMethod):
    """Σ_k λ_k L_k with λ learned every step by a one-step look-ahead on the main task's validation loss."""

    Settings = AutoLambdaSettings
    label = "Auto-λ"
    has_meta_update = True
    in_paper = False
    meta_interval = 1  # the official trainers' meta step runs every iteration
    meta_before_step = True  # ... before the model step, on the same batch (trainer_dense.py 153-184)
    state_tensors = ("weights", "adam_exp_avg", "adam_exp_avg_sq", "adam_steps")

    def __init__(self, n_tasks: int, main_task: int = 0, device=None,
                 initial_weight: float = AutoLambdaSettings.initial_weight,
                 meta_lr: float = AutoLambdaSettings.meta_lr,
                 finite_difference: float = AutoLambdaSettings.finite_difference,
                 hessian_product: str = AutoLambdaSettings.hessian_product,
                 update_buffers: bool = AutoLambdaSettings.update_buffers) -> None:
        super().__init__(n_tasks, main_task, device)
        if hessian_product not in HESSIAN_PRODUCTS:
            raise ValueError(f"Auto-λ hessian_product must be one of {HESSIAN_PRODUCTS} (--autolambda-hessian-product), "
                             f"got {hessian_product!r}")
        if not meta_lr > 0 or not finite_difference > 0:
            raise ValueError(f"Auto-λ meta_lr and finite_difference must be positive, got {meta_lr!r} and "
                             f"{finite_difference!r}")
        self.meta_lr = float(meta_lr)
        self.finite_difference = float(finite_difference)
        self.hessian_product = hessian_product
        self.update_buffers = bool(update_buffers)
        # λ in float32, as the official meta_weights (auto_lambda.py line 9), with its Adam state
        self.weights = torch.full((n_tasks,), float(initial_weight), device=self.device)
        self.adam_exp_avg = torch.zeros(n_tasks, device=self.device)
        self.adam_exp_avg_sq = torch.zeros(n_tasks, device=self.device)
        self.adam_steps = 0
        self._optimizer: Optional[torch.optim.Optimizer] = None

    def task_weights(self) -> torch.Tensor:
        return self.weights

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer  # its current lr, momentum buffers and weight decay make the look-ahead

    # -- the meta step -----------------------------------------------------------------------------------------
    def meta_update(
        self,
        compute_losses: LossFunction,
        train_batch: Any,
        val_batch: Any,
        shared_parameters: Iterable[torch.Tensor],
        task_specific_parameters: Iterable[torch.Tensor] = (),
    ) -> Dict[str, torch.Tensor]:
        """One Adam step of λ on −α ∇L_k(θ)ᵀ∇L_V(θ') (module docstring); θ = the shared and the task-specific
        parameters (the official look-ahead moves the whole model: pass both, as the loop does)."""
        if self._optimizer is None:
            raise RuntimeError("Auto-λ's look-ahead is one step of the model optimiser at its current learning rate: "
                               "call method.bind_optimizer(optimizer) once before training (the loop does)")
        shared, specific = check_parameters(shared_parameters, task_specific_parameters, "AutoLambda.meta_update")
        parameters = shared + specific
        saved = [p.detach().clone() for p in parameters]
        buffers = contextlib.nullcontext() if self.update_buffers else frozen_buffers()
        try:
            with buffers:
                scales = self._virtual_step(compute_losses, train_batch, parameters)
                direction = self._validation_gradient(compute_losses, val_batch, parameters)
                _restore(parameters, saved)
                products = self._task_products(compute_losses, train_batch, parameters, saved, direction, scales)
        finally:
            _restore(parameters, saved)
        gradient = -max(scales.values(), default=0.0) * products  # −α h (auto_lambda.py line 72)
        if not bool(torch.isfinite(gradient).all()):
            raise FloatingPointError(f"Auto-λ's hypergradient is not finite ({gradient.tolist()}); check the losses "
                                     f"of the training batch near the current parameters")
        self._adam_step(gradient.to(self.weights))
        return {"weights": self.weights.clone(), "weights_hypergradient": gradient}

    def _lookahead_terms(self, parameter: torch.Tensor, groups: Dict[int, dict]):
        """(lr, μ·b or 0, weight decay) of the optimiser group that holds ``parameter`` (auto_lambda.py 34-38)."""
        group = groups.get(id(parameter))
        if group is None:
            raise ValueError("AutoLambda.meta_update: a parameter passed to meta_update is not stepped by the bound "
                             "optimiser; bind the optimiser that trains these parameters")
        momentum = 0.0
        if "momentum" in group:  # SGD (and RMSprop); Adam has no such key: no momentum term (line 34)
            buffer = self._optimizer.state.get(parameter, {}).get("momentum_buffer")
            if buffer is not None and group["momentum"] != 0:
                momentum = buffer * group["momentum"]
        return float(group["lr"]), momentum, group.get("weight_decay", 0.0)

    def _virtual_step(self, compute_losses: LossFunction, batch: Any, parameters: List[torch.Tensor]):
        """θ ← θ − α(μ·b + ∇Σλ_k L_k + w_d·θ) in place (auto_lambda.py 18-38); the learning rate of each parameter
        it moved (by id; a parameter no training loss reaches is not moved, as torch.optim skips it)."""
        losses = compute_losses(batch)
        weighted = (self.weights.detach().to(losses.device, losses.dtype) * losses).sum()
        grads = torch.autograd.grad(weighted, parameters, allow_unused=True)
        reached = [i for i, g in enumerate(grads) if g is not None]
        groups = {id(p): group for group in self._optimizer.param_groups for p in group["params"]}
        moved = [parameters[i] for i in reached]
        grads = average([grads[i] for i in reached])
        scales = {}
        with torch.no_grad():
            for parameter, grad in zip(moved, grads):
                lr, momentum, decay = self._lookahead_terms(parameter, groups)
                parameter.copy_(parameter - lr * (momentum + grad + decay * parameter))
                scales[id(parameter)] = lr
        return scales

    def _validation_gradient(self, compute_losses: LossFunction, batch: Any,
                             parameters: List[torch.Tensor]) -> List[torch.Tensor]:
        """d = ∇_θ' L_V(θ') of the main task (auto_lambda.py 56-66); the forward pass leaves buffers unchanged (the
        official one runs on the copy ``model_``)."""
        with frozen_buffers():  # restored after the backward pass, which may read them (BatchNorm saves them)
            val_loss = compute_losses(batch)[self.main_task]
            if not bool(torch.isfinite(average([val_loss.detach()])[0]).all()):
                raise FloatingPointError(f"the meta-validation loss at Auto-λ's look-ahead parameters is NaN or "
                                         f"infinite ({val_loss.item()}); check the meta-validation batch, the training "
                                         f"batch's losses and the model's outputs")
            grads = torch.autograd.grad(val_loss, parameters, allow_unused=True)
        return average([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, parameters)])

    def _task_products(self, compute_losses: LossFunction, batch: Any, parameters: List[torch.Tensor],
                       saved: List[torch.Tensor], direction: List[torch.Tensor],
                       scales: Dict[int, float]) -> torch.Tensor:
        """h_k ≈ ∇L_k(θ)ᵀv with v_p = (α_p/α_max)·d_p over the parameters the look-ahead moved (v = d for one
        learning rate), θ restored on entry: the central finite difference of ``compute_hessian`` (auto_lambda.py
        74-110) or the exact forward-mode product. Float64, on the losses' device."""
        top = max(scales.values(), default=0.0)
        if top == 0.0:  # nothing moves in the look-ahead (lr 0): λ does not change L_V(θ')
            return torch.zeros(self.n_tasks, dtype=torch.float64, device=self.weights.device)
        moved = [(p, theta, d if scales[id(p)] == top else d * (scales[id(p)] / top))
                 for p, theta, d in zip(parameters, saved, direction) if id(p) in scales]
        norm = float(torch.sqrt(sum((v.double() ** 2).sum() for _, _, v in moved)))  # ‖d‖ (line 75)
        if norm == 0.0:  # d = 0: L_V does not change with θ' (official: eps = inf, NaN)
            return torch.zeros(self.n_tasks, dtype=torch.float64, device=self.weights.device)
        if self.hessian_product == "exact":
            return self._forward_products(compute_losses, batch, [p for p, _, _ in moved], [v for _, _, v in moved])
        eps = self.finite_difference / norm  # line 76
        values = []
        with torch.no_grad():
            for sign in (1.0, -1.0):  # θ + εd, θ − εd (lines 78-102), each from the saved θ
                for parameter, theta, v in moved:
                    parameter.copy_(theta + (sign * eps) * v)
                values.append(compute_losses(batch).detach().double())
        plus, minus = average(values)
        return (plus - minus) / (2.0 * eps)  # line 109

    def _forward_products(self, compute_losses: LossFunction, batch: Any, parameters: List[torch.Tensor],
                          vector: List[torch.Tensor]) -> torch.Tensor:
        """(∇L_k(θ)ᵀv)_k exactly: the tangent of the losses with v on the parameters (one forward-mode pass)."""
        with fwAD.dual_level():
            with torch.no_grad():
                for parameter, tangent in zip(parameters, vector):
                    parameter.copy_(fwAD.make_dual(parameter.detach().clone(), tangent.to(parameter.dtype)))
                tangent = fwAD.unpack_dual(compute_losses(batch)).tangent
        if tangent is None:
            return torch.zeros(self.n_tasks, dtype=torch.float64, device=self.weights.device)
        return average([tangent.detach().double()])[0]

    def _adam_step(self, gradient: torch.Tensor) -> None:
        """One step of torch.optim.Adam (defaults, single-tensor arithmetic) on λ (trainer_dense.py 74, 159-162)."""
        beta1, beta2 = ADAM_BETAS
        self.adam_steps += 1
        exp_avg = self.adam_exp_avg.lerp(gradient, 1 - beta1)
        exp_avg_sq = self.adam_exp_avg_sq.mul(beta2).addcmul(gradient, gradient, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** self.adam_steps
        bias_correction2_sqrt = (1 - beta2 ** self.adam_steps) ** 0.5
        denominator = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add(ADAM_EPS)
        self.weights = self.weights.addcdiv(exp_avg, denominator, value=-self.meta_lr / bias_correction1)
        self.adam_exp_avg, self.adam_exp_avg_sq = exp_avg, exp_avg_sq


def _restore(parameters: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for parameter, value in zip(parameters, saved):
            parameter.copy_(value)
