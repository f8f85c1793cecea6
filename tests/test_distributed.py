"""Several processes (torch.distributed, gloo on the CPU), registry-wide: with the union batch split into equal
shards, every method's replicas take identical steps, equal to one process on the union batch (mean losses),
meta-updates included (issue 21). Two processes, each on its shard, against a single-process run here."""
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from methods import METHOD_NAMES, get_method, method_settings
from tests.helpers import TinyMultiTask, make_batch

STEPS = 21  # past OL-AUX's first weight iteration (step 20); meta-updates every 5 steps
META_EVERY = 5
N = 16  # union batch; each of the two ranks gets 8
MODES = ("parameters", "representation")


def shard(batch, rank, world):
    x, ys = batch
    size = len(x) // world
    part = slice(rank * size, (rank + 1) * size)
    return x[part], [y[part] for y in ys]


def losses_and_representation(model, batch):
    x, ys = batch
    h = model.shared(x)
    return torch.stack([((head(h) - y) ** 2).mean() for head, y in zip(model.heads, ys)]), h


def run_method(name, mode, rank=0, world=1):
    """``STEPS`` SGD steps of ``name`` on this rank's shard; the parameters and weights of every step."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    declared = mode == "representation" and "gradient_space" in method_settings(name)  # the others ignore it
    method = get_method(name, 3, **({"gradient_space": "representation"} if declared else {}))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    union = make_batch(n=N, seed=0)
    union_val = make_batch(n=N, seed=1)
    batch = shard((union[0].double(), [y.double() for y in union[1]]), rank, world)
    val = shard((union_val[0].double(), [y.double() for y in union_val[1]]), rank, world)
    weights, parameters = [], []
    for step in range(1, STEPS + 1):
        optimizer.zero_grad(set_to_none=True)
        losses, h = losses_and_representation(model, batch)
        info = method.backward(losses, model.shared_parameters(), model.task_specific_parameters(),
                               representation=h if mode == "representation" else None)
        optimizer.step()
        if step % META_EVERY == 0:
            method.meta_update(model.losses, batch, val, model.shared_parameters())
        weights.append(info["weights"].detach().double().clone())
        parameters.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    return {"weights": torch.stack(weights), "parameters": torch.stack(parameters)}


def run_all(rank=0, world=1):
    return {(name, mode): run_method(name, mode, rank, world) for name in METHOD_NAMES for mode in MODES}


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(run_all(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    context = mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=False)
    deadline = time.time() + 300
    while not context.join(timeout=5):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo processes did not finish within 300 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_process():
    return run_all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_ranks_stay_identical_and_equal_one_process_on_the_union(name, mode, two_ranks, one_process):
    first, second = (r[(name, mode)] for r in two_ranks)
    single = one_process[(name, mode)]
    for key in ("weights", "parameters"):
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=1e-13)  # identical replicas
        # = the union batch, to the solvers' tolerance (CAGrad's barrier method: ~1e-7 relative)
        torch.testing.assert_close(first[key], single[key], rtol=1e-6, atol=1e-8)
    assert not torch.equal(single["parameters"][0], single["parameters"][-1])  # it did train


def test_helpers_are_no_ops_outside_torch_distributed():
    from methods.distributed import average, average_grads_, differentiable_mean, world_size
    assert world_size() == 1
    t = torch.arange(3.0)
    assert average([t])[0] is t and differentiable_mean(t) is t
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    average_grads_([p])
    assert p.grad.tolist() == [3.0, 3.0]
