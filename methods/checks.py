"""What every method checks at its API edge, in one place, so that every method answers the same bad input the
same way: the right result, or at the first call a ``TypeError`` / ``ValueError`` / ``FloatingPointError`` that
names the argument or the task and says what to do.

- ``losses``: a 1-D floating tensor of the K task losses (K = the method's ``n_tasks``), with autograd history,
  every one finite (a NaN or infinite loss of task k raises ``FloatingPointError`` naming k);
- parameter lists (``shared_parameters``, ``task_specific_parameters``): an iterable of tensors (not a single
  tensor, a module or ``named_parameters()``); parameters with ``requires_grad=False`` are skipped as
  ``torch.optim`` skips them (their ``.grad`` stays None); a parameter listed twice counts once; a parameter in
  both lists is an error; an iterator that yields nothing (a ``model.parameters()`` generator that an earlier step
  consumed) is an error, and so is an empty ``shared_parameters`` (a list whose parameters are all frozen is not
  empty: it is legal);
- every trainable tensor that a loss reaches is in one of the two lists (``check_unlisted_leaves``, once per method
  instance, at its first call): a method that takes per-task gradients would leave one that is in neither untrained;
- ``representation``: None or a tensor with autograd history.

``method`` in each function is the call that the message names, e.g. ``"AuxiNash.backward"``.
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
        raise TypeError(f"{method}: losses must be a 1-D tensor of the {n_tasks} task losses, got a "
                        f"{type(losses).__name__}{hint}")
    if not losses.is_floating_point():
        raise TypeError(f"{method}: losses must be a floating-point tensor, got {losses.dtype}")
    if losses.dim() != 1 or losses.shape[0] != n_tasks:
        raise ValueError(f"{method}: losses must have shape ({n_tasks},), one mean loss per task in task "
                         f"order, got shape {tuple(losses.shape)} (reduce each task's loss to a scalar and stack them; "
                         f"the method was built with n_tasks={n_tasks})")
    if not losses.requires_grad:
        raise ValueError(f"{method}: losses have no autograd history; compute them from the model with "
                         f"gradients enabled (not under torch.no_grad() or from detached tensors)")
    values = losses.detach()
    if is_distributed():
        values = average_one(values)
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = [k for k, ok in enumerate(finite.tolist()) if not ok]
        raise FloatingPointError(f"{method}: the loss of task {', '.join(map(str, bad))} is NaN or "
                                 f"infinite ({values.tolist()}); check the data and the model's outputs, or lower "
                                 f"the learning rate")
    return values


def parameter_list(parameters: Optional[Iterable[torch.Tensor]], argument: str, method: str,
                   required: bool = False) -> List[torch.Tensor]:
    """The trainable tensors of ``parameters`` (``requires_grad`` True), each once, in order. ``required``: an
    empty list is an error (``shared_parameters``); an iterator that yields nothing always is."""
    if parameters is None:
        if required:
            raise ValueError(f"{method}: {argument} is None; pass the list of the shared parameters, e.g. "
                             f"list(model.shared.parameters())")
        return []
    if isinstance(parameters, torch.Tensor):
        raise TypeError(f"{method}: {argument} must be an iterable of tensors, got a single tensor; wrap it "
                        f"in a list ([tensor])")
    if isinstance(parameters, torch.nn.Module):
        raise TypeError(f"{method}: {argument} must be an iterable of tensors, got a module; pass "
                        f"list(module.parameters())")
    try:
        items = list(parameters)
    except TypeError:
        raise TypeError(f"{method}: {argument} must be an iterable of tensors, got "
                        f"{type(parameters).__name__}") from None
    if not items and (required or iter(parameters) is parameters):
        what = ("an iterator that yields nothing: a generator such as model.parameters() is used up by its first "
                "call, so the same generator passed again on a later step is empty" if iter(parameters) is parameters
                else "empty")
        raise ValueError(f"{method}: {argument} is {what}; build the list once, before the loop: "
                         f"{argument}=list(model.parameters()) (or the part of the model it names)")
    kept, seen = [], set()
    for item in items:
        if not isinstance(item, torch.Tensor):
            hint = " (pass model.parameters(), not named_parameters() or a state dict)" \
                if isinstance(item, (str, tuple)) else ""
            raise TypeError(f"{method}: {argument} must hold tensors, got a {type(item).__name__}{hint}")
        if not item.requires_grad:
            continue  # frozen: skipped, as torch.optim skips it; its .grad stays None
        if id(item) in seen:
            continue
        seen.add(id(item))
        kept.append(item)
    return kept


def check_parameters(shared, specific, method: str):
    """``parameter_list`` of both lists; a parameter in both is a ValueError."""
    shared = parameter_list(shared, "shared_parameters", method, required=True)
    specific = parameter_list(specific, "task_specific_parameters", method)
    overlap = {id(p) for p in shared} & {id(p) for p in specific}
    if overlap:
        raise ValueError(f"{method}: {len(overlap)} parameter(s) appear in both shared_parameters and "
                         f"task_specific_parameters; list each parameter in one of them")
    return shared, specific


def check_representation(representation, method: str) -> None:
    if representation is None:
        return
    if not isinstance(representation, torch.Tensor):
        raise TypeError(f"{method}: representation must be a tensor or None, got "
                        f"{type(representation).__name__}")
    if not representation.requires_grad:
        raise ValueError(f"{method}: representation has no autograd history; pass the shared encoder's "
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
            raise ValueError(f"{method}: the loss of task {k} does not depend on the representation passed "
                             f"to backward, so per-task gradients with respect to it (gradient_space='representation', "
                             f"the trainers' --representation / --fast) would drop that loss from the shared encoder; "
                             f"compute every loss from that representation, or build the method with "
                             f"gradient_space='parameters'")


def _leaves(root) -> dict:
    """id → tensor of every leaf (``AccumulateGrad`` node) in the autograd graph below ``root``."""
    found, stack, seen = {}, [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            found[id(variable)] = variable
        stack.extend(child for child, _ in node.next_functions)
    return found


def check_unlisted_leaves(losses: torch.Tensor, listed: Iterable[torch.Tensor], method: str,
                          representation: Optional[torch.Tensor] = None) -> None:
    """ValueError naming every trainable tensor that a loss reaches but that is in neither parameter list (e.g.
    heads left out of ``task_specific_parameters``), and the tasks whose losses reach it.

    An error, not a warning: a method that takes per-task gradients writes ``.grad`` of the listed parameters only,
    so such a tensor would silently stay untrained (linear scalarisation and STL, one ``loss.backward()``, would
    train it), and a comparison of methods in that loop would compare different models. It is raised at the first
    call, before any ``.grad`` is written; the walk over the losses' graph runs once per method instance.
    ``representation``, if given, is not counted (a user may pass a detached copy that the heads read)."""
    from torch.autograd.graph import GradientEdge

    from .gradients import task_outputs

    listed_ids = {id(p) for p in listed} | {id(representation)}  # a representation made a leaf is no parameter
    unlisted = {key: t for key, t in _leaves(losses.grad_fn).items() if key not in listed_ids}
    if not unlisted:
        return
    reached_by: dict = {key: [] for key in unlisted}
    for k, target in enumerate(task_outputs(losses)):
        if target is None:
            continue
        output = target[0]
        root = output.node if isinstance(output, GradientEdge) else output.grad_fn
        for key in _leaves(root).keys() & unlisted.keys():
            reached_by[key].append(k)
    described = [f"{'a parameter' if isinstance(t, torch.nn.Parameter) else 'a leaf tensor'} of shape "
                 f"{tuple(t.shape)} ({str(t.dtype).removeprefix('torch.')}, reached by the loss of task"
                 f"{'s' if len(reached_by[key]) > 1 else ''} {', '.join(map(str, reached_by[key]))})"
                 for key, t in unlisted.items()]
    more = f" and {len(described) - 5} more" if len(described) > 5 else ""
    raise ValueError(f"{method}: the losses reach {len(unlisted)} trainable tensor(s) that are in neither "
                     f"shared_parameters nor task_specific_parameters: {'; '.join(described[:5])}{more}. A method "
                     f"that takes per-task gradients would leave them untrained. List each of them in one of the two "
                     f"(a task's head in task_specific_parameters), or set requires_grad=False on those that must not "
                     f"train")
