"""AuxiLearn (Navon, Achituve, Maron, Chechik, Fetaya; "Auxiliary Learning by Implicit Differentiation",
ICLR 2021, Eq. 4-5 and Alg. 1).

An auxiliary network h_φ maps the K per-task losses to one training loss, L_T = L_main + h_φ(L_1..L_K)
(nonlinear: K → 3 → 3 → 1 with Softplus, as in the official AuxiNash code) or L_T = Σ_k φ_k L_k (linear,
φ initialised to 1). Its weights are kept non-negative (monotone in every loss) by clamping. φ follows the
implicit hypergradient of the main-task loss on a meta-validation batch, dL_V/dφ = −∇_θL_Vᵀ H⁻¹ ∂²L_T/∂θ∂φ
(truncated Neumann series, 3 terms, scale 1e-4, over the shared parameters), clipped to norm 25, with SGD
(lr 5e-3, momentum 0.9, weight decay 5e-4): the official code's settings.

``weights`` reports ∂L_T/∂L_k at the current losses: the per-task weights the network applies this step.

``train_on_loss=True`` (``--auxilearn-train-on-loss``): the official AuxiNash trainer also puts the auxiliary
network into the main optimiser (AvivSham/auxinash ``experiments/nyuv2/trainer.py`` ~89-98: Adam param group
``weight_method.parameters()`` at ``--method-params-lr`` 5e-3, and ``methods/weight_methods.py`` ``AuxiLearn``,
whose ``parameters()`` is the network's and whose ``backward`` is ``L_T.backward()``), so φ also descends the
training loss L_T on every step, besides the hypergradient steps. That is most likely what the paper's
AuxiLearn rows ran; it drives the auxiliary weights towards 0. We then hand φ to the loop's optimiser through
``main_optimizer_parameters`` (lr ``train_on_loss_lr``) and add ∂L_T/∂φ to its ``.grad`` in ``backward``. The
default (False) is the AuxiLearn paper's method: φ learns from the hypergradient alone. Either way the network
is clamped non-negative before every use, as the official ``get_weighted_loss`` does (``self.clamp()``).

With gradient accumulation (``accumulate`` per micro-batch, then ``backward_accumulated``) the network's weights
are taken at the sum of the micro-batches' loss values (the union batch's mean losses under the usual idiom) and
applied to the summed per-task gradients: K backward passes per micro-batch instead of one.

Losses of any floating dtype are accepted (e.g. a float64 model): the network runs in its own dtype (float32
unless built under another default) and the weights it returns are cast back to the losses' dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from .base import BackwardResult, WeightMethod, reduce_gradients
from .distributed import average_grads_, average_one, differentiable_mean
from .gradients import accumulation_dtype, per_task_gradients, write_grad
from .implicit import implicit_hypergradient
from .settings import setting

OFFICIAL = "official AuxiNash code (AvivSham/auxinash), as the AuxiLearn code (AvivNavon/AuxiLearn)"


@dataclass(frozen=True)
class AuxiLearnSettings:
    """AuxiLearn's hyperparameters; defaults: the official AuxiNash code's AuxiLearn baseline."""

    linear: bool = setting(False, "a linear auxiliary network Σ φ_k L_k (False: K → 3 → 3 → 1 with Softplus)",
                           "AuxiLearn paper Sec. 3 (both); nonlinear in " + OFFICIAL)
    hidden_sizes: Tuple[int, ...] = setting((3, 3), "hidden layer widths of the nonlinear network", OFFICIAL)
    meta_lr: float = setting(5e-3, "SGD learning rate of the network", OFFICIAL)
    meta_momentum: float = setting(0.9, "SGD momentum of the network", OFFICIAL, allow_zero=True)
    meta_weight_decay: float = setting(5e-4, "SGD weight decay of the network", OFFICIAL, allow_zero=True)
    neumann_terms: int = setting(3, "Neumann-series terms of the inverse Hessian", OFFICIAL, allow_zero=True)
    neumann_scale: float = setting(1e-4, "Neumann-series step", OFFICIAL)
    hypergrad_clip: float = setting(25.0, "clip the hypergradient to this norm", OFFICIAL)
    seed: int = setting(0, "seed of the network's initialisation", "ours: the run's seed", run_setting="seed")
    train_on_loss: bool = setting(False, "the main optimiser also trains the network on the training loss",
                                  "AvivSham/auxinash experiments/nyuv2/trainer.py ~89-98 (True); AuxiLearn paper "
                                  "(False, our default)")
    train_on_loss_lr: float = setting(5e-3, "learning rate of the network in the main optimiser (train_on_loss)",
                                      "AvivSham/auxinash --method-params-lr")


class AuxiliaryNetwork(nn.Module):
    """Monotone loss combiner: ``linear`` → Σ φ_k L_k; otherwise L_main + MLP(L) with non-negative weights."""

    def __init__(self, n_tasks: int, main_task: int, linear: bool, hidden_sizes: Sequence[int] = (3, 3)) -> None:
        super().__init__()
        self.main_task = main_task
        self.linear = linear
        if linear:
            self.net = nn.Linear(n_tasks, 1, bias=False)
            nn.init.constant_(self.net.weight, 1.0)
        else:
            dims = [n_tasks, *hidden_sizes]
            layers: list[nn.Module] = []
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                layer = nn.Linear(d_in, d_out)
                nn.init.uniform_(layer.weight, 0.0, 1.0)
                nn.init.zeros_(layer.bias)
                layers += [layer, nn.Softplus()]
            last = nn.Linear(dims[-1], 1, bias=False)
            nn.init.uniform_(last.weight, 0.0, 1.0)
            self.net = nn.Sequential(*layers, last)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        combined = self.net(losses).squeeze(-1)
        return combined if self.linear else combined + losses[self.main_task]

    @torch.no_grad()
    def clamp_(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.clamp_(min=0)


class AuxiLearn(WeightMethod):
    """A learned auxiliary network combines the losses; it is trained on the main task's validation loss."""

    Settings = AuxiLearnSettings
    label = "AuxiLearn"
    has_meta_update = True

    def __init__(
        self,
        n_tasks: int,
        main_task: int = 0,
        device=None,
        linear: bool = AuxiLearnSettings.linear,
        hidden_sizes: Sequence[int] = AuxiLearnSettings.hidden_sizes,
        meta_lr: float = AuxiLearnSettings.meta_lr,
        meta_momentum: float = AuxiLearnSettings.meta_momentum,
        meta_weight_decay: float = AuxiLearnSettings.meta_weight_decay,
        neumann_terms: int = AuxiLearnSettings.neumann_terms,
        neumann_scale: float = AuxiLearnSettings.neumann_scale,
        hypergrad_clip: float = AuxiLearnSettings.hypergrad_clip,
        seed: int = AuxiLearnSettings.seed,
        train_on_loss: bool = AuxiLearnSettings.train_on_loss,
        train_on_loss_lr: float = AuxiLearnSettings.train_on_loss_lr,
    ) -> None:
        super().__init__(n_tasks, main_task, device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = AuxiliaryNetwork(n_tasks, main_task, linear, hidden_sizes).to(self.device)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=meta_lr, momentum=meta_momentum,
                                         weight_decay=meta_weight_decay)
        self.neumann_terms = neumann_terms
        self.neumann_scale = neumann_scale
        self.hypergrad_clip = hypergrad_clip
        self.train_on_loss = bool(train_on_loss)
        self.train_on_loss_lr = train_on_loss_lr

    def main_optimizer_parameters(self) -> List[Dict[str, Any]]:
        """With ``train_on_loss``, the network joins the main optimiser (lr 5e-3, the official default)."""
        if not self.train_on_loss:
            return []
        return [{"params": list(self.network.parameters()), "lr": self.train_on_loss_lr}]

    def _network_input(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.to(next(self.network.parameters()).dtype)

    def _weights_at(self, values: torch.Tensor):
        """∂h_φ/∂L at the loss values (the per-task weights), and with ``train_on_loss`` the network's parameters
        with ∂h_φ/∂φ."""
        self.network.clamp_()
        detached = self._network_input(values).requires_grad_(True)
        parameters = list(self.network.parameters()) if self.train_on_loss else []
        with torch.enable_grad():
            weights, *parameter_grads = torch.autograd.grad(self.network(detached), [detached, *parameters])
        return weights, parameters, parameter_grads

    def backward(self, losses, shared_parameters, task_specific_parameters=(), representation=None
                 ) -> BackwardResult:
        # the network's weights are taken at the losses' values averaged over the ranks under torch.distributed
        # (the union batch's mean losses); ``values`` is ``losses.detach()`` otherwise
        values, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters,
                                                     representation)
        weights, parameters, parameter_grads = self._weights_at(values)
        losses.backward(weights.to(losses.dtype))  # = ∇_θ h_φ(L(θ)): the chain rule through the network
        average_grads_(shared + specific)  # torch.distributed: the union batch's gradient (no-op otherwise)
        return self._finish(weights, losses.dtype, parameters, parameter_grads)

    def _finish(self, weights, dtype, parameters, parameter_grads) -> BackwardResult:
        for parameter, gradient in zip(parameters, parameter_grads):  # ∂L_T/∂φ for the main optimiser
            parameter.grad = gradient if parameter.grad is None else parameter.grad + gradient
        self.step += 1
        return BackwardResult(weights=weights.detach().to(dtype))

    def accumulate(self, losses, shared_parameters, task_specific_parameters=(), representation=None) -> None:
        values, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters,
                                                     representation, call="accumulate")
        self.start_accumulation(values, shared, specific).add_gradients(per_task_gradients(losses, shared, specific))

    def backward_accumulated(self) -> BackwardResult:
        """Σ_k w_k Σ_m ∇L_k^m with w = ∂h_φ/∂L at Σ_m L^m (the loss values summed over the micro-batches)."""
        accumulation = self.finish_accumulation()
        weights, parameters, parameter_grads = self._weights_at(accumulation.loss_sum)
        grads = reduce_gradients(accumulation.gradients, accumulation.shared, accumulation.specific)
        dtype = accumulation_dtype(grads.shared.dtype)
        combination = weights.detach().to(grads.shared.device, dtype)
        write_grad(accumulation.shared, combination @ grads.shared.to(dtype), grads.shared_used)
        if accumulation.specific:
            write_grad(accumulation.specific, average_one(combination @ grads.task_specific.to(dtype)),
                       grads.specific_used)
        return self._finish(weights, accumulation.loss_sum.dtype, parameters, parameter_grads)

    def meta_update(self, compute_losses, train_batch, val_batch, shared_parameters, task_specific_parameters=()
                    ) -> Dict[str, torch.Tensor]:
        """One SGD step of the network on the implicit hypergradient over the shared parameters (as the official
        code: ``task_specific_parameters`` is not used)."""
        self.network.clamp_()  # the main optimiser may have moved it (train_on_loss)
        shared = list(shared_parameters)
        val_loss = compute_losses(val_batch)[self.main_task]
        parameters = list(self.network.parameters())
        def train_loss():  # under torch.distributed: h_φ of the union batch's mean losses (differentiable mean)
            return self.network(self._network_input(differentiable_mean(compute_losses(train_batch))))

        hypergradients = implicit_hypergradient(val_loss, train_loss, shared, parameters, self.neumann_terms,
                                                self.neumann_scale)
        self.optimizer.zero_grad(set_to_none=True)
        for parameter, gradient in zip(parameters, hypergradients):
            parameter.grad = gradient.detach()
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.hypergrad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # the hypergradient must not reach the main optimiser
        self.network.clamp_()
        return {"hypergradient_norm": norm.detach()}

    def state_dict(self) -> Dict:
        return {**super().state_dict(), "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])

    def to(self, device) -> "AuxiLearn":
        super().to(device)
        self.network.to(self.device)
        for values in self.optimizer.state.values():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    values[key] = value.to(self.device)
        return self
