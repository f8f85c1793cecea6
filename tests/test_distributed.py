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

# Two ranks against one process (issue 29). The ranks average their shards' gradients, so every sum over the union
# batch is done in another order: a 1e-16 relative difference at each step. Closed-form weights pass it on (21 steps:
# measured ≤ 7e-15 absolute), so 1e-10 / 1e-12 leaves a factor 100 for another machine's rounding. An iterative
# solve turns it into a difference of up to its stopping rule:
ROUND_OFF = dict(rtol=1e-10, atol=1e-12)
UNION_TOLERANCE = {
    # Newton to relative residual 1e-8: |δα_k| / α_k ≤ κ · 1e-8 per solve with κ = ‖p‖ max_k (|J⁻¹| 1)_k / α_k ≤ 1.4
    # on these steps (J = diag(Mα) + diag(α) M), 2.8e-8 for the two runs; the clipped update (norm ≤ 1) then moves
    # θ by ≤ 21 · 0.05 · 2.8e-8 = 3e-8 (measured: 4e-9 relative, 2e-8 absolute)
    "nashmtl": dict(rtol=1e-6, atol=1e-6),
    "auxinash": dict(rtol=1e-6, atol=1e-6),
    # the barrier method stops at a duality gap of 1e-10 on the normalised problem: that bounds F(w) − F*, and w
    # only to √(2 · 1e-10 / μ) ≤ 5e-5 per solve, μ ≥ 0.07 being the curvature of F along the simplex on these
    # steps. Through λ = K (1/K + c w / ‖g_w‖) / (1 + c²): |δλ| ≤ 1.2e-4 for the two runs, and θ moves by
    # ≤ 21 · 0.05 · 3 |δλ| max|g| ≤ 1.3e-4 (measured under 1e-15 relative noise on the Gram matrix: λ by 1.4e-7,
    # θ by 1.4e-9)
    "cagrad": dict(rtol=0, atol=3e-4),
    # the official min-norm solver stops once an iteration moves w by < 1e-5 in L1: a run that stops one iteration
    # later ends ≤ κ · 1e-5 away (κ ≤ 1.6: M on the simplex's plane, interior minima here), 3e-5 for the two runs,
    # θ by ≤ 21 · 0.05 · 3e-5 · max|g| = 1.3e-5 (measured: no step within 2 % of the rule, so identical to 1e-15)
    "mgda": dict(rtol=0, atol=1e-4),
}


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
    method.bind_optimizer(optimizer)  # as the loop does (Auto-λ's look-ahead reads its learning rate)
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
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]  # tensors in dicts


@pytest.fixture(scope="module")
def one_process():
    return run_all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_ranks_stay_identical_and_equal_one_process_on_the_union(name, mode, two_ranks, one_process):
    first, second = (r[(name, mode)] for r in two_ranks)
    single = one_process[(name, mode)]
    for key in ("weights", "parameters"):
        # identical replicas, exactly: every rank computes from the same all-reduced numbers (a two-rank sum is a + b
        # on both) by the same code, in one thread each
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
        # = the union batch, to round-off or to the solver's stopping rule (UNION_TOLERANCE)
        torch.testing.assert_close(first[key], single[key], **UNION_TOLERANCE.get(name, ROUND_OFF))
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
