"""What every method checks at its API edge, in one place, so that every method answers the same bad input the
same way: the right result, or at the first call a ``TypeError`` / ``ValueError`` / ``FloatingPointError`` that
names the argument or the task and says what to do.

- ``losses``: a 1-D floating tensor of the K task losses (K = the method's ``n_tasks``), with autograd history,
  every one finite (a NaN or infinite loss of task k raises ``FloatingPointError`` naming k);
- parameter lists (``shared_parameters``, ``task_specific_parameters``): an iterable of tensors (not a single
  tensor, a module or ``named_parameters()``); parameters with ``requires_grad=False`` are skipped as
  ``torch.optim`` skips them (their ``.grad`` stays None); a parameter listed twice counts once; a parameter in
  both lists is an error;
- ``representation``: None or a tensor with autograd history.
"""
from __future__ import annotations

from typing import Iterable, List, Optional

import torch

from .distributed import average_one, is_distributed


def check_losses(losses, n_tasks: int, method: str) -> torch.Tensor:
    """Validate ``losses``; return their detached values (averaged over the ranks under torch.distributed, so
    that a non-finite loss on any rank stops every rank)."""
    if not isinstance(losses, torch.Tensor):
        hint = " (pass torch.stack(losses))" if isinstance(losses, (list, tuple)) else ""
        raise TypeError(f"{method}.backward: losses must be a 1-D tensor of the {n_tasks} task losses, got a "
                        f"{type(losses).__name__}{hint}")
    if not losses.is_floating_point():
        raise TypeError(f"{method}.backward: losses must be a floating-point tensor, got {losses.dtype}")
    if losses.dim() != 1 or losses.shape[0] != n_tasks:
        raise ValueError(f"{method}.backward: losses must have shape ({n_tasks},), one mean loss per task in task "
                         f"order, got shape {tuple(losses.shape)} (reduce each task's loss to a scalar and stack them; "
                         f"the method was built with n_tasks={n_tasks})")
    if not losses.requires_grad:
        raise ValueError(f"{method}.backward: losses have no autograd history; compute them from the model with "
                         f"gradients enabled (not under torch.no_grad() or from detached tensors)")
    values = losses.detach()
    if is_distributed():
        values = average_one(values)
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = [k for k, ok in enumerate(finite.tolist()) if not ok]
        raise FloatingPointError(f"{method}.backward: the loss of task {', '.join(map(str, bad))} is NaN or "
                                 f"infinite ({values.tolist()}); check the data and the model's outputs, or lower "
                                 f"the learning rate")
    return values


def parameter_list(parameters: Optional[Iterable[torch.Tensor]], argument: str, method: str) -> List[torch.Tensor]:
    """The trainable tensors of ``parameters`` (``requires_grad`` True), each once, in order."""
    if parameters is None:
        return []
    if isinstance(parameters, torch.Tensor):
        raise TypeError(f"{method}.backward: {argument} must be an iterable of tensors, got a single tensor; wrap it "
                        f"in a list ([tensor])")
    if isinstance(parameters, torch.nn.Module):
        raise TypeError(f"{method}.backward: {argument} must be an iterable of tensors, got a module; pass "
                        f"list(module.parameters())")
    try:
        items = list(parameters)
    except TypeError:
        raise TypeError(f"{method}.backward: {argument} must be an iterable of tensors, got "
                        f"{type(parameters).__name__}") from None
    kept, seen = [], set()
    for item in items:
        if not isinstance(item, torch.Tensor):
            hint = " (pass model.parameters(), not named_parameters() or a state dict)" \
                if isinstance(item, (str, tuple)) else ""
            raise TypeError(f"{method}.backward: {argument} must hold tensors, got a {type(item).__name__}{hint}")
        if not item.requires_grad:
            continue  # frozen: skipped, as torch.optim skips it; its .grad stays None
        if id(item) in seen:
            continue
        seen.add(id(item))
        kept.append(item)
    return kept


def check_parameters(shared, specific, method: str):
    """``parameter_list`` of both lists; a parameter in both is a ValueError."""
    shared = parameter_list(shared, "shared_parameters", method)
    specific = parameter_list(specific, "task_specific_parameters", method)
    overlap = {id(p) for p in shared} & {id(p) for p in specific}
    if overlap:
        raise ValueError(f"{method}.backward: {len(overlap)} parameter(s) appear in both shared_parameters and "
                         f"task_specific_parameters; list each parameter in one of them")
    return shared, specific


def check_representation(representation, method: str) -> None:
    if representation is None:
        return
    if not isinstance(representation, torch.Tensor):
        raise TypeError(f"{method}.backward: representation must be a tensor or None, got "
                        f"{type(representation).__name__}")
    if not representation.requires_grad:
        raise ValueError(f"{method}.backward: representation has no autograd history; pass the shared encoder's "
                         f"output that the losses were computed from")


def _graph_reaches(root, target: torch.Tensor) -> bool:
    """Whether the autograd graph below ``root`` (a node) contains ``target`` (its grad_fn, or a leaf's
    AccumulateGrad node)."""
    target_fn = target.grad_fn
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node is target_fn or (target_fn is None and getattr(node, "variable", None) is target):
            return True
        stack.extend(child for child, _ in node.next_functions)
    return False


def check_losses_reach(losses: torch.Tensor, representation: torch.Tensor, method: str) -> None:
    """ValueError naming the first task whose loss was not computed from ``representation``: its gradient with
    respect to the representation would be zero and the shared encoder would never receive that loss (a task with
    its own encoder pass, e.g. a rotated view). Constant losses (no graph) pass."""
    from torch.autograd.graph import GradientEdge

    from .gradients import task_outputs  # per-task roots of the stacked losses

    for k, target in enumerate(task_outputs(losses)):
        if target is None:
            continue
        output = target[0]
        root = output.node if isinstance(output, GradientEdge) else output.grad_fn
        if root is not None and not _graph_reaches(root, representation):
            raise ValueError(f"{method}.backward: the loss of task {k} does not depend on the representation passed "
                             f"to backward, so per-task gradients with respect to it (representation= / fast mode) "
                             f"would drop that loss from the shared encoder; compute every loss from that "
                             f"representation, or use the exact mode (representation=None)")
