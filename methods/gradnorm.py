"""GradNorm: gradient normalisation (Chen, Badrinarayanan, Lee, Rabinovich; "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, Alg. 1).

The model trains on Σ_k w_k L_k; the weights w learn to equalise the tasks' weighted gradient norms, corrected by how
fast each task trains. With G_k = ‖w_k g_k‖ (g_k = ∇L_k over the norm parameters), Ḡ = mean_k G_k,
L̃_k = L_k / L_k(0) and r_k = L̃_k / mean_j L̃_j, the weights descend

    L_grad = Σ_k | G_k − Ḡ · r_k^α |,    the target Ḡ · r_k^α held constant,

α = ``alpha`` = 1.5. The authors released no code; issue 32 names LibMTL's implementation (median-research-group/
LibMTL ``LibMTL/weighting/GradNorm.py``, "implemented by us", line 12), which is the default here. Where it departs
from the paper's Alg. 1, a setting switches to the paper:

- **Weights** (``weighting``): LibMTL learns logits ξ (initialised to 1, ``GradNorm.py`` line 22) and uses
  w = K · softmax(ξ) (line 27), so w stays positive and sums to K. The paper learns w directly (from 1) and
  renormalises it to sum to K after every update: ``weighting="sum"`` (we rescale it at the start of the next step,
  before it is used; no clamp: the paper has none).
- **Which gradient norms** (``layer``): LibMTL takes them over all shared parameters (``_get_grads``,
  ``abstract_weighting.py`` lines 97-100; K backward passes) and, with ``rep_grad``, of the representation summed
  over the batch (lines 87-96: ``gradient_space="representation"`` here). The paper takes them over the last shared
  layer's weights W: ``layer="last"``, which needs the model's declaration of that layer (see below).
- **L_k(0) and warm-up** (``initial_loss``): LibMTL trains the whole first epoch on the plain sum Σ L_k (weights 1,
  lines 46-49) and takes L_k(0) as that epoch's mean training loss (``train_loss_buffer[tn, 0]``, line 34, filled by
  ``LibMTL/trainer.py`` line 288): ``initial_loss="epoch"``, from the loop's ``end_of_epoch`` hook (epochs of the
  data, not evaluation rounds). The paper takes L_k(0) from the first step and learns from it:
  ``initial_loss="step"``.
- **Heads**: LibMTL back-propagates each loss into the heads with weight 1 (``_compute_grad``,
  ``abstract_weighting.py`` line 48) and replaces only the shared gradient by Σ w_k g_k (lines 120-122); the paper's
  Σ w_k L_k weights the heads too. ``layer="shared"`` follows LibMTL (heads 1); ``layer="last"`` is one backward
  pass of Σ w_k L_k (heads weighted, as the paper).
- **Optimiser of the weights**: LibMTL's weighting is a base class of its model, so ξ is in ``model.parameters()``
  and stepped by the one optimiser (``trainer.py`` lines 111-114, 144) at the model's learning rate, with its weight
  decay (``config.py`` line 28, 1e-5; the loop's Adam has none). Here ξ goes through ``main_optimizer_parameters()``
  without a learning rate of its own (the loop's ``--lr`` and scheduler apply); ``lr`` > 0 gives it one.

The gradient of L_grad reaches the weights only through G_k (the target is a constant, ``GradNorm.py`` line 36);
LibMTL obtains it by ``L_grad.backward()`` through ``torch.norm`` (line 32-38), which is, with n_k = ‖g_k‖ and s_k =
sign(G_k − Ḡ r_k^α), ∂L_grad/∂w_k = s_k n_k, hence ∂/∂ξ = K z ⊙ (s ⊙ n − zᵀ(s ⊙ n)) with z = softmax(ξ) (``"sum"``:
∂/∂w_k = s_k sign(w_k) n_k). We write this into ``.grad`` of ξ in float64 and cast it (as UW writes its
log-variances' gradient), so the model's optimiser steps ξ with the model. ``info["weights"]`` is w, the multiplier
of each task's shared gradient this step (LibMTL's return value, line 45).

**The last shared layer** (``layer="last"``) is the model's declaration, not a guess: pass it on every step as
``backward(..., last_shared_parameters=[...])`` (the keyword of the official Nash-MTL / FAMO trainers,
Cranial-XIX/FAMO ``experiments/nyuv2/trainer.py`` line 137, ``model.last_shared_parameters()``), or
``accumulate(..., last_shared_parameters=...)``; they must be (trainable) members of ``shared_parameters``. A
method built with ``layer="last"`` says so by ``needs_last_shared_parameters`` (True), and refuses a step without
them; our training loop then passes ``model.last_shared_parameters()``, which each of our models declares
(``experiments/training/models.py``). The gradient norms then cost K backward passes from the losses to that layer (through the heads only), plus
one backward of Σ w_k L_k.

Ours, where neither source says: a task's L_k(0) must be finite and positive; one without (an epoch mean that is
NaN because the task had no valid target, or a first loss of 0) takes it from the next epoch's mean (next step's
loss), and the weights do not learn until every task has one (the step then uses the current weights, 1 in the
warm-up). A step whose loss ratios are not finite (every current loss 0) leaves the weights' gradient at 0. A
negative loss makes r_k^α undefined: ValueError naming the task.

Under torch.distributed the loss values and per-task gradients (or their batch sums) are averaged over the ranks
before the norms are taken, so every replica writes the same gradient into ξ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

import torch

from .base import (BackwardResult, GradientMethod, ReadsLossValues, add_to_grad, gradient_space_setting,
                   learned_weights_group, reduce_gradients, weighted_sum_backward)
from .checks import parameter_list
from .distributed import average_one
from .gradients import TaskGradients, per_task_gradients
from .settings import setting

LIBMTL = "LibMTL (median-research-group/LibMTL) LibMTL/weighting/GradNorm.py"
WEIGHTINGS = ("softmax", "sum")
INITIAL_LOSSES = ("epoch", "step")
LAYERS = ("shared", "last")


@dataclass(frozen=True)
class GradNormSettings:
    """GradNorm's hyperparameters; defaults: LibMTL's (the authors released no code)."""

    alpha: float = setting(1.5, "α, the strength of the restoring force towards a common training rate",
                           LIBMTL + " line 15; LibMTL/config.py line 46 (alpha 1.5)", allow_zero=True)
    lr: float = setting(0.0, "learning rate of the weights in the model's optimiser (0: the model's own, --lr)",
                        "LibMTL/trainer.py line 144 (one optimiser over the model and the weights)", allow_zero=True)
    weighting: str = setting("softmax", "'softmax': w = K·softmax(ξ), ξ learned (LibMTL); 'sum': w learned directly "
                             "and rescaled to sum to K every step (the paper)", LIBMTL + " lines 22, 27; Chen et al. "
                             "2018 Alg. 1 (renormalise w)", choices=WEIGHTINGS)
    initial_loss: str = setting("epoch", "'epoch': weights 1 for the first epoch, L(0) its mean loss (LibMTL); "
                                "'step': L(0) the first step's losses, weights learned from it (the paper)",
                                LIBMTL + " lines 26, 34, 46-49; Chen et al. 2018 Alg. 1", choices=INITIAL_LOSSES)
    layer: str = setting("shared", "gradient norms over 'shared': all shared parameters, heads weighted 1 (LibMTL); "
                         "'last': the last shared layer, passed as backward(..., last_shared_parameters=), one "
                         "backward of the weighted loss (the paper)",
                         "LibMTL/weighting/abstract_weighting.py lines 97-100, 120-122; Chen et al. 2018 Sec. 3 "
                         "(W: the last shared layer)", choices=LAYERS)
    gradient_space: str = gradient_space_setting(LIBMTL + " with rep_grad=False (the shared parameters); "
                                                 "'representation': rep_grad=True, abstract_weighting.py lines 87-96")


class GradNorm(ReadsLossValues, GradientMethod):
    """Task weights learned so that the weighted gradient norms follow each task's relative training rate."""

    Settings = GradNormSettings
    label = "GradNorm"
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task
    in_paper = False
    state_tensors = ("loss_scale", "initial_losses")

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, alpha: float = GradNormSettings.alpha,
                 lr: float = GradNormSettings.lr, weighting: str = GradNormSettings.weighting,
                 initial_loss: str = GradNormSettings.initial_loss, layer: str = GradNormSettings.layer,
                 gradient_space: str = GradNormSettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        for name, value, choices in (("weighting", weighting, WEIGHTINGS), ("initial_loss", initial_loss,
                                                                              INITIAL_LOSSES), ("layer", layer, LAYERS)):
            if value not in choices:
                raise ValueError(f"GradNorm {name} must be one of {choices} (--gradnorm-{name.replace('_', '-')}), "
                                 f"got {value!r}")
        if not alpha >= 0:
            raise ValueError(f"GradNorm alpha must be ≥ 0 (--gradnorm-alpha), got {alpha!r}")
        if not lr >= 0:
            raise ValueError(f"GradNorm lr must be ≥ 0 (0: the model optimiser's learning rate), got {lr!r}")
        if layer == "last" and gradient_space == "representation":
            raise ValueError("GradNorm: layer='last' takes the gradient norms over the last shared layer's parameters; "
                             "it cannot be combined with gradient_space='representation' (--representation)")
        self.alpha = float(alpha)
        self.lr = lr
        self.weighting = weighting
        self.initial_loss = initial_loss
        self.layer = layer
        #: ξ (``weighting="softmax"``: w = K softmax(ξ)) or w itself ("sum"), from 1 (GradNorm.py line 22); a leaf
        #: that the model's optimiser steps (``main_optimizer_parameters``)
        self.loss_scale = torch.nn.Parameter(torch.ones(n_tasks, device=self.device))
        #: L_k(0), float64; 0 until known (a known one is positive)
        self.initial_losses = torch.zeros(n_tasks, dtype=torch.float64, device=self.device)
        self._rows: Optional[int] = None  # the representation's batch size on this step (its gradients' batch sum)
        self._last: List[torch.Tensor] = []

    @property
    def needs_last_shared_parameters(self) -> bool:
        """Whether ``backward`` needs ``last_shared_parameters=`` (``layer="last"``)."""
        return self.layer == "last"

    # -- the learned weights: one more parameter group of the model's optimiser ---------------------------------
    def main_optimizer_parameters(self) -> List[Dict[str, Any]]:
        return learned_weights_group(self.loss_scale, self.lr)

    def weights(self) -> torch.Tensor:
        """This step's w (float64): K softmax(ξ) (GradNorm.py line 27), or the renormalised w ("sum")."""
        xi = self.loss_scale.detach().double()
        if self.weighting == "softmax":
            return self.n_tasks * torch.softmax(xi, dim=0)
        return self.n_tasks * xi / xi.sum()

    def _start_step(self) -> None:
        """The paper's renormalisation Σ w = K of the learned w, once per optimiser step, before it is used."""
        if self.weighting != "sum":
            return
        total = float(self.loss_scale.detach().double().sum())
        if not total > 0:
            raise FloatingPointError(f"GradNorm: the learned weights sum to {total} (≤ 0), so they cannot be "
                                     f"renormalised to sum to {self.n_tasks}; lower --gradnorm-lr (or --lr), or use "
                                     f"weighting='softmax'")
        with torch.no_grad():
            self.loss_scale.mul_(self.n_tasks / total)

    def _known(self) -> bool:
        return bool((self.initial_losses > 0).all())

    def _fill_initial(self, values: torch.Tensor) -> None:
        """L_k(0) for the tasks without one, from ``values`` where finite and positive."""
        values = values.detach().to(self.initial_losses)
        fill = (self.initial_losses <= 0) & torch.isfinite(values) & (values > 0)
        self.initial_losses = torch.where(fill, values, self.initial_losses)

    def end_of_epoch(self, mean_losses: torch.Tensor) -> None:
        """``initial_loss="epoch"``: the first epoch's mean losses are L(0) (LibMTL ``train_loss_buffer[:, 0]``)."""
        if self.initial_loss != "epoch":
            return
        means = torch.as_tensor(mean_losses, dtype=torch.float64).to(self.device).reshape(-1)
        if means.numel() != self.n_tasks:
            raise ValueError(f"GradNorm.end_of_epoch: expected {self.n_tasks} mean losses, got {means.numel()}")
        self._fill_initial(means)

    def _learn(self, norms: Optional[torch.Tensor], values: torch.Tensor) -> None:
        """Add ∂L_grad/∂ξ to ``loss_scale.grad`` (GradNorm.py lines 32-38), given n_k = ‖g_k‖ and the loss values."""
        if norms is None or not self._known():
            return
        values = values.detach().to(torch.float64)
        if bool((values < 0).any()):
            bad = [k for k, v in enumerate(values.tolist()) if v < 0]
            raise ValueError(f"GradNorm: the loss of task {', '.join(map(str, bad))} is negative ({values.tolist()}); "
                             f"its training rate L_k / L_k(0) and r_k^α are undefined (GradNorm needs losses ≥ 0)")
        norms = norms.detach().to(values.device, torch.float64)
        w = self.weights().to(values.device)
        ratios = values / self.initial_losses.to(values.device)  # line 34
        relative = ratios / ratios.mean()  # line 35
        if not bool(torch.isfinite(relative).all()):
            return
        strengths = w.abs() * norms  # G_k = ‖w_k g_k‖, line 32
        target = strengths.mean() * relative**self.alpha  # lines 33, 36 (a constant)
        signs = torch.sign(strengths - target)  # ∂|G_k − target_k| / ∂G_k (0 at 0, as torch's abs)
        if self.weighting == "softmax":
            z = torch.softmax(self.loss_scale.detach().double().to(values.device), dim=0)
            slope = signs * norms  # ∂L_grad/∂w_k (w_k > 0)
            gradient = self.n_tasks * z * (slope - (z * slope).sum())
        else:
            gradient = signs * torch.sign(w) * norms
        add_to_grad(self.loss_scale, gradient)

    # -- layer="shared" (LibMTL): the per-task gradients of the shared parameters (or the representation) --------
    def check_inputs(self, losses, shared_parameters, task_specific_parameters, representation=None,
                     call: str = "backward"):
        starting = self._accumulation is None  # a new optimiser step (not a later micro-batch)
        values, shared, specific = super().check_inputs(losses, shared_parameters, task_specific_parameters,
                                                        representation, call)
        if starting:
            self._start_step()
        return values, shared, specific  # ReadsLossValues keeps the values (a micro-batch's under accumulate)

    def reused_weights(self) -> Optional[torch.Tensor]:
        # the warm-up epoch (LibMTL GradNorm.py lines 46-49): one backward of the weighted (plain) sum; with
        # initial_loss="step" the first step's values fill L(0) in combine, so the gradients are always taken
        if self.initial_loss == "epoch" and not self._known():
            return self.weights()
        return None

    def apply_gradients(self, grads, shared, specific, representation=None) -> BackwardResult:
        self._rows = None if representation is None else representation.shape[0]
        return super().apply_gradients(grads, shared, specific, representation)

    def _norms(self, grads: TaskGradients) -> torch.Tensor:
        """n_k: of the shared-parameter gradients (float64, averaged over ranks), or, with a representation, of the
        per-task representation gradients summed over the batch (LibMTL abstract_weighting.py line 90)."""
        if self._rows is None:
            return grads.gram().diagonal().clamp(min=0).sqrt()
        summed = grads.shared.reshape(self.n_tasks, self._rows, -1).to(torch.float64).sum(dim=1)
        return torch.linalg.vector_norm(average_one(summed), dim=1)  # the union batch's sum: the ranks' mean

    def combine(self, grads: TaskGradients):
        values = self._values
        if self.initial_loss == "step":
            self._fill_initial(values)
        weights = self.weights().to(grads.shared.device)
        self._learn(self._norms(grads), values)
        heads = torch.ones_like(weights)  # each head by its own loss (abstract_weighting.py line 48)
        return weights, heads, {"weights": weights}

    def backward_accumulated(self) -> BackwardResult:
        if self.layer == "shared":
            return super().backward_accumulated()  # ReadsLossValues: the step's values are the micro-batches' sum
        accumulation = self.finish_accumulation()
        norms = None
        if accumulation.gradients is not None:
            norms = reduce_gradients(accumulation.gradients, self._last, []).gram().diagonal().clamp(min=0).sqrt()
        return self._finish_last(accumulation.weights, norms, accumulation.loss_sum, accumulation.shared,
                                 accumulation.specific)

    # -- layer="last" (the paper): norms over the declared last shared layer, one backward of Σ w_k L_k -----------
    def _last_layer(self, last_shared_parameters: Optional[Iterable[torch.Tensor]], shared: List[torch.Tensor],
                    call: str) -> List[torch.Tensor]:
        name = f"GradNorm.{call}"
        if last_shared_parameters is None:
            raise ValueError(f"{name}: layer='last' takes the gradient norms over the last shared layer, which the "
                             f"model declares: pass {call}(..., last_shared_parameters=list(<the last shared layer>"
                             f".parameters())) on every step, or build GradNorm with layer='shared'")
        last = parameter_list(last_shared_parameters, "last_shared_parameters", name, required=True)
        members = {id(p) for p in shared}
        if any(id(p) not in members for p in last):
            raise ValueError(f"{name}: last_shared_parameters must be (trainable) members of shared_parameters")
        if not last:
            raise ValueError(f"{name}: no trainable tensor in last_shared_parameters (all frozen)")
        return last

    def _norm_gradients_due(self) -> bool:
        """Whether this step may learn, hence needs the last layer's per-task gradients."""
        return self.initial_loss == "step" or self._known()

    def backward(self, losses, shared_parameters, task_specific_parameters=(), representation=None,
                 last_shared_parameters: Optional[Iterable[torch.Tensor]] = None) -> BackwardResult:
        """``GradientMethod.backward``; with ``layer="last"``, ``last_shared_parameters`` (members of
        ``shared_parameters``) is required (and ignored otherwise, as the official trainers pass it to every
        method)."""
        if self.layer == "shared":
            if self.gradient_space == "representation" and representation is None:  # at once, not after warm-up
                self.refuse_missing_representation()
            return super().backward(losses, shared_parameters, task_specific_parameters, representation)
        values, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters,
                                                     representation)
        self.gradient_input(losses, representation)  # ignored (one warning), as in parameter space
        last = self._last_layer(last_shared_parameters, shared, "backward")
        norms = None
        if self._norm_gradients_due():
            norms = reduce_gradients(per_task_gradients(losses, last), last, []).gram().diagonal().clamp(min=0).sqrt()
        weights = self.weights()
        weighted_sum_backward(losses, weights)
        return self._finish_last(weights, norms, values, shared, specific)

    def accumulate(self, losses, shared_parameters, task_specific_parameters=(), representation=None,
                   last_shared_parameters: Optional[Iterable[torch.Tensor]] = None) -> None:
        if self.layer == "shared":
            return super().accumulate(losses, shared_parameters, task_specific_parameters, representation)
        values, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters,
                                                     representation, call="accumulate")
        self.gradient_input(losses, representation, call="accumulate")
        last = self._last_layer(last_shared_parameters, shared, "accumulate")
        accumulation = self.start_accumulation(values, shared, specific)
        if accumulation.count == 1:
            self._last = last
        elif [id(p) for p in last] != [id(p) for p in self._last]:
            raise ValueError("GradNorm.accumulate: last_shared_parameters differ from the step's first micro-batch's")
        accumulation.weights = self.weights()
        if self._norm_gradients_due():  # summed over the micro-batches (float32 at least)
            accumulation.add_gradients(per_task_gradients(losses, last))
        weighted_sum_backward(losses, accumulation.weights)

    def _finish_last(self, weights: torch.Tensor, norms: Optional[torch.Tensor], values: torch.Tensor,
                     shared: List[torch.Tensor], specific: List[torch.Tensor]) -> BackwardResult:
        if self.initial_loss == "step":
            self._fill_initial(values)
        result = self.finish_weighted(weights, shared, specific)  # averaged over ranks; one optimiser step
        self._learn(norms, values)
        return result
