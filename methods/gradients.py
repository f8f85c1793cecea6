"""Per-task gradients in one flat buffer, and writing a combined gradient back into ``.grad``.

Every gradient-based method (Nash-MTL, AuxiNash, GCS, OL-AUX, PCGrad, CAGrad) needs the K per-task gradients
g_k = ∇L_k of the shared parameters (or of the shared representation) exactly once per step. They are
stacked into a K × P matrix so that the Gram matrix and any combination Σ_k w_k g_k are single matrix
products; the combination is then written straight into ``.grad``: no second backward pass of a weighted loss.

The K gradients come from K backward passes, as in every peer (official AuxiNash ``AvivSham/auxinash``,
Nash-MTL ``AvivNavon/nash-mtl``: one ``torch.autograd.grad`` per task), or optionally from one vectorised
backward pass (``mode="batched"``): the same vector-Jacobian products, batched by vmap.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch.autograd.graph import GradientEdge

log = logging.getLogger(__name__)


@dataclass
class TaskGradients:
    """The K per-task gradients of one step.

    ``shared``: K × P, row k = ∇_shared L_k (shared parameters, or the representation when one was given).
    ``task_specific``: K × Q, row k = ∇ L_k with respect to the task-specific parameters (Q may be 0).
    """

    shared: torch.Tensor
    task_specific: torch.Tensor
    #: per shared input: whether any task's loss reached it (None: all); unused ones keep ``.grad`` None
    shared_used: Optional[List[bool]] = None
    specific_used: Optional[List[bool]] = None
    #: the Gram matrix when it is not that of ``shared`` (the representation's, summed over distributed ranks)
    gram_override: Optional[torch.Tensor] = None

    def gram(self) -> torch.Tensor:
        """The K × K Gram matrix G Gᵀ, accumulated and returned in float64 on the gradients' device.

        Gradients keep the model's dtype; their squares may not (an fp16 gradient of norm 300 has a squared norm
        above fp16's 65,504), so the small K × K algebra of every method starts from this float64 matrix.
        """
        if self.gram_override is not None:
            return self.gram_override
        return gram64(self.shared)

    def drop_unused(self, sizes_shared: Sequence[int], sizes_specific: Sequence[int]) -> "TaskGradients":
        """The same gradients without the columns of inputs that no task's loss reached (``*_used`` False).

        Those columns are all zeros, but they still move the other columns' places in the Gram matrix's sum (its
        floating-point summation order), so a model with a parameter that no loss reaches would otherwise get
        weights 1e-16 away from the same model without it, and an iterative solver turns that into a difference of
        its stopping tolerance. Without them the matrices are column for column those of the list without the
        unused parameters, so both give bit-identical weights. ``write_grad`` takes the compacted vector with the
        same ``used`` mask. ``sizes_*``: ``numel()`` of each input, in order. Returns ``self`` when all were used."""
        def compact(matrix, used, sizes):
            if used is None or all(used):
                return matrix
            keep = torch.cat([torch.full((n,), bool(u), dtype=torch.bool) for u, n in zip(used, sizes)])
            return matrix[:, keep.to(matrix.device)]
        return TaskGradients(shared=compact(self.shared, self.shared_used, sizes_shared),
                             task_specific=compact(self.task_specific, self.specific_used, sizes_specific),
                             shared_used=self.shared_used, specific_used=self.specific_used,
                             gram_override=self.gram_override)


GRAM_CHUNK = 1 << 20  # columns converted to float64 at a time: bounded extra memory for large models


def gram64(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix @ matrix.T`` in float64, the columns converted in chunks of ``GRAM_CHUNK``."""
    k, n = matrix.shape
    if matrix.dtype == torch.float64:
        return matrix @ matrix.T
    gram = torch.zeros(k, k, dtype=torch.float64, device=matrix.device)
    for start in range(0, n, GRAM_CHUNK):
        block = matrix[:, start:start + GRAM_CHUNK].double()
        gram += block @ block.T
    return gram


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which a combination Σ_k w_k g_k is formed: float32 at least (then cast to the parameters')."""
    return torch.promote_types(dtype, torch.float32)


def flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``tensors`` into one vector; a None entry (unused input) counts as zeros shaped like ``like``."""
    if not like:
        return torch.zeros(0)
    return torch.cat([(t if t is not None else torch.zeros_like(x)).reshape(-1) for t, x in zip(tensors, like)])


GRADIENT_MODES = ("loop", "batched")
DEFAULT_GRADIENT_MODE = "loop"
"""K backward passes by default: on the CPU the batched backward was no faster (measurements:
``results/speed/README.md``). ``batched`` gives the same gradients (tests/test_speed_paths.py); choose it
per call (``mode=``) or for every method by setting this attribute, e.g. on a GPU after timing it there."""

_logged_fallbacks: set = set()


def per_task_gradients(
    losses: torch.Tensor,
    shared: Sequence[torch.Tensor],
    task_specific: Sequence[torch.Tensor] = (),
    mode: str | None = None,
) -> TaskGradients:
    """Compute ∇L_k for every k, as K backward passes (``mode="loop"``) or one batched backward ("batched").

    ``shared`` is a list of shared parameters, or a one-element list holding the shared representation.
    ``mode`` None means ``DEFAULT_GRADIENT_MODE``. "batched" runs ``torch.autograd.grad`` once with the K unit
    vectors as a batch of output gradients (``is_grads_batched=True``: a vmap over the backward pass, the
    same products as the K passes); where an op of the backward pass has no batching rule it falls back to
    the K passes and logs the reason once. The graph of ``losses`` is kept either way.
    """
    mode = DEFAULT_GRADIENT_MODE if mode is None else mode
    if mode not in GRADIENT_MODES:
        raise ValueError(f"unknown per-task gradient mode {mode!r}; choose one of {GRADIENT_MODES}")
    if losses.dim() != 1:
        raise ValueError(f"losses must be the 1-D tensor of the K task losses, got shape {tuple(losses.shape)}")
    inputs = list(shared) + list(task_specific)
    n_shared = len(shared)
    rows_shared = rows_specific = None
    _batched_used = None
    if mode == "batched":
        try:
            rows_shared, rows_specific, _batched_used = _batched_rows(losses, inputs, n_shared)
        except RuntimeError as error:  # an op of the backward pass that vmap cannot batch
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if reason not in _logged_fallbacks:
                _logged_fallbacks.add(reason)
                log.warning("batched per-task gradients unavailable, using %d backward passes: %s",
                            len(losses), reason[:200])
    used = [True] * len(inputs)
    if rows_shared is None:
        rows_shared, rows_specific, used = _looped_rows(losses, inputs, n_shared)
    else:
        used = _batched_used
    device = losses.device
    specific = rows_specific if task_specific else torch.zeros(len(losses), 0, device=device)
    return TaskGradients(shared=rows_shared, task_specific=specific, shared_used=list(used[:n_shared]),
                         specific_used=list(used[n_shared:]))


def task_outputs(losses: torch.Tensor) -> List[Optional[Tuple[Union[torch.Tensor, GradientEdge], torch.Tensor]]]:
    """For each k, what to differentiate for ∇L_k: (output, grad_output), or None where L_k is a constant.

    ``losses[k]`` would be the obvious output, but when ``losses`` was built by ``torch.stack`` its backward
    hands a zero gradient to every other task's loss, and autograd then runs the other K − 1 heads' backward
    passes on zeros (in every one of the K passes). So where ``losses`` is a stack of the K scalar losses, the
    output is the edge into the k-th loss's own graph (a ``GradientEdge``): pass k visits the shared trunk and
    head k only, and the other heads get no gradient (None). Same values; any other ``losses`` falls back to
    ``losses[k]``."""
    node = losses.grad_fn
    one = torch.ones((), dtype=losses.dtype, device=losses.device)
    if node is not None and node.name() == "StackBackward0" and getattr(node, "_saved_dim", None) == 0 \
            and len(node.next_functions) == len(losses):
        return [None if edge is None else (GradientEdge(edge, index), one) for edge, index in node.next_functions]
    return [(losses[k], one) for k in range(len(losses))]


def _looped_rows(losses: torch.Tensor, inputs: Sequence[torch.Tensor], n_shared: int):
    """K × P and K × Q gradient matrices from K backward passes (``task_outputs``: pass k does no work for the
    other tasks' heads), each gradient copied once into its slot of a preallocated buffer (rather than
    flattened by ``torch.cat`` and copied again by ``torch.stack``); slots without a gradient stay zero. Also
    returns which inputs any task's gradient reached (the others keep ``.grad`` None, as ``torch.optim`` would)."""
    k_tasks = len(losses)
    outputs = task_outputs(losses)

    reached = [False] * len(inputs)

    def grads(k):
        if outputs[k] is None:  # a constant loss: no gradient anywhere
            return [None] * len(inputs)
        output, grad_output = outputs[k]
        found = torch.autograd.grad([output], inputs, grad_outputs=[grad_output], retain_graph=True,
                                    allow_unused=True)
        reached[:] = [r or g is not None for r, g in zip(reached, found)]
        return found

    dtype = inputs[0].dtype if inputs else losses.dtype
    if any(x.dtype != dtype for x in inputs):  # mixed precisions: flatten promotes them as torch.cat does
        rows = [grads(k) for k in range(k_tasks)]
        shared = torch.stack([flatten(g[:n_shared], inputs[:n_shared]) for g in rows])
        specific = torch.stack([flatten(g[n_shared:], inputs[n_shared:]) for g in rows]) if len(inputs) > n_shared \
            else None
        return shared, specific, reached
    sizes = [x.numel() for x in inputs]
    n_p = sum(sizes[:n_shared])
    shared = torch.empty(k_tasks, n_p, dtype=dtype, device=losses.device)
    specific = torch.zeros(k_tasks, sum(sizes) - n_p, dtype=dtype, device=losses.device) \
        if len(inputs) > n_shared else None
    for k in range(k_tasks):
        offset = 0
        for i, (grad, size) in enumerate(zip(grads(k), sizes)):
            row, start = (shared[k], offset) if i < n_shared else (specific[k], offset - n_p)
            if grad is not None:
                row[start:start + size].copy_(grad.reshape(-1))
            elif i < n_shared:  # the task-specific buffer starts zeroed; the shared one is filled slot by slot
                row[start:start + size].zero_()
            offset += size
    return shared, specific, reached


def _batched_rows(losses: torch.Tensor, inputs: Sequence[torch.Tensor], n_shared: int):
    """K × P and K × Q gradient matrices from one vmapped backward pass (rows of unused inputs are zeros)."""
    k = len(losses)
    basis = torch.eye(k, dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(losses, inputs, grad_outputs=basis, retain_graph=True, allow_unused=True,
                                is_grads_batched=True)
    columns = [(g if g is not None else torch.zeros((k, *x.shape), dtype=x.dtype, device=x.device)).reshape(k, -1)
               for g, x in zip(grads, inputs)]
    shared = torch.cat(columns[:n_shared], dim=1) if n_shared else losses.new_zeros(k, 0)
    specific = torch.cat(columns[n_shared:], dim=1) if len(inputs) > n_shared else None
    return shared, specific, [g is not None for g in grads]


def write_grad(parameters: Sequence[torch.Tensor], flat: torch.Tensor, used: Optional[Sequence[bool]] = None) -> None:
    """Add the flat vector ``flat`` to the ``.grad`` of ``parameters`` (in order), slice by slice; a parameter
    whose ``used`` entry is False (no loss reached it) is left as it is (``.grad`` None, as a backward pass) and
    has no slice in ``flat`` (``TaskGradients.drop_unused``), so ``flat`` holds Σ numel of the used parameters."""
    offset = 0
    for index, param in enumerate(parameters):
        n = param.numel()
        if used is not None and not used[index]:
            continue
        piece = flat[offset:offset + n].view_as(param).to(param.dtype)
        if param.grad is None:
            param.grad = piece.clone()
        else:
            param.grad.add_(piece)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat gradient has {flat.numel()} entries but the (used) parameters hold {offset}")
