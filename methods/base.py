"""The interface every weighting method implements, and the shared machinery of gradient-based methods.

A training loop uses a method in two places and never needs to know which one it runs:

    info = method.backward(losses, shared_parameters=..., task_specific_parameters=...)
    optimizer.step()            # optimizer: Adam over the model's parameters + method.main_optimizer_parameters()
    if step % meta_every == 0:
        method.meta_update(compute_losses=..., train_batch=..., val_batch=..., shared_parameters=...)

``backward`` leaves the combined gradient in ``.grad`` and returns a dict with at least ``weights`` (the
per-task weights it applied to the shared parameters, a 1-D tensor); a method may leave no ``.grad`` at all on
a step where the model should not move (OL-AUX's weight iterations, as in ARML's code). ``meta_update`` learns
whatever the method learns from meta batches (AuxiNash: the bargaining power; AuxiLearn: the auxiliary network)
and is a no-op elsewhere (OL-AUX updates its weights inside ``backward``, on its own interval).
``main_optimizer_parameters`` lists parameter groups of the method that the loop's own optimiser trains on the
training loss (none by default; AuxiLearn's network with ``train_on_loss``). ``state_dict`` /
``load_state_dict`` / ``to`` carry all learned state.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

from .checks import check_losses, check_losses_reach, check_parameters, check_representation
from .distributed import average_grads_, average_one, is_distributed, sum_one, used_on_any_rank, world_size
from .gradients import TaskGradients, accumulation_dtype, per_task_gradients, write_grad
from .settings import NoSettings

LossFunction = Callable[[Any], torch.Tensor]
"""Maps a batch to the K per-task losses (a 1-D tensor), running the model's forward pass."""


class WeightMethod:
    """Base class: a method with K tasks, one of which (``main_task``) is the main task."""

    #: the method's hyperparameters: a frozen dataclass of ``settings.setting`` fields (see ``methods/settings.py``);
    #: the constructor takes exactly these keyword arguments, with these defaults
    Settings: type = NoSettings
    #: the row name in the paper's tables
    label: str = ""
    #: True when ``meta_update`` learns something (AuxiNash's p, AuxiLearn's network); a no-op otherwise
    has_meta_update: bool = False
    #: False for multi-task methods, whose update does not depend on which task is the main one
    uses_main_task: bool = True
    #: names of tensor attributes that make up the method's learned state (saved, loaded, moved by ``to``)
    state_tensors: Sequence[str] = ()

    def __init__(self, n_tasks: int, main_task: int = 0, device: torch.device | str | None = None) -> None:
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be at least 1, got {n_tasks}")
        if not 0 <= main_task < n_tasks:
            raise ValueError(f"main_task must be in [0, {n_tasks}), got {main_task}")
        self.n_tasks = n_tasks
        self.main_task = main_task
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.step = 0

    # -- the two hooks a training loop calls ---------------------------------------------------------------
    def backward(
        self,
        losses: torch.Tensor,
        shared_parameters: Iterable[torch.Tensor],
        task_specific_parameters: Iterable[torch.Tensor] = (),
        representation: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Put the method's combined gradient of ``losses`` (shape K) into ``.grad``; return ``weights`` etc."""
        raise NotImplementedError

    def meta_update(
        self,
        compute_losses: LossFunction,
        train_batch: Any,
        val_batch: Any,
        shared_parameters: Iterable[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """Learn the method's own parameters from a training and a meta-validation batch (no-op by default)."""
        return {}

    def main_optimizer_parameters(self) -> List[Dict[str, Any]]:
        """Parameter groups (``{"params": [...], "lr": ...}``) of the method that the training loop's optimiser
        should also step, from the ``.grad`` that ``backward`` leaves in them. None by default."""
        return []

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"step": self.step}
        for name in self.state_tensors:
            value = getattr(self, name)
            state[name] = value.detach().clone() if isinstance(value, torch.Tensor) else value
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step = int(state["step"])
        for name in self.state_tensors:
            value = state[name]
            setattr(self, name, value.to(self.device).clone() if isinstance(value, torch.Tensor) else value)

    def to(self, device: torch.device | str) -> "WeightMethod":
        self.device = torch.device(device)
        for name in self.state_tensors:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(self.device))
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_tasks={self.n_tasks}, main_task={self.main_task})"

    # -- the API edge, the same for every method (``checks``) ------------------------------------------------
    def check_inputs(self, losses, shared_parameters, task_specific_parameters, representation=None):
        """(detached loss values, averaged over ranks; trainable shared list; trainable task-specific list)."""
        name = type(self).__name__
        values = check_losses(losses, self.n_tasks, name)
        shared, specific = check_parameters(shared_parameters, task_specific_parameters, name)
        check_representation(representation, name)
        if representation is not None and isinstance(self, GradientMethod):  # per-task gradients w.r.t. it
            check_losses_reach(losses, representation, name)
        return values, shared, specific


def weighted_sum_backward(
    losses: torch.Tensor,
    weights: torch.Tensor,
) -> None:
    """One backward pass of Σ_k w_k L_k (the weights are constants)."""
    torch.sum(losses * weights.detach().to(losses.device, losses.dtype)).backward()


class GradientMethod(WeightMethod):
    """A method that combines the K per-task gradients (computed once per step) into one update.

    Subclasses implement ``combine(grads) -> (shared_weights, task_specific_weights, info)``: the update of
    the shared parameters (or representation) is Σ_k shared_weights_k g_k and that of the task-specific
    parameters Σ_k task_specific_weights_k ∇L_k. With a ``representation``, the per-task gradients are taken
    with respect to it (Nash-MTL's cheaper variant) and the combination is back-propagated through the encoder
    once. ``max_norm`` > 0 clips the shared parameters' gradient norm afterwards (as Nash-MTL does).
    """

    max_norm: float = 0.0

    def reused_weights(self) -> Optional[torch.Tensor]:
        """Weights to reuse on this step without computing per-task gradients (None: compute them)."""
        return None

    def combine(self, grads: TaskGradients) -> tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def task_gradients(self, losses: torch.Tensor, shared: List[torch.Tensor], specific: List[torch.Tensor],
                       representation: Optional[torch.Tensor] = None) -> TaskGradients:
        """The per-task gradients of (trainable) ``shared`` or of ``representation``, and of ``specific``.

        Under torch.distributed the shared rows are averaged over the ranks (the per-task gradients of the union
        batch's mean losses); with a representation, whose rows are per-sample and stay local, the Gram matrix is
        that of the union batch's representation gradients instead, Σ_r G_r G_rᵀ / W². Task-specific rows stay
        local: their combination is averaged in ``backward``."""
        grads = per_task_gradients(losses, [representation] if representation is not None else shared, specific)
        if is_distributed():  # a parameter is dropped only where no rank's losses reached it: same columns on all
            grads.shared_used = used_on_any_rank(grads.shared_used, grads.shared.device)
            grads.specific_used = used_on_any_rank(grads.specific_used, grads.shared.device)
        grads = grads.drop_unused([p.numel() for p in ([representation] if representation is not None else shared)],
                                  [p.numel() for p in specific])
        if is_distributed():
            if representation is None:
                grads.shared = average_one(grads.shared)
            else:
                grads.gram_override = sum_one(grads.gram()) / world_size() ** 2
        return grads

    def backward(
        self,
        losses: torch.Tensor,
        shared_parameters: Iterable[torch.Tensor],
        task_specific_parameters: Iterable[torch.Tensor] = (),
        representation: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        _, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters, representation)
        reused = self.reused_weights()
        if reused is not None:  # weights kept from an earlier step: one backward of the weighted sum
            weighted_sum_backward(losses, reused)
            average_grads_(shared + specific)
            if self.max_norm > 0:
                torch.nn.utils.clip_grad_norm_(shared, self.max_norm)
            self.step += 1
            return {"weights": reused.detach()}
        grads = self.task_gradients(losses, shared, specific, representation)
        shared_weights, specific_weights, info = self.combine(grads)
        dtype = accumulation_dtype(grads.shared.dtype)  # Σ w_k g_k in float32 at least, cast to the parameters'
        shared_weights = shared_weights.detach().to(grads.shared.device, dtype)
        specific_weights = specific_weights.detach().to(grads.task_specific.device, dtype)
        combined = shared_weights @ grads.shared.to(dtype)
        if representation is not None:
            representation.backward(combined.view_as(representation).to(representation.dtype))
            average_grads_(shared)  # the encoder's part of the union gradient is the mean of the ranks' parts
        else:
            write_grad(shared, combined, grads.shared_used)
        if specific:
            combined_specific = average_one(specific_weights @ grads.task_specific.to(dtype))
            write_grad(specific, combined_specific, grads.specific_used)
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(shared, self.max_norm)
        self.step += 1
        info["weights"] = shared_weights
        return info


class FixedWeightMethod(WeightMethod):
    """A method with constant task weights: one backward pass of Σ_k w_k L_k."""

    def task_weights(self) -> torch.Tensor:
        raise NotImplementedError

    def backward(
        self,
        losses: torch.Tensor,
        shared_parameters: Iterable[torch.Tensor] = (),
        task_specific_parameters: Iterable[torch.Tensor] = (),
        representation: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        _, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters, representation)
        weights = self.task_weights().to(losses.device)
        weighted_sum_backward(losses, weights)
        average_grads_(shared + specific)  # torch.distributed: the union batch's gradient (no-op otherwise)
        self.step += 1
        return {"weights": weights}
