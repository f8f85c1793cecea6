"""Averaging across processes when ``torch.distributed`` is initialised (several GPUs, DistributedDataParallel).

The methods write ``.grad`` themselves from per-task gradients taken with ``torch.autograd.grad``, which
DistributedDataParallel's all-reduce never sees. So every method averages, across ranks, every quantity it
computes from gradients: the per-task gradient matrix (or the Gram matrix of representation gradients), the
``.grad`` it leaves, the detached losses its weights depend on, and every gradient and Hessian-vector product of
a meta-update. With equal shards and mean losses, each rank then takes the step one process would take on the
union of the ranks' batches, and all replicas stay identical. Outside ``torch.distributed`` (or with one rank)
every helper here is a no-op.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist


def world_size() -> int:
    """The number of processes whose results are averaged (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_distributed() -> bool:
    return world_size() > 1


def _reduce_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision values are summed in float32 (an fp16 sum over ranks may overflow)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def average(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The mean of each tensor over the ranks (new tensors in the inputs' dtypes; one all-reduce per dtype and
    device). Returns the inputs themselves outside torch.distributed."""
    tensors = list(tensors)
    n = world_size()
    if n == 1 or not tensors:
        return tensors
    out: List[torch.Tensor] = [t for t in tensors]
    groups: dict = {}
    for i, t in enumerate(tensors):
        groups.setdefault((_reduce_dtype(t.dtype), t.device), []).append(i)
    for (dtype, _), indices in groups.items():
        flat = torch.cat([tensors[i].detach().reshape(-1).to(dtype) for i in indices])
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for i in indices:
            size = tensors[i].numel()
            out[i] = flat[offset:offset + size].view_as(tensors[i]).to(tensors[i].dtype)
            offset += size
    return out


def average_one(tensor: torch.Tensor) -> torch.Tensor:
    return average([tensor])[0]


def sum_one(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over the ranks (the input itself outside torch.distributed)."""
    if world_size() == 1:
        return tensor
    return average_one(tensor) * world_size()


def used_on_any_rank(used: Optional[Sequence[bool]], device: torch.device) -> Optional[List[bool]]:
    """Per input, whether any rank's losses reached it (one all-reduce of a 0/1 vector; the input itself outside
    torch.distributed or when None; ``device``: where the backend can reduce, the gradients'). Every rank then keeps the same gradient columns, so the K × P average lines
    up, and a parameter that some rank's batch reached gets that rank's gradient averaged with zeros elsewhere."""
    if used is None or world_size() == 1:
        return None if used is None else list(used)
    flags = torch.tensor([1.0 if u else 0.0 for u in used], dtype=torch.float32, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [bool(f > 0) for f in flags.tolist()]


def average_grads_(parameters: Sequence[torch.Tensor]) -> None:
    """Replace every ``.grad`` of ``parameters`` by its mean over the ranks (in place; None stays None)."""
    if world_size() == 1:
        return
    with_grad = [p for p in parameters if p.grad is not None]
    for parameter, mean in zip(with_grad, average([p.grad for p in with_grad])):
        parameter.grad.copy_(mean)


def differentiable_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over the ranks, differentiable (its backward all-reduces the incoming gradient): a loss built on
    it has, summed over the ranks' backward passes, the gradient of the loss of the union of the batches. Used
    where a meta-update differentiates a nonlinear function of the losses (AuxiLearn's network) twice."""
    if world_size() == 1:
        return tensor
    import warnings
    from torch.distributed.nn.functional import all_reduce  # the autograd-aware all-reduce
    with warnings.catch_warnings():  # deprecated in favour of _functional_collectives, whose version has no backward
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(tensor) / world_size()
