"""Per-task gradients in one flat buffer, and writing a combined gradient back into ``.grad``.

Every gradient-based method (Nash-MTL, AuxiNash, GCS, OL-AUX, PCGrad, CAGrad) needs the K per-task gradients
g_k = ∇L_k of the shared parameters (or of the shared representation) exactly once per step. They are
stacked into a K × P matrix so that the Gram matrix and any combination Σ_k w_k g_k are single matrix
products; the combination is then written straight into ``.grad``: no second backward pass of a weighted loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class TaskGradients:
    """The K per-task gradients of one step.

    ``shared``: K × P, row k = ∇_shared L_k (shared parameters, or the representation when one was given).
    ``task_specific``: K × Q, row k = ∇ L_k with respect to the task-specific parameters (Q may be 0).
    """

    shared: torch.Tensor
    task_specific: torch.Tensor

    def gram(self) -> torch.Tensor:
        """The K × K Gram matrix G Gᵀ in float64 (accumulated in the gradients' precision)."""
        return (self.shared @ self.shared.T).double()


def flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``tensors`` into one vector; a None entry (unused input) counts as zeros shaped like ``like``."""
    if not like:
        return torch.zeros(0)
    return torch.cat([(t if t is not None else torch.zeros_like(x)).reshape(-1) for t, x in zip(tensors, like)])


def per_task_gradients(
    losses: torch.Tensor,
    shared: Sequence[torch.Tensor],
    task_specific: Sequence[torch.Tensor] = (),
) -> TaskGradients:
    """Compute ∇L_k for every k with one backward pass each (the graph is kept until the last one).

    ``shared`` is a list of shared parameters, or a one-element list holding the shared representation.
    """
    inputs = list(shared) + list(task_specific)
    n_shared = len(shared)
    rows_shared, rows_specific = [], []
    for k in range(len(losses)):
        grads = torch.autograd.grad(losses[k], inputs, retain_graph=True, allow_unused=True)
        rows_shared.append(flatten(grads[:n_shared], inputs[:n_shared]))
        rows_specific.append(flatten(grads[n_shared:], inputs[n_shared:]))
    device = losses.device
    specific = torch.stack(rows_specific) if task_specific else torch.zeros(len(losses), 0, device=device)
    return TaskGradients(shared=torch.stack(rows_shared), task_specific=specific)


def write_grad(parameters: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Add the flat vector ``flat`` to the ``.grad`` of ``parameters`` (in order), slice by slice."""
    offset = 0
    for param in parameters:
        n = param.numel()
        piece = flat[offset:offset + n].view_as(param).to(param.dtype)
        if param.grad is None:
            param.grad = piece.clone()
        else:
            param.grad.add_(piece)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat gradient has {flat.numel()} entries but the parameters hold {offset}")
