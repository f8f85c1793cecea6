"""Training with a weighting method on several processes (GPUs, or CPU processes), torchrun-compatible.

    torchrun --nproc_per_node=2 examples/ddp_example.py --method auxinash
    python examples/ddp_example.py --method auxinash        # starts 2 CPU processes itself (gloo)

Do not wrap the model in DistributedDataParallel: once ``torch.distributed`` is initialised, every method averages
over the ranks what it computes from gradients (per-task gradients or their Gram matrix, the ``.grad`` it writes,
the meta-updates' gradients and Hessian-vector products), so that with equal shards and mean losses every rank
takes the step one process would take on the union of the batches. Start every rank from the same parameters
(the same seed, or broadcast them once) and give each its own shard of every batch.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from methods import METHOD_NAMES, get_method  # the package installed with `pip install -e .`


class Model(nn.Module):
    """A shared trunk and one linear head per task."""

    def __init__(self, n_tasks: int = 3) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(16, 1) for _ in range(n_tasks)])

    def losses(self, batch):  # mean losses over the (local) batch, one per task
        x, y = batch
        h = self.trunk(x)
        return torch.stack([nn.functional.mse_loss(head(h).squeeze(1), y[:, k]) for k, head in enumerate(self.heads)])


def run(method_name: str, steps: int, device: torch.device) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial parameters on every rank
    model = Model().to(device)
    shared, specific = list(model.trunk.parameters()), list(model.heads.parameters())
    method = get_method(method_name, n_tasks=3, main_task=0, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(1)  # the same stream of global batches on every rank ...
    for step in range(1, steps + 1):
        x = torch.randn(64, 8, generator=data)
        y = torch.stack([x[:, :3].sum(1), x[:, 2:5].sum(1), torch.randn(64, generator=data)], dim=1)
        part = slice(rank * 64 // world, (rank + 1) * 64 // world)  # ... of which each rank takes its shard
        batch = (x[part].to(device), y[part].to(device))
        optimizer.zero_grad(set_to_none=True)
        info = method.backward(model.losses(batch), shared, specific)
        optimizer.step()
        if step % 25 == 0:  # meta-update (for brevity on the step's own shard as both L_T and L_V batch)
            method.meta_update(model.losses, batch, batch, shared)
    checksum = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    if rank == 0:
        same = all(torch.equal(g, gathered[0]) for g in gathered)
        print(f"{method_name}: {world} ranks, {steps} steps, weights {info['weights'].tolist()}, "
              f"replicas identical: {same}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="auxinash", choices=METHOD_NAMES)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--nproc", type=int, default=2, help="processes to start without torchrun")
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # started by torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args, None)
    else:
        mp.spawn(worker, args=(args.nproc, args, f"file://{os.path.abspath('.ddp_example_init')}.{os.getpid()}"),
                 nprocs=args.nproc)


def worker(rank: int, world: int, args, init_method) -> None:
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    device = torch.device("cuda", rank % max(torch.cuda.device_count(), 1)) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    if init_method is None:
        dist.init_process_group(backend)  # torchrun's environment
    else:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    try:
        run(args.method, args.steps, device)
    finally:
        dist.destroy_process_group()
        if init_method is not None and rank == 0 and os.path.exists(init_method[len("file://"):]):
            os.remove(init_method[len("file://"):])


if __name__ == "__main__":
    main()
