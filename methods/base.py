"""The interface every weighting method implements, and the shared machinery of gradient-based methods.

A training loop uses a method in these places and never needs to know which one it runs (``experiments/training/
loop.py`` is one such loop; every hook but ``backward`` is a no-op unless a method declares otherwise):

    method.bind_optimizer(optimizer)   # once; optimizer: over the model's parameters + method.main_optimizer_parameters()
    for batch in epoch:
        info = method.backward(losses, shared_parameters=..., task_specific_parameters=...)
        optimizer.step()
        if method.needs_after_step:
            method.after_step(compute_losses, batch)
        if step % (method.meta_interval or meta_every) == 0:   # before the step instead: ``meta_before_step``
            method.meta_update(compute_losses, train_batch, val_batch, shared_parameters=...,
                               task_specific_parameters=...)
    method.end_of_epoch(mean_losses)   # after every epoch of the training data

``backward`` leaves the combined gradient in ``.grad`` and returns a ``BackwardResult``: a dict with at least
``weights`` (the per-task weights it applied to the shared parameters, a 1-D tensor), which refuses to be unpacked
as ``loss, extra = method.backward(...)``. A method may leave no ``.grad`` at all on a step where the model should
not move (OL-AUX's weight iterations, as in ARML's code). With micro-batches, ``accumulate`` per micro-batch and one
``backward_accumulated`` take the place of ``backward`` (see ``WeightMethod.accumulate``). ``self.step`` counts
optimiser steps: one per ``backward`` or ``backward_accumulated``, never per micro-batch; every interval of a method
(``update_weights_every``, OL-AUX's ``interval``, ``meta_interval``) is in these steps.

``meta_update`` learns whatever the method learns from meta batches (AuxiNash: the bargaining power; AuxiLearn:
the auxiliary network) and is a no-op elsewhere; the loop calls it every ``meta_interval`` steps when the method
declares one, else every ``--meta-every`` steps. ``main_optimizer_parameters`` lists parameter groups of the method
that the loop's own optimiser trains on the training loss (none by default; AuxiLearn's network with
``train_on_loss``). ``state_dict`` / ``load_state_dict`` / ``to`` carry all learned state (not an unfinished
accumulation: save between optimiser steps).

Which gradients a method bargains over is a declared setting of every ``GradientMethod``, ``gradient_space``:
``"parameters"`` (default: the shared parameters, as the official AuxiNash and Nash-MTL code) or
``"representation"`` (the shared encoder's output, passed to ``backward`` as ``representation=``). A representation
passed to a method in parameter space is ignored with one warning (the official trainers pass one to every method);
methods that take one backward pass of the whole loss (``FixedWeightMethod``, AuxiLearn) compute the same either way
and ignore it silently.
"""
from __future__ import annotations

import dis
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

from .checks import (check_losses, check_losses_reach, check_parameters, check_representation,
                     check_unlisted_leaves)
from .distributed import average_grads_, average_one, is_distributed, sum_one, used_on_any_rank, world_size
from .gradients import TaskGradients, accumulation_dtype, per_task_gradients, write_grad
from .settings import NoSettings, setting

LossFunction = Callable[[Any], torch.Tensor]
"""Maps a batch to the K per-task losses (a 1-D tensor), running the model's forward pass."""

GRADIENT_SPACES = ("parameters", "representation")


def gradient_space_setting(source: str) -> Any:
    """The ``gradient_space`` field of a gradient method's settings (set by the trainers' ``--representation``)."""
    return setting("parameters", "which per-task gradients the method combines: of the shared parameters, or of the "
                   "shared representation passed to backward (representation=; the trainers' --representation)",
                   source, choices=GRADIENT_SPACES, cli=False)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of a warning that points at the first frame outside this package (the user's call)."""
    package, frame, level = os.path.dirname(__file__), sys._getframe(1), 1
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == package:
        frame, level = frame.f_back, level + 1
    return level


class BackwardResult(dict):
    """What ``backward`` returns: a dict of tensors (``weights`` always; ``p`` for AuxiNash; a method's own extras).

    It is a dict in every respect (``info["weights"]``, ``"p" in info``, ``info.get("p")``, iteration over its keys,
    ``dict(info)``, ``{**info}``, ``json.dumps(info, default=torch.Tensor.tolist)``, pickling) but one: unpacking it
    into names, ``loss, extra = method.backward(...)``, the official Nash-MTL / AuxiNash trainers' idiom (their
    ``backward`` returns the loss and extra outputs), which would silently bind two key strings, raises a TypeError
    naming the fix. The unpacking is told apart from other iteration by the caller's bytecode instruction
    (``UNPACK_SEQUENCE`` / ``UNPACK_EX``); where that cannot be read, iteration is allowed."""

    def __iter__(self):
        if _caller_unpacks():
            raise TypeError("a method's backward returns a BackwardResult (a dict: info['weights'], info.get('p')), "
                            "not (loss, extra_outputs): `loss, extra = method.backward(...)`, the official Nash-MTL / "
                            "AuxiNash trainers' idiom, would bind two of its keys. Write `info = method.backward(...)` "
                            "(the update is in .grad already; log the loss you computed)")
        return super().__iter__()


_UNPACKING = {dis.opmap[name] for name in ("UNPACK_SEQUENCE", "UNPACK_EX") if name in dis.opmap}


def _caller_unpacks() -> bool:
    """Whether the frame that iterates a ``BackwardResult`` does so to unpack it (``a, b = info``)."""
    try:
        frame = sys._getframe(2)  # 0: here, 1: __iter__, 2: the code that iterates
        return frame.f_code.co_code[frame.f_lasti] in _UNPACKING
    except (AttributeError, IndexError, ValueError):  # another interpreter: iterate as a dict
        return False


@dataclass
class Accumulation:
    """Micro-batches of one optimiser step (``WeightMethod.accumulate``): the parameter lists of the first, the sum
    of the losses' values, and the summed per-task gradients (None where each micro-batch's weighted loss went to
    ``.grad`` directly: fixed or reused weights, ``weights``)."""

    shared: List[torch.Tensor]
    specific: List[torch.Tensor]
    loss_sum: torch.Tensor
    count: int = 1
    gradients: Optional[TaskGradients] = None
    weights: Optional[torch.Tensor] = None

    def add_gradients(self, grads: TaskGradients) -> None:
        """Sum raw (full-width) per-task gradients, in float32 at least; a parameter counts as used where any
        micro-batch's losses reached it."""
        def cast(matrix):
            return matrix.to(accumulation_dtype(matrix.dtype))
        if self.gradients is None:
            self.gradients = TaskGradients(cast(grads.shared), cast(grads.task_specific), grads.shared_used,
                                           grads.specific_used)
            return
        total = self.gradients
        total.shared = total.shared + grads.shared
        total.task_specific = total.task_specific + grads.task_specific
        total.shared_used = [a or b for a, b in zip(total.shared_used, grads.shared_used)]
        total.specific_used = [a or b for a, b in zip(total.specific_used, grads.specific_used)]


class WeightMethod:
    """Base class: a method with K tasks, one of which (``main_task``) is the main task."""

    #: the method's hyperparameters: a frozen dataclass of ``settings.setting`` fields (see ``methods/settings.py``);
    #: the constructor takes exactly these keyword arguments, with these defaults
    Settings: type = NoSettings
    #: the row name in the tables (the paper's, for a method in the paper)
    label: str = ""
    #: True for the paper's nine methods: only these are in ``./run_all.sh``'s default grid (``--methods all`` adds
    #: the others) and have a paper value beside them in the tables, which label the others as not in the paper
    in_paper: bool = True
    #: True when ``meta_update`` learns something (AuxiNash's p, AuxiLearn's network); a no-op otherwise
    has_meta_update: bool = False
    #: steps between ``meta_update`` calls when the method fixes it (the loop's ``--meta-every`` is then recorded
    #: but not used); None: the loop's ``--meta-every``
    meta_interval: Optional[int] = None
    #: True when the loop must call ``after_step`` after every optimiser step (it costs a forward pass)
    needs_after_step: bool = False
    #: True when ``backward`` / ``accumulate`` need ``last_shared_parameters=`` (the model's declared last shared
    #: layer, ``model.last_shared_parameters()``; GradNorm with ``layer="last"``); the loop passes it only then
    needs_last_shared_parameters: bool = False
    #: True when ``meta_update`` belongs before the step it learns for, on that step's own training batch (Auto-λ:
    #: lorenmt/auto-lambda ``trainer_dense.py`` runs the meta step, then the model step with the new weights); the
    #: loop then calls it before the step's forward pass (on steps ``step + 1`` divisible by the interval)
    meta_before_step: bool = False
    #: False for multi-task methods, whose update does not depend on which task is the main one
    uses_main_task: bool = True
    #: names of tensor attributes that make up the method's learned state (saved, loaded, moved by ``to``)
    state_tensors: Sequence[str] = ()
    #: "parameters" or "representation": what per-task gradients are taken of (``GradientMethod``'s setting)
    gradient_space: str = "parameters"

    def __init__(self, n_tasks: int, main_task: int = 0, device: torch.device | str | None = None) -> None:
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be at least 1, got {n_tasks}")
        if not 0 <= main_task < n_tasks:
            raise ValueError(f"main_task must be in [0, {n_tasks}), got {main_task}")
        self.n_tasks = n_tasks
        self.main_task = main_task
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.step = 0  # optimiser steps taken: one per backward / backward_accumulated
        self._accumulation: Optional[Accumulation] = None
        self._leaves_checked = False

    # -- what a training loop calls --------------------------------------------------------------------------
    def backward(
        self,
        losses: torch.Tensor,
        shared_parameters: Iterable[torch.Tensor],
        task_specific_parameters: Iterable[torch.Tensor] = (),
        representation: Optional[torch.Tensor] = None,
    ) -> BackwardResult:
        """Put the method's combined gradient of ``losses`` (shape K) into ``.grad`` (added to what is there, as
        ``loss.backward()`` does); return ``weights`` etc. One optimiser step (``self.step`` + 1)."""
        raise NotImplementedError

    def accumulate(
        self,
        losses: torch.Tensor,
        shared_parameters: Iterable[torch.Tensor],
        task_specific_parameters: Iterable[torch.Tensor] = (),
        representation: Optional[torch.Tensor] = None,
    ) -> None:
        """Add one micro-batch to the current optimiser step; ``backward_accumulated()`` then solves once and
        writes ``.grad``.

        Sum semantics, as ``.grad`` under ``loss.backward()``: the step uses the sums over the micro-batches of the
        per-task gradients and of the losses' values (methods whose weights depend on the loss values, AuxiLearn's
        network, take them at the summed values). So with the usual idiom, each of M micro-batches' mean losses
        divided by M, ``accumulate`` × M + ``backward_accumulated`` equals one ``backward`` on the union batch's
        mean losses, up to floating-point summation order, when the micro-batches are equally large and the model
        computes each sample's losses independently of the others in its batch (no BatchNorm in training mode:
        its batch statistics differ between a micro-batch and the union; BatchNorm in eval mode is fine).
        Methods with fixed (or, on this step, reused) weights backpropagate each micro-batch's weighted loss at
        once; the others keep the K per-task gradients summed (one K × P buffer) and take K backward passes per
        micro-batch. Pass the same parameter lists every time. Not in ``gradient_space="representation"``: its
        combination must flow back through every micro-batch's own graph after the one solve (ValueError)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement gradient accumulation")

    def backward_accumulated(self) -> BackwardResult:
        """Finish the micro-batches given to ``accumulate`` since the last step: ``.grad`` and the result as one
        ``backward`` would give them on their union (see ``accumulate``). One optimiser step."""
        raise NotImplementedError(f"{type(self).__name__} does not implement gradient accumulation")

    def meta_update(
        self,
        compute_losses: LossFunction,
        train_batch: Any,
        val_batch: Any,
        shared_parameters: Iterable[torch.Tensor],
        task_specific_parameters: Iterable[torch.Tensor] = (),
    ) -> Dict[str, torch.Tensor]:
        """Learn the method's own parameters from a training and a meta-validation batch (no-op by default).

        ``compute_losses`` runs the model's forward pass; it must reach the model through an uncompiled module (a
        ``torch.compile``'d module cannot be differentiated twice: pass ``model._orig_mod``, which shares its
        parameters). Called every ``meta_interval`` optimiser steps, or every ``--meta-every`` when that is None."""
        return {}

    def main_optimizer_parameters(self) -> List[Dict[str, Any]]:
        """Parameter groups (``{"params": [...], "lr": ...}``) of the method that the training loop's optimiser
        should also step, from the ``.grad`` that ``backward`` leaves in them. None by default."""
        return []

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Told once, before training, the optimiser that steps the model (to read its current learning rate, e.g.
        ``optimizer.param_groups[0]["lr"]`` under a scheduler, or its state). A no-op by default."""

    def after_step(self, compute_losses: LossFunction, batch: Any) -> None:
        """Called after every ``optimizer.step()`` (and the model's own after-step update) with the step's batch,
        only for a method that declares ``needs_after_step = True`` (``compute_losses(batch)``: the losses after
        the step, at the cost of a forward pass). A no-op by default."""

    def end_of_epoch(self, mean_losses: torch.Tensor) -> None:
        """Called after every epoch of the training data (not every evaluation round) with the epoch's mean
        training loss per task (float64, K; NaN for a task without a valid target in the epoch). A no-op by
        default."""

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"step": self.step}
        for name in self.state_tensors:
            value = getattr(self, name)
            state[name] = value.detach().clone() if isinstance(value, torch.Tensor) else value
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``step`` and every ``state_tensors`` entry. A learned ``torch.nn.Parameter`` that the model's
        optimiser steps (``main_optimizer_parameters``: UW's log-variances, IMTL's and GradNorm's scales) is loaded
        into the same object, which the optimiser holds; other entries are replaced."""
        self.step = int(state["step"])
        for name in self.state_tensors:
            value, current = state[name], getattr(self, name, None)
            if isinstance(current, torch.nn.Parameter):
                with torch.no_grad():
                    current.copy_(value)
            else:
                setattr(self, name, value.to(self.device).clone() if isinstance(value, torch.Tensor) else value)

    def to(self, device: torch.device | str) -> "WeightMethod":
        """Move the learned state to ``device`` (a ``Parameter`` keeps its identity, as ``Module.to`` does)."""
        self.device = torch.device(device)
        for name in self.state_tensors:
            value = getattr(self, name)
            if isinstance(value, torch.nn.Parameter):
                value.data = value.data.to(self.device)
            elif isinstance(value, torch.Tensor):
                setattr(self, name, value.to(self.device))
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_tasks={self.n_tasks}, main_task={self.main_task})"

    # -- the API edge, the same for every method (``checks``) ------------------------------------------------
    def check_inputs(self, losses, shared_parameters, task_specific_parameters, representation=None,
                     call: str = "backward"):
        """(detached loss values, averaged over ranks; trainable shared list; trainable task-specific list). At the
        first call, also that every trainable tensor the losses reach is listed (``checks.check_unlisted_leaves``);
        ``backward`` may not run while micro-batches are accumulated."""
        name = f"{type(self).__name__}.{call}"
        if call == "backward" and self._accumulation is not None:
            raise RuntimeError(f"{name}: {self._accumulation.count} micro-batch(es) were given to accumulate() "
                               f"since the last step; finish them with backward_accumulated() (or accumulate this "
                               f"one too)")
        values = check_losses(losses, self.n_tasks, name)
        shared, specific = check_parameters(shared_parameters, task_specific_parameters, name)
        check_representation(representation, name)
        if not self._leaves_checked:
            check_unlisted_leaves(losses, shared + specific, name, representation)
            self._leaves_checked = True
        return values, shared, specific

    def start_accumulation(self, values: torch.Tensor, shared: List[torch.Tensor],
                           specific: List[torch.Tensor]) -> Accumulation:
        """The current step's ``Accumulation`` with this micro-batch's loss values added (a new one at the first
        micro-batch); ValueError when the parameter lists differ from the first micro-batch's."""
        current = self._accumulation
        if current is None:
            self._accumulation = Accumulation(shared, specific, values.clone())
            return self._accumulation
        if [id(p) for p in shared] != [id(p) for p in current.shared] or \
                [id(p) for p in specific] != [id(p) for p in current.specific]:
            raise ValueError(f"{type(self).__name__}.accumulate: the parameter lists differ from those of the "
                             f"step's first micro-batch; pass the same lists for every micro-batch")
        current.loss_sum = current.loss_sum + values
        current.count += 1
        return current

    def finish_accumulation(self) -> Accumulation:
        """The step's ``Accumulation``, which is then closed; RuntimeError when there is none."""
        if self._accumulation is None:
            raise RuntimeError(f"{type(self).__name__}.backward_accumulated: no micro-batch was accumulated since "
                               f"the last step; call accumulate(losses, shared_parameters, ...) per micro-batch first")
        current, self._accumulation = self._accumulation, None
        return current


def reduce_gradients(grads: TaskGradients, inputs: List[torch.Tensor], specific: List[torch.Tensor],
                     of_representation: bool = False) -> TaskGradients:
    """Raw per-task gradients (``per_task_gradients``, or their sum over micro-batches) without the columns no loss
    reached, over the ranks.

    Under torch.distributed the shared rows are averaged over the ranks (the per-task gradients of the union batch's
    mean losses); with a representation, whose rows are per-sample and stay local, the Gram matrix is that of the
    union batch's representation gradients instead, Σ_r G_r G_rᵀ / W². Task-specific rows stay local: their
    combination is averaged where it is written (``GradientMethod.apply_gradients``)."""
    if is_distributed():  # a parameter is dropped only where no rank's losses reached it: same columns on all
        grads.shared_used = used_on_any_rank(grads.shared_used, grads.shared.device)
        grads.specific_used = used_on_any_rank(grads.specific_used, grads.shared.device)
    grads = grads.drop_unused([p.numel() for p in inputs], [p.numel() for p in specific])
    if is_distributed():
        if not of_representation:
            grads.shared = average_one(grads.shared)
        else:
            grads.gram_override = sum_one(grads.gram()) / world_size() ** 2
    return grads


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
    parameters Σ_k task_specific_weights_k ∇L_k. In ``gradient_space="representation"`` the per-task gradients
    are taken with respect to the ``representation`` given to ``backward`` and the combination is
    back-propagated through the encoder once. ``max_norm`` > 0 clips the shared parameters' gradient norm
    afterwards (as Nash-MTL does). A subclass constructor passes its ``gradient_space`` setting on.
    """

    max_norm: float = 0.0

    def __init__(self, n_tasks: int, main_task: int = 0, device: torch.device | str | None = None,
                 gradient_space: str = "parameters") -> None:
        super().__init__(n_tasks, main_task, device)
        if gradient_space not in GRADIENT_SPACES:
            raise ValueError(f"gradient_space must be one of {GRADIENT_SPACES}, got {gradient_space!r}")
        self.gradient_space = gradient_space
        self._warned_representation = False

    def reused_weights(self) -> Optional[torch.Tensor]:
        """Weights to reuse on this step without computing per-task gradients (None: compute them)."""
        return None

    def needs_task_specific_gradients(self) -> bool:
        """Whether this step's combination needs the task-specific rows of the per-task gradients."""
        return True

    def combine(self, grads: TaskGradients) -> tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    #: True when ``combine`` reads nothing of the per-task gradients but their Gram matrix (with the method's own
    #: state, and for some the loss values: ``needs_loss_values``): such a method has ``weights_from_gram``, which
    #: the adapters (``methods/adapters/``) call to serve it to engines that compute the Gram matrix themselves
    gram_based: bool = False

    @property
    def needs_loss_values(self) -> bool:
        """Whether ``weights_from_gram`` must be given this step's loss values (MGDA's "loss"/"loss+" normalisers)."""
        return False

    def weights_from_gram(self, gram: torch.Tensor, loss_values: Optional[torch.Tensor] = None) -> BackwardResult:
        """One step of the method from the K × K Gram matrix G Gᵀ of this step's per-task gradients (of the shared
        parameters, or of the representation): the public form of what ``backward`` does between computing the
        per-task gradients and writing ``.grad``, for a loop or library that forms the Gram matrix itself (TorchJD's
        autogram engine, ``jac_to_grad``; ``methods/adapters/torchjd.py``).

        Returns a ``BackwardResult`` with ``weights`` (float64, K: the shared update is Σ_k w_k g_k, *before*
        ``max_norm`` clipping, exactly as ``backward``'s ``info["weights"]``), ``task_specific_weights`` (float64,
        K: the multiplier of ∇L_k for the heads; for PCGrad, CAGrad and GCS each head gets its own loss's gradient,
        weight 1) and ``max_norm`` (the clipping ``backward`` applies to the shared gradient; 0: none). It uses and
        updates the method's state as ``backward`` would (AuxiNash's α and Gram matrix, which ``meta_update`` reads;
        PCGrad's random order; ``update_weights_every``), and counts one optimiser step (``self.step`` + 1), so
        call it once per step, in place of ``backward``. ``loss_values`` (K, detached): this step's losses, required
        where ``needs_loss_values``. ``TypeError`` for a method that is not ``gram_based`` (OL-AUX, MetaBalance,
        ARML: their steps need more than the Gram matrix)."""
        name = f"{type(self).__name__}.weights_from_gram"
        if not self.gram_based:
            raise TypeError(f"{name}: {type(self).__name__} is not Gram-based (its step needs more than the Gram "
                            f"matrix of the per-task gradients); use backward(...)")
        gram = torch.as_tensor(gram).detach()
        if gram.shape != (self.n_tasks, self.n_tasks):
            raise ValueError(f"{name}: gram must be {self.n_tasks} × {self.n_tasks}, got {tuple(gram.shape)}")
        if not torch.all(torch.isfinite(gram)):
            raise FloatingPointError(f"{name}: the Gram matrix is not finite ({gram.tolist()})")
        gram = gram.to(torch.float64)
        if loss_values is not None:
            loss_values = torch.as_tensor(loss_values).detach().to(torch.float64).reshape(-1)
            if loss_values.shape != (self.n_tasks,):
                raise ValueError(f"{name}: loss_values must hold {self.n_tasks} values, got {tuple(loss_values.shape)}")
            if isinstance(self, ReadsLossValues):  # the methods that read them (MGDA's normalisers)
                self._values = loss_values
        elif self.needs_loss_values:
            raise ValueError(f"{name}: {type(self).__name__} with these settings reads the loss values: pass "
                             f"loss_values=losses.detach()")
        reused = self.reused_weights()
        if reused is not None:
            weights = reused.detach().to(torch.float64)
            result = BackwardResult(weights=weights, task_specific_weights=weights)
        else:
            shared_weights, specific_weights, info = self.combine(
                TaskGradients(gram.new_zeros(self.n_tasks, 0), gram.new_zeros(self.n_tasks, 0), gram_override=gram))
            result = BackwardResult(info)
            result["weights"] = shared_weights.detach().to(torch.float64)
            result["task_specific_weights"] = specific_weights.detach().to(torch.float64)
        result["max_norm"] = torch.tensor(float(self.max_norm), dtype=torch.float64)
        self.step += 1
        return result

    def gradient_input(self, losses: torch.Tensor, representation: Optional[torch.Tensor],
                       call: str = "backward") -> Optional[torch.Tensor]:
        """The representation to take the per-task gradients of, per ``gradient_space``: None in parameter space
        (a representation given there is ignored, with one warning per method instance), the given one otherwise
        (checked to be reached by every loss)."""
        name = f"{type(self).__name__}.{call}"
        if self.gradient_space == "parameters":
            if representation is not None and not self._warned_representation:
                self._warned_representation = True
                warnings.warn(f"{name}: ignoring representation=: this {type(self).__name__} takes the per-task "
                              f"gradients of the shared parameters (gradient_space='parameters', the default, as the "
                              f"official AuxiNash and Nash-MTL code, whose backward also ignores it); to take them "
                              f"with respect to the representation, build it with gradient_space='representation'",
                              UserWarning, stacklevel=_caller_stacklevel())
            return None
        if representation is not None:
            check_losses_reach(losses, representation, name)
        return representation

    def refuse_missing_representation(self) -> None:
        raise ValueError(f"{type(self).__name__}.backward: gradient_space='representation' takes the per-task "
                         f"gradients with respect to the shared representation: pass backward(..., "
                         f"representation=<the encoder's output that every loss is computed from>), or build "
                         f"the method with gradient_space='parameters'")

    def task_gradients(self, losses: torch.Tensor, shared: List[torch.Tensor], specific: List[torch.Tensor],
                       representation: Optional[torch.Tensor] = None) -> TaskGradients:
        """The per-task gradients of (trainable) ``shared`` or of ``representation``, and of ``specific``."""
        inputs = [representation] if representation is not None else shared
        return reduce_gradients(per_task_gradients(losses, inputs, specific), inputs, specific,
                                representation is not None)

    def backward(
        self,
        losses: torch.Tensor,
        shared_parameters: Iterable[torch.Tensor],
        task_specific_parameters: Iterable[torch.Tensor] = (),
        representation: Optional[torch.Tensor] = None,
    ) -> BackwardResult:
        _, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters, representation)
        representation = self.gradient_input(losses, representation)
        reused = self.reused_weights()
        if reused is not None:  # weights kept from an earlier step: one backward of the weighted sum
            weighted_sum_backward(losses, reused)
            return self.finish_weighted(reused, shared, specific)
        if self.gradient_space == "representation" and representation is None:
            self.refuse_missing_representation()
        grads = self.task_gradients(losses, shared, specific if self.needs_task_specific_gradients() else [],
                                    representation)
        return self.apply_gradients(grads, shared, specific, representation)

    def finish_weighted(self, weights: torch.Tensor, shared: List[torch.Tensor],
                        specific: List[torch.Tensor]) -> BackwardResult:
        """The step after ``.grad`` received Σ_k w_k ∇L_k from a plain backward: averaged over ranks, clipped."""
        average_grads_(shared + specific)
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(shared, self.max_norm)
        self.step += 1
        return BackwardResult(weights=weights.detach())

    def apply_gradients(self, grads: TaskGradients, shared: List[torch.Tensor], specific: List[torch.Tensor],
                        representation: Optional[torch.Tensor] = None) -> BackwardResult:
        """Combine the (reduced) per-task gradients and write the update into ``.grad``: the step's end."""
        shared_weights, specific_weights, info = self.combine(grads)
        dtype = accumulation_dtype(grads.shared.dtype)  # Σ w_k g_k in float32 at least, cast to the parameters'
        shared_weights = shared_weights.detach().to(grads.shared.device, dtype)
        specific_weights = specific_weights.detach().to(grads.task_specific.device, dtype)
        self.write_shared(grads, shared_weights @ grads.shared.to(dtype), shared, representation)
        if specific:
            combined_specific = average_one(specific_weights @ grads.task_specific.to(dtype))
            write_grad(specific, combined_specific, grads.specific_used)
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(shared, self.max_norm)
        self.step += 1
        info["weights"] = shared_weights
        return BackwardResult(info)

    @staticmethod
    def write_shared(grads: TaskGradients, combined: torch.Tensor, shared: List[torch.Tensor],
                     representation: Optional[torch.Tensor] = None) -> None:
        """The combined shared gradient (one flat vector over the used shared parameters, or over the
        representation) into ``.grad``: written directly, or back-propagated through the encoder from the
        representation (then averaged over ranks under torch.distributed)."""
        if representation is not None:
            representation.backward(combined.view_as(representation).to(representation.dtype))
            average_grads_(shared)  # the encoder's part of the union gradient is the mean of the ranks' parts
        else:
            write_grad(shared, combined, grads.shared_used)

    @staticmethod
    def write_blockwise(grads: TaskGradients, coefficients: torch.Tensor, sizes: List[int], shared: List[torch.Tensor],
                        specific: List[torch.Tensor], representation: Optional[torch.Tensor] = None) -> None:
        """``.grad`` of a method whose multipliers differ per block of the shared gradient (GradVac per layer
        group, MetaBalance per tensor): block t (the next ``sizes[t]`` columns of ``grads.shared``, the t-th used
        shared tensor, or the representation as one block) gets Σ_k coefficients[k, t] g_{k,t} (coefficients: K ×
        len(sizes)), summed in float32 at least and cast to the parameters'; each head gets its own task's
        gradient (weight 1). Under torch.distributed the representation's and the heads' parts are averaged."""
        dtype = accumulation_dtype(grads.shared.dtype)
        combined = torch.cat([coefficients[:, t].to(dtype) @ block.to(dtype)
                              for t, block in enumerate(torch.split(grads.shared, sizes, dim=1))]) if sizes else \
            grads.shared.new_zeros(0, dtype=dtype)
        GradientMethod.write_shared(grads, combined, shared, representation)
        if specific:
            ones = torch.ones(grads.task_specific.shape[0], dtype=dtype, device=grads.task_specific.device)
            write_grad(specific, average_one(ones @ grads.task_specific.to(dtype)), grads.specific_used)

    def accumulate(self, losses, shared_parameters, task_specific_parameters=(), representation=None) -> None:
        values, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters,
                                                     representation, call="accumulate")
        if self.gradient_space == "representation":
            raise ValueError(f"{type(self).__name__}.accumulate: gradient_space='representation' cannot accumulate "
                             f"micro-batches: after the one solve, the combination must flow back through every "
                             f"micro-batch's own encoder graph, so all of them would have to be kept in memory; "
                             f"take one backward per optimiser step, or use gradient_space='parameters'")
        self.gradient_input(losses, representation, call="accumulate")  # warns once if one is given
        accumulation = self.start_accumulation(values, shared, specific)
        reused = self.reused_weights()
        if reused is not None:  # fixed on this step: each micro-batch's weighted loss goes to .grad at once
            weighted_sum_backward(losses, reused)
            accumulation.weights = reused
        else:
            accumulation.add_gradients(per_task_gradients(
                losses, shared, specific if self.needs_task_specific_gradients() else []))

    def backward_accumulated(self) -> BackwardResult:
        accumulation = self.finish_accumulation()
        shared, specific = accumulation.shared, accumulation.specific
        if accumulation.weights is not None:
            return self.finish_weighted(accumulation.weights, shared, specific)
        grads = reduce_gradients(accumulation.gradients, shared,
                                 specific if self.needs_task_specific_gradients() else [])
        return self.apply_gradients(grads, shared, specific)


class ReadsLossValues:
    """Mixin, listed before the base class, for a method whose step reads the loss values (MGDA's normalisers; the
    gradients of UW's, IMTL-L's and GradNorm's learned weights): ``self._values`` holds this step's detached values,
    a micro-batch's under ``accumulate`` and the sum over the step's micro-batches in ``backward_accumulated``."""

    _values: Optional[torch.Tensor] = None

    def check_inputs(self, losses, shared_parameters, task_specific_parameters, representation=None,
                     call: str = "backward"):
        values, shared, specific = super().check_inputs(losses, shared_parameters, task_specific_parameters,
                                                        representation, call)
        self._values = values
        return values, shared, specific

    def backward_accumulated(self) -> BackwardResult:
        if self._accumulation is not None:  # the step's loss values: the sum over its micro-batches
            self._values = self._accumulation.loss_sum
        return super().backward_accumulated()


def learned_weights_group(parameter: torch.nn.Parameter, lr: float) -> List[Dict[str, Any]]:
    """``main_optimizer_parameters()`` of a method whose learned weights the model's optimiser steps: one group,
    at the method's own learning rate where ``lr`` > 0, else at the model's."""
    group: Dict[str, Any] = {"params": [parameter]}
    if lr > 0:
        group["lr"] = lr
    return [group]


def add_to_grad(parameter: torch.nn.Parameter, gradient: torch.Tensor) -> None:
    """Add ``gradient`` (cast to the parameter's dtype and device) to ``parameter.grad``, as ``backward`` would."""
    gradient = gradient.to(parameter.device, parameter.dtype)
    with torch.no_grad():
        parameter.grad = gradient if parameter.grad is None else parameter.grad + gradient


class FixedWeightMethod(WeightMethod):
    """A method with constant task weights: one backward pass of Σ_k w_k L_k (a representation, if given, changes
    nothing and is not used)."""

    def task_weights(self) -> torch.Tensor:
        raise NotImplementedError

    def backward(
        self,
        losses: torch.Tensor,
        shared_parameters: Iterable[torch.Tensor],
        task_specific_parameters: Iterable[torch.Tensor] = (),
        representation: Optional[torch.Tensor] = None,
    ) -> BackwardResult:
        _, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters, representation)
        weights = self.task_weights().to(losses.device)
        weighted_sum_backward(losses, weights)
        return self.finish_weighted(weights, shared, specific)

    def finish_weighted(self, weights: torch.Tensor, shared: List[torch.Tensor],
                        specific: List[torch.Tensor]) -> BackwardResult:
        average_grads_(shared + specific)  # torch.distributed: the union batch's gradient (no-op otherwise)
        self.step += 1
        return BackwardResult(weights=weights)

    def accumulate(self, losses, shared_parameters, task_specific_parameters=(), representation=None) -> None:
        values, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters,
                                                     representation, call="accumulate")
        accumulation = self.start_accumulation(values, shared, specific)
        accumulation.weights = self.task_weights().to(losses.device)
        weighted_sum_backward(losses, accumulation.weights)

    def backward_accumulated(self) -> BackwardResult:
        accumulation = self.finish_accumulation()
        return self.finish_weighted(accumulation.weights, accumulation.shared, accumulation.specific)
