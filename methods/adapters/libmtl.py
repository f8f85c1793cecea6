"""Every one of our methods as a LibMTL weighting (LibMTL: Lin & Zhang, "LibMTL: A Python Library for Multi-Task
Learning", JMLR 2023, github.com/median-research-group/LibMTL; written against its code of 2025-05-14, commit
4336804). LibMTL is not a dependency: ``weighting_class`` takes LibMTL's ``AbsWeighting`` (imported where it is
installed, or given).

LibMTL's contract (``LibMTL/weighting/abstract_weighting.py`` lines 6-131, ``LibMTL/trainer.py`` lines 106-128 and
229-290, ``LibMTL/architecture/abstract_arch.py`` lines 7-77): the trainer mixes the weighting class into the model,
``class MTLmodel(architecture_class, weighting_class)`` (``trainer.py`` line 111), found by name in
``LibMTL.weighting`` (line 108), builds it without arguments, then calls ``init_param()`` (line 114) with
``self.task_num``, ``self.task_name``, ``self.device``, ``self.rep_grad`` set by the architecture; its optimiser
takes ``self.model.parameters()`` (line 144); each step it calls ``optimizer.zero_grad(set_to_none=False)``,
``w = self.model.backward(train_losses, **kwargs['weight_args'])`` (the K losses in a tensor written in place,
``_compute_loss`` lines 178-185; ``w``: the weights, stored in ``batch_weight``), then ``optimizer.step()``, and
sets ``self.model.epoch`` at each epoch's start and ``self.model.train_loss_buffer[:, epoch]`` at its end. The
shared parameters are ``self.get_share_params()`` (the encoder's, ``abstract_arch.py`` line 57).

``weighting_class("auxinash", **settings)`` is such a class: ``init_param`` builds our method (settings bound here,
not read from ``weight_args``, which are ignored), registers its own learned parameters
(``main_optimizer_parameters()``: UW's σ, IMTL's scales, AuxiLearn's network, ...) as parameters of the model, so
LibMTL's one optimiser steps them at the model's learning rate (as LibMTL's own UW does), and ``backward`` is our
``method.backward(losses, shared_parameters=get_share_params(), task_specific_parameters=<every other parameter of
the model>)``. ``register(...)`` puts the class into ``LibMTL.weighting`` under a name for ``Trainer(weighting=...)``.
The method's state is in the model's ``state_dict()`` (``get_extra_state``: key ``_extra_state``), so LibMTL's
``best.pt`` carries it and ``load_state_dict`` restores it. ``end_of_epoch`` (DWA, GradNorm, ...) is served at the
first ``backward`` of the next epoch, from ``train_loss_buffer``.

The hooks that need the trainer's batches and optimiser: ``attach(trainer, val_dataloader)`` binds the optimiser
(``bind_optimizer``), records each training batch (wrapping ``trainer.forward4loss``) and registers an optimiser
step hook (``register_step_post_hook``) that runs ``after_step`` where declared and ``meta_update`` (AuxiNash's p,
AuxiLearn's network) every ``meta_interval`` (or ``meta_every``) steps, on the step's training batch and the next
batch of ``val_dataloader``; its loss function calls the model and each task's ``compute_loss`` directly, so the
meta-updates' forward passes do not enter LibMTL's loss records.

What it cannot do: ``rep_grad=True`` (LibMTL detaches the representation per task, so no loss reaches the shared
parameters; ``backward`` refuses it; the representation space of our methods needs one z that every loss reaches);
per-group learning rates of a method's own parameters (LibMTL has one optimiser over ``model.parameters()``:
AuxiLearn's network then trains at the model's rate, not 5e-3); ``meta_before_step`` (Auto-λ's meta step before the
step's forward pass: ``attach`` refuses it); LibMTL's bilevel trainer (``train_bilevel``, for its own MOML, FORUM,
AutoLambda); the multi-sample path of its MoDo / SDMGrad.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from .. import METHODS, canonical_name, get_method
from ..settings import resolve

EXTRA_STATE_KEY = "ours"


def weighting_class(method: str, abs_weighting: Optional[type] = None, main_task: int = 0, **settings: Any) -> type:
    """A LibMTL weighting class running our ``method`` with ``settings`` (its papers' defaults otherwise).

    ``abs_weighting``: LibMTL's ``AbsWeighting`` (default: imported from ``LibMTL.weighting.abstract_weighting``).
    ``main_task``: the main task's index in the trainer's ``task_dict`` order (auxiliary-learning methods)."""
    key = canonical_name(method)
    resolve(METHODS[key].Settings, settings, key)  # an unknown setting is named here, not at init_param
    if abs_weighting is None:
        try:
            from LibMTL.weighting.abstract_weighting import AbsWeighting as abs_weighting
        except ImportError as error:
            raise ImportError("methods.adapters.libmtl.weighting_class: LibMTL is not importable; install it or "
                              "pass abs_weighting=<LibMTL's AbsWeighting>") from error
    bound = dict(settings)

    class OurWeighting(abs_weighting):
        ours_name = key
        ours_settings = bound
        ours_main_task = main_task

        def init_param(self) -> None:
            super().init_param()
            self.ours_method = get_method(key, n_tasks=self.task_num, main_task=main_task, device=self.device,
                                          **bound)
            self.ours_info: Dict[str, Any] = {}
            self._ours_epoch = 0
            self._ours_own = []
            for i, group in enumerate(self.ours_method.main_optimizer_parameters()):
                for j, parameter in enumerate(group["params"]):
                    self.register_parameter(f"ours_param_{i}_{j}", parameter)
                    self._ours_own.append(parameter)

        def ours_parameters(self):
            """(shared, task-specific): the encoder's parameters and every other trainable parameter of the model
            but the method's own."""
            shared = list(self.get_share_params())
            taken = {id(p) for p in shared} | {id(p) for p in self._ours_own}
            specific = [p for p in self.parameters() if id(p) not in taken]
            return shared, specific

        def backward(self, losses, **kwargs):
            if getattr(self, "rep_grad", False):
                raise ValueError(f"{type(self).__name__} ({key}): rep_grad=True is not supported: LibMTL then detaches "
                                 f"the representation for each task, so no loss reaches the shared parameters; build "
                                 f"the Trainer with rep_grad=False")
            epoch = int(getattr(self, "epoch", 0) or 0)
            buffer = getattr(self, "train_loss_buffer", None)
            while self._ours_epoch < epoch:  # the epochs that ended since the last step (trainer.py line 288)
                if buffer is not None:
                    self.ours_method.end_of_epoch(torch.as_tensor(np.asarray(buffer[:, self._ours_epoch]),
                                                                  dtype=torch.float64))
                self._ours_epoch += 1
            shared, specific = self.ours_parameters()
            info = self.ours_method.backward(losses, shared_parameters=shared, task_specific_parameters=specific)
            self.ours_info = info
            return info["weights"].detach().float().cpu().numpy()

        def get_extra_state(self):
            return {EXTRA_STATE_KEY: self.ours_method.state_dict(), "method": key}

        def set_extra_state(self, state) -> None:
            if state.get("method") != key:
                raise ValueError(f"this state holds method {state.get('method')!r}, not {key!r}")
            self.ours_method.load_state_dict(state[EXTRA_STATE_KEY])

    OurWeighting.__name__ = OurWeighting.__qualname__ = f"Ours_{key}"
    return OurWeighting


def register(name: str, method: str, main_task: int = 0, **settings: Any) -> type:
    """``weighting_class(method, ...)`` put into ``LibMTL.weighting`` as ``name``, for ``Trainer(weighting=name)``
    (the trainer looks weightings up there by name, ``trainer.py`` line 108)."""
    import LibMTL.weighting as libmtl_weighting
    cls = weighting_class(method, main_task=main_task, **settings)
    setattr(libmtl_weighting, name, cls)
    return cls


def _cycle(loader):
    while True:
        yielded = False
        for item in loader:
            yielded = True
            yield item
        if not yielded:
            raise ValueError("attach: val_dataloader yields no batch")


def attach(trainer: Any, val_dataloader: Any = None, meta_every: int = 25) -> Dict[str, Any]:
    """Serve the hooks of the method inside ``trainer.model`` (see the module docstring): ``bind_optimizer`` now,
    ``after_step`` and ``meta_update`` from an optimiser step hook. ``val_dataloader`` (single-input: batches
    ``(inputs, {task: label})``) is needed for a method with a meta-update; ``meta_every``: its interval when the
    method does not fix one (``meta_interval``). Returns the hook state (``"handle"``: the step hook's handle,
    ``.remove()`` to detach; ``"meta"``: the last meta-update's result)."""
    model = trainer.model
    method = getattr(model, "ours_method", None)
    if method is None:
        raise TypeError("attach: trainer.model does not run one of our methods (weighting_class / register)")
    if method.meta_before_step:
        raise ValueError(f"attach: {type(method).__name__} learns before the step on the step's own batch "
                         f"(meta_before_step), which LibMTL's loop has no place for")
    if method.has_meta_update and val_dataloader is None:
        raise ValueError(f"attach: {type(method).__name__} has a meta-update: pass val_dataloader=")
    if getattr(trainer, "multi_input", False) and method.has_meta_update:
        raise ValueError("attach: meta-updates are served for single-input trainers (multi_input=False) only")
    method.bind_optimizer(trainer.optimizer)
    state: Dict[str, Any] = {"batch": None, "meta": {}}
    original = trainer.forward4loss

    def forward4loss(model_, inputs, gts, return_preds=False):
        if model_.training:
            state["batch"] = (inputs, gts)
        return original(model_, inputs, gts, return_preds)

    trainer.forward4loss = forward4loss

    def compute_losses(batch):
        inputs, gts = batch
        preds = trainer.process_preds(model(inputs))
        return torch.stack([trainer.meter.losses[task].compute_loss(preds[task], gts[task])
                            for task in trainer.task_name])

    val_batches = _cycle(val_dataloader) if val_dataloader is not None else None

    def to_device(batch):
        inputs, gts = batch
        return inputs.to(trainer.device), {task: gts[task].to(trainer.device) for task in trainer.task_name}

    def after_optimizer_step(optimizer, args, kwargs):
        if state["batch"] is None:
            return
        if method.needs_after_step:
            method.after_step(compute_losses, state["batch"])
        interval = method.meta_interval or meta_every
        if method.has_meta_update and method.step % interval == 0:
            shared, specific = model.ours_parameters()
            state["meta"] = method.meta_update(compute_losses, state["batch"], to_device(next(val_batches)),
                                               shared_parameters=shared, task_specific_parameters=specific)

    state["handle"] = trainer.optimizer.register_step_post_hook(after_optimizer_step)
    return state


__all__ = ["weighting_class", "register", "attach"]
