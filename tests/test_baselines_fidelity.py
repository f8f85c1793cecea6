"""The baselines as their reference code runs them (issue 13), each against a value computed by hand from the
peer's own definition:

- OL-AUX in ARML's form (bfshi/ARML_Auxiliary_Task_Reweighting ``SSL/lib/task_weighter.py``
  ``ol_aux_weight_loss``, ``SSL/train.py``, ``SSL/config.py``) and in Lin et al.'s accumulated form;
- CAGrad's update scaled by K (AvivSham/auxinash ``methods/weight_methods.py``, Cranial-XIX/CAGrad);
- AuxiLearn with float64 losses and with ``--auxilearn-train-on-loss`` (the official AuxiNash trainer);
- ``--meta-batches official`` (the official hyperstep's fresh training batches) on the toy example, NYUv2,
  semi-supervised CIFAR-10 and Multi-MNIST;
- the tables' caption.
"""
import os

import numpy as np
import pytest
import torch

from experiments.training.benchmarks import Benchmark, ToyBenchmark, nyuv2_benchmark
from experiments.training.loop import TrainConfig, train
from experiments.storage.results_io import load_checkpoint
from methods import get_method
from tests.helpers import TinyMultiTask, make_batch, run_backward, task_gradients


def linear_losses(theta, rows):
    """L_k = rows_k · θ: the gradient of task k is exactly rows_k."""
    return torch.stack([torch.as_tensor(r, dtype=theta.dtype) @ theta for r in rows])


# -- OL-AUX, ARML's form ---------------------------------------------------------------------------------------

def test_olaux_arml_step_by_hand():
    """g_main = (1, 2), g_1 = (3, −1), g_2 = (−2, 0.5): g_mainᵀg_1 = 1, g_mainᵀg_2 = −1. ARML's SGD (lr 0.05) on
    −g_mainᵀ(w_1 g_1 + w_2 g_2) moves w_k by +0.05 · g_mainᵀg_k: w = (1, 1.05, 0.95), on iteration 3 with
    interval 3 and not before; the first two iterations train on L_main + Σ w_k L_k with w = 1."""
    rows = [(1.0, 2.0), (3.0, -1.0), (-2.0, 0.5)]
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.7]))
    method = get_method("olaux", 3, interval=3)
    assert method.form == "arml" and method.lr == 0.05  # the defaults are ARML's (config.py, train.py)
    for _ in range(2):
        theta.grad = None
        info = method.backward(linear_losses(theta, rows), [theta])
        torch.testing.assert_close(theta.grad, torch.tensor([2.0, 1.5]))  # (1+3−2, 2−1+0.5)
        torch.testing.assert_close(info["weights"], torch.ones(3))
    theta.grad = None
    info = method.backward(linear_losses(theta, rows), [theta])
    torch.testing.assert_close(method.weights, torch.tensor([1.0, 1.05, 0.95]))
    torch.testing.assert_close(info["weights"], torch.tensor([1.0, 1.05, 0.95]))
    assert theta.grad is None  # ARML takes no model step on its weight iteration (train.py: iteration % 20 != 0)
    theta.grad = None
    method.backward(linear_losses(theta, rows), [theta])  # iteration 4 trains with the new weights
    torch.testing.assert_close(theta.grad, torch.tensor([1 + 1.05 * 3 - 0.95 * 2, 2 - 1.05 + 0.95 * 0.5]))


def test_olaux_arml_clamps_at_zero_and_keeps_main_weight():
    rows = [(1.0, 0.0), (-30.0, 0.0), (10.0, 0.0)]  # dots −30 and +10: w_1 = max(0, 1 − 1.5) = 0, w_2 = 1.5
    theta = torch.nn.Parameter(torch.zeros(2))
    method = get_method("olaux", 3, interval=1)
    method.backward(linear_losses(theta, rows), [theta])
    torch.testing.assert_close(method.weights, torch.tensor([1.0, 0.0, 1.5]))
    method = get_method("olaux", 3, main_task=2, interval=1)  # any task can be the main one
    method.backward(linear_losses(theta, rows), [theta])
    torch.testing.assert_close(method.weights, torch.tensor([1.5, 0.0, 1.0]))  # dots with g_main: 10, −300


def arml_reference_step(model, batch, alpha, lr=0.05):
    """ARML's weight iteration written from its code: ``ol_aux_weight_loss`` (main gradient detached, auxiliary
    gradients of Σ α_k L_k with create_graph, summed over the shared parameters = ``model.parameters()[:-6]``,
    the three heads left out), one ``optim.SGD`` step, then ``torch.clamp(alpha, 0)``."""
    alpha = torch.nn.Parameter(alpha.clone())
    losses = model.losses(batch)
    shared = model.shared_parameters()
    main_grads = torch.autograd.grad(losses[0], shared, create_graph=True)
    aux_grads = torch.autograd.grad((losses[1:] * alpha).sum(), shared, create_graph=True)
    alpha_loss = sum(-(m.detach() * a).sum() for m, a in zip(main_grads, aux_grads))
    optimizer = torch.optim.SGD([alpha], lr=lr)
    optimizer.zero_grad()
    alpha_loss.backward()
    optimizer.step()
    return torch.clamp(alpha.data, 0)


@pytest.mark.usefixtures("float64")
def test_olaux_arml_matches_arml_reference_and_weights_heads():
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = get_method("olaux", 3, interval=2)
    alpha = torch.ones(2)
    for step in range(1, 7):  # three weight iterations on the same batch: the weights change each time
        if step % 2 == 0:
            model.zero_grad(set_to_none=True)
            method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
            assert all(p.grad is None for p in model.parameters())
            alpha = arml_reference_step(model, batch, alpha)
            torch.testing.assert_close(method.weights[1:], alpha)
        else:  # L_main + Σ α_k L_k through every parameter, heads included (Task_Weighter.forward)
            _, shared, specific = run_backward(method, model, batch)
            g, s = task_gradients(model, batch)
            weights = torch.cat([torch.ones(1), alpha])
            torch.testing.assert_close(shared, weights @ g)
            torch.testing.assert_close(specific, weights @ s)
    # (the float64 comparisons above: closed forms in two summation orders, ≤ 1e-14 apart, at the defaults 1e-7)
    assert not torch.allclose(alpha, torch.ones(2))  # it moved: by lr × the dot products, ≫ the default 1e-5


def test_olaux_interval_is_its_own_and_meta_update_is_a_no_op():
    rows = [(1.0, 2.0), (3.0, -1.0), (-2.0, 0.5)]
    theta = torch.nn.Parameter(torch.zeros(2))
    method = get_method("olaux", 3)
    assert method.interval == 20  # ARML's ``iteration % 20``
    for iteration in range(1, 41):
        method.backward(linear_losses(theta, rows), [theta])
        method.meta_update(None, None, None, [theta])  # what the loop calls every --meta-every steps
        expected = 1 + 0.05 * (iteration // 20)
        torch.testing.assert_close(method.weights[1], torch.tensor(expected))


@pytest.mark.parametrize("kwargs, message", [({"form": "lin"}, "--olaux-form"), ({"interval": 0}, "--olaux-interval")])
def test_olaux_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_method("olaux", 3, **kwargs)


# -- OL-AUX, Lin et al.'s accumulated form -----------------------------------------------------------------------

def test_olaux_accumulated_by_hand():
    """Alg. 1: w_k ← max(0, w_k + β Σ_{last N} g_mainᵀg_k); the model steps on every iteration, with the old
    weights on the update iteration (as Lin et al.'s quadratic.py). Two iterations with different gradients:
    dots (1, −1) then (4, −1), summed (5, −2), β = 0.1."""
    first = [(1.0, 2.0), (3.0, -1.0), (-2.0, 0.5)]   # dots 1, −1
    second = [(1.0, 0.0), (4.0, 3.0), (-1.0, 7.0)]   # dots 4, −1
    theta = torch.nn.Parameter(torch.zeros(2))
    method = get_method("olaux", 3, form="accumulated", interval=2, lr=0.1)
    theta.grad = None
    method.backward(linear_losses(theta, first), [theta])
    torch.testing.assert_close(method.weights, torch.ones(3))
    theta.grad = None
    method.backward(linear_losses(theta, second), [theta])
    torch.testing.assert_close(theta.grad, torch.tensor([4.0, 10.0]))  # still w = 1 on this iteration
    torch.testing.assert_close(method.weights, torch.tensor([1.0, 1 + 0.1 * 5, 1 + 0.1 * -2]))
    theta.grad = None
    method.backward(linear_losses(theta, first), [theta])
    torch.testing.assert_close(theta.grad, torch.tensor([1 + 1.5 * 3 - 0.8 * 2, 2 - 1.5 + 0.8 * 0.5]))


# -- CAGrad × K ----------------------------------------------------------------------------------------------------

def cagrad_two_tasks_by_brute_force(g1, g2, c=0.4):
    """Cranial-XIX/CAGrad ``cityscapes/utils.py`` ``cagrad`` for two tasks, solved by a dense search over x ∈ [0, 1]
    (the objective is convex in x), then ``overwrite_grad``'s ``newgrad * 2``, with ``rescale=1``."""
    g11, g12, g22 = g1 @ g1, g1 @ g2, g2 @ g2
    coef = c * np.sqrt((g11 + g22 + 2 * g12) / 4 + 1e-8)  # c · ‖g₀‖ (auxinash: sqrt(GG.mean() + 1e-8))

    def objective(x):
        gw_sq = x**2 * g11 + (1 - x) ** 2 * g22 + 2 * x * (1 - x) * g12
        gw_g0 = 0.5 * (x * g11 + (1 - x) * g22 + g12)
        return gw_g0 + coef * np.sqrt(gw_sq + 1e-8)

    lo, hi = 0.0, 1.0
    for _ in range(6):  # grid, then zoom in around the best point
        xs = np.linspace(lo, hi, 20001)
        best = xs[np.argmin(objective(xs))]
        step = (hi - lo) / 20000
        lo, hi = max(0.0, best - 2 * step), min(1.0, best + 2 * step)
    x = best
    gw = x * g1 + (1 - x) * g2
    g = (g1 + g2) / 2 + coef / (np.linalg.norm(gw) + 1e-8) * gw
    return 2 * g / (1 + c**2)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("g1, g2", [((1.0, 0.0, 2.0), (-1.0, 1.5, 0.3)),     # conflicting
                                    ((2.0, 1.0, 0.0), (1.0, 0.5, 0.2)),      # nearly aligned
                                    ((0.1, 0.0, 0.0), (-3.0, 4.0, 1.0))])    # very different norms
def test_cagrad_two_tasks_matches_brute_force_times_k(g1, g2):
    g1, g2 = np.array(g1), np.array(g2)
    theta = torch.nn.Parameter(torch.zeros(3))
    get_method("cagrad", 2, c=0.4).backward(linear_losses(theta, [g1, g2]), [theta])
    # The brute force finds the minimiser to ~1e-8 (a flat minimum evaluated in float64). CAGrad's barrier method
    # stops at a duality gap of 1e-10 on the normalised problem: that bounds F(w) − F*, and w only to
    # √(2 · 1e-10 / μ) = 3e-5 in the conflicting case (an interior minimum; μ = 0.2, the curvature of F along the
    # simplex), which moves d by ≤ 4.3e-5; 1e-15 relative noise on the Gram matrix moves it by 1.8e-5, more than the
    # former rtol 1e-6. The other two minima sit at a vertex, where the barrier's error is ~1e-10.
    np.testing.assert_allclose(theta.grad.numpy(), cagrad_two_tasks_by_brute_force(g1, g2), rtol=0, atol=1e-4)


def test_cagrad_equal_gradients_give_k_times_the_gradient():
    """Two identical gradients: w is irrelevant, g_w = g₀ = g, d = K (1 + c) g / (1 + c²)."""
    theta = torch.nn.Parameter(torch.zeros(2))
    get_method("cagrad", 2, c=0.4).backward(linear_losses(theta, [(3.0, 4.0), (3.0, 4.0)]), [theta])
    # w does not enter (g_w = g for every w); float32 θ: the combination and the expected value round to float32
    # (a few 2^-24), the reference's 1e-8 terms are 1e-8 / ‖g‖² relative
    torch.testing.assert_close(theta.grad, 2 * 1.4 / 1.16 * torch.tensor([3.0, 4.0]), rtol=1e-6, atol=1e-6)


# -- AuxiLearn ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("linear", [False, True])
def test_auxilearn_accepts_float64_losses(linear):
    method = get_method("auxilearn", 3, linear=linear)  # a float32 network
    assert next(method.network.parameters()).dtype == torch.float32
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    losses = model.losses(batch)
    reference = torch.autograd.functional.jacobian(method.network, losses.detach().float())  # ∂L_T/∂L_k
    info, shared, _ = run_backward(method, model, batch)
    assert info["weights"].dtype == torch.float64 and shared.dtype == torch.float64
    torch.testing.assert_close(info["weights"], reference.double())
    g, _ = task_gradients(model, batch)
    torch.testing.assert_close(shared, reference.double() @ g)
    val = make_batch(seed=7)
    method.meta_update(model.losses, batch, (val[0].double(), [y.double() for y in val[1]]),
                       model.shared_parameters())  # float64 losses through the hypergradient too
    assert all(torch.isfinite(p).all() for p in method.network.parameters())


def test_auxilearn_default_leaves_network_to_the_hypergradient(float64):
    method = get_method("auxilearn", 3)
    assert method.main_optimizer_parameters() == []
    model = TinyMultiTask().double()
    run_backward(method, model, make_batch())
    assert all(p.grad is None for p in method.network.parameters())


def test_auxilearn_train_on_loss_gives_network_to_main_optimizer(float64):
    """The official trainer: Adam([model params, weight_method.parameters() at lr 5e-3]) and L_T.backward(), so
    the network's .grad is ∂L_T/∂φ at the batch losses and the main optimiser steps it."""
    method = get_method("auxilearn", 3, train_on_loss=True)
    groups = method.main_optimizer_parameters()
    assert len(groups) == 1 and groups[0]["lr"] == 5e-3
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in method.network.parameters()}
    model = TinyMultiTask().double()
    batch = make_batch()
    losses = model.losses(batch).detach()
    expected = torch.autograd.grad(method.network(losses), list(method.network.parameters()))
    run_backward(method, model, batch)
    for parameter, gradient in zip(method.network.parameters(), expected):
        torch.testing.assert_close(parameter.grad, gradient)
    before = [p.detach().clone() for p in method.network.parameters()]
    optimizer = torch.optim.Adam([{"params": list(model.parameters())}, *groups], lr=1e-4)
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, method.network.parameters())]
    assert any(moved)
    # the hypergradient step leaves no .grad behind for the main optimiser to apply a second time
    method.meta_update(model.losses, batch, make_batch(seed=7), model.shared_parameters())
    assert all(p.grad is None for p in method.network.parameters())
    assert all((p.detach() >= 0).all() for m in method.network.modules() if isinstance(m, torch.nn.Linear)
               for p in [m.weight])


def toy_run(tmp_path, method, **config):
    benchmark = ToyBenchmark("cpu", seed=0, epochs=4, eval_every=2, n_train=512, batch_size=128)
    return benchmark, train(benchmark, TrainConfig(method=method, main_task="main", lr=1e-2, out=str(tmp_path),
                                                   **config))


@pytest.mark.parametrize("flag", [False, True])
def test_loop_trains_auxilearn_network_only_with_train_on_loss(tmp_path, flag):
    """Through the loop, with no meta-update at all: the network moves only when the main optimiser has it."""
    _, run_dir = toy_run(tmp_path, "auxilearn", meta_every=10**6, method_kwargs={"train_on_loss": flag})
    state = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"), "cpu")  # the loop's own (safe) reader
    trained = state["method"]["network"]
    initial = get_method("auxilearn", 3).network.state_dict()
    changed = any(not torch.equal(trained[k].cpu(), initial[k]) for k in initial)
    assert changed == flag
    assert len(state["optimizer"]["param_groups"]) == (2 if flag else 1)


# -- meta-update batches ----------------------------------------------------------------------------------------

class Recorder:
    """A method that records the batches its meta-updates receive."""

    def __init__(self):
        self.calls = []

    def __call__(self, method, compute_losses, train_batch, val_batch, shared):
        self.calls.append((train_batch, val_batch))
        return {}


@pytest.mark.parametrize("mode", ["step", "official"])
def test_meta_batches_official_draws_a_fresh_training_batch(tmp_path, monkeypatch, mode):
    recorder = Recorder()
    monkeypatch.setattr(type(get_method("auxilearn", 3)), "meta_update",
                        lambda self, *args, **kwargs: recorder(self, *args))
    seen = []
    original = ToyBenchmark.round_batches

    def recording_batches(self, round_index):
        for batch in original(self, round_index):
            seen.append(batch)
            yield batch

    monkeypatch.setattr(ToyBenchmark, "round_batches", recording_batches)
    toy_run(tmp_path, "auxilearn", meta_every=3, meta_batches=mode)
    assert len(recorder.calls) == len(seen) // 3 > 0
    for n, (train_batch, val_batch) in enumerate(recorder.calls, start=1):
        step_batch = seen[3 * n - 1]
        assert (train_batch is step_batch) == (mode == "step")
        if mode == "official":
            assert not torch.equal(train_batch["x"], step_batch["x"])
            assert len(train_batch["x"]) == 128 and len(torch.unique(train_batch["x"][:, 0])) == 128  # no repeats
            assert not torch.equal(train_batch["x"], val_batch["x"])


def test_meta_batches_official_on_dense_is_augmented_and_resumable(tmp_path):
    from data import synthetic
    root = synthetic.write_nyuv2(str(tmp_path / "nyuv2"), n_train=6, n_test=2, shape=(32, 64))
    benchmark = nyuv2_benchmark(root, batch_size=2, epochs=1, meta_val_size=2, device="cpu", seed=0)
    plain = nyuv2_benchmark(root, batch_size=2, epochs=1, meta_val_size=2, device="cpu", seed=0, augment=False)
    state = benchmark.state_dict()
    train_batch, val_batch = benchmark.meta_batches(None, "official")
    meta_items = {int(i) for i in benchmark.item_indices["meta"]}
    # with augmentation off the draw is the same items, untouched: the L_V items are the held-out ones
    plain_train, plain_val = plain.meta_batches(None, "official")
    originals = {i: plain._fresh_set()[i]["image"] for i in range(6)}
    assert all(any(torch.equal(img, originals[i]) for i in meta_items) for img in plain_val["image"])
    assert all(any(torch.equal(img, originals[i]) for i in set(range(6)) - meta_items) for img in plain_train["image"])
    # augmentation on: the images are not all the stored ones (random scale-crop and flip)
    images = [img for _ in range(3) for img in benchmark.fresh_training_batch("train")["image"]]
    assert not all(any(torch.equal(img, o) for o in originals.values()) for img in [*train_batch["image"], *images])
    # the next draws replay exactly after a state round trip (the checkpoint's benchmark state)
    after = benchmark.state_dict()
    again = nyuv2_benchmark(root, batch_size=2, epochs=1, meta_val_size=2, device="cpu", seed=0)
    again.load_state_dict(after)
    for a, b in zip(benchmark.meta_batches(None, "official"), again.meta_batches(None, "official")):
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    assert "fresh_rng" not in state  # nothing made before the first official draw


# ... on semi-supervised CIFAR-10 and Multi-MNIST

@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    from data import synthetic
    return synthetic.write_cifar10(str(tmp_path_factory.mktemp("cifar") / "c"), per_batch=40, n_test=40)


def cifar_bench(root, pipeline="arml", meta_val_size=0, seed=0, **kwargs):
    from data import CifarSSL
    from experiments.training.benchmarks import CifarSSLBenchmark
    data = CifarSSL(root, n_labeled=50, val_size=50, meta_val_size=meta_val_size, seed=seed, pipeline=pipeline)
    return CifarSSLBenchmark(data, iterations=6, eval_every=3, labeled_batch=4, unlabeled_batch=5, device="cpu",
                             seed=seed, width=0.125, **kwargs)


def positions_of(data, images):
    """The training-image position each (un-augmented, ARML pipeline) batch image is stored at."""
    flat = data.images.reshape(len(data.images), -1)
    found = [torch.nonzero((flat == image.reshape(1, -1)).all(dim=1)).flatten().tolist() for image in images]
    assert all(len(f) == 1 for f in found)  # each batch image is exactly one stored image
    return [f[0] for f in found]


@pytest.mark.parametrize("pipeline,rotation", [("arml", "random"), ("arml", "all4"), ("legacy", "random")])
def test_meta_batches_official_on_cifar_draws_fresh_batches(cifar_root, pipeline, rotation):
    bench = cifar_bench(cifar_root, pipeline, rotation=rotation)
    bench.check_meta_batches("official")  # accepted at start-up
    step_batch = next(iter(bench.round_batches(0)))
    train_batch, val_batch = bench.meta_batches(step_batch, "official")
    expected = {"image", "label"} if pipeline == "arml" else {"image", "label", "rotated", "rotation", "view"}
    assert set(train_batch) == set(step_batch) == expected
    for key in step_batch:  # shaped exactly as the step's batch: 4 labelled + 5 unlabelled
        assert train_batch[key].shape == step_batch[key].shape and train_batch[key].dtype == step_batch[key].dtype
    assert not torch.equal(train_batch["image"], step_batch["image"])
    assert (train_batch["label"][:4] >= 0).all() and (train_batch["label"][4:] == -1).all()
    assert set(val_batch) == expected and len(val_batch["label"]) == 4 and (val_batch["label"] >= 0).all()
    if pipeline == "legacy":  # augmented here (zero-pad crop and flip): not the plain normalised stored image
        from data.cifar import normalise
        stored = normalise(bench.data.images.float() / 255.0)
        assert not all(any(torch.equal(img, s) for s in stored) for img in train_batch["image"])
        return
    # ARML pipeline: un-augmented stored images; the labelled part distinct labelled images, then train-split ones
    labeled, train = set(bench.data.splits.labeled.tolist()), set(bench.data.splits.train.tolist())
    picked = positions_of(bench.data, train_batch["image"])
    assert set(picked[:4]) <= labeled and len(set(picked[:4])) == 4
    assert set(picked[4:]) <= train and len(set(picked[4:])) == 5
    torch.testing.assert_close(train_batch["label"][:4], bench.data.labels[picked[:4]])
    meta = positions_of(bench.data, val_batch["image"])
    assert set(meta) <= labeled and len(set(meta)) == 4  # no held-out part: the labelled images themselves
    torch.testing.assert_close(val_batch["label"], bench.data.labels[meta])


def test_meta_batches_official_on_cifar_uses_the_held_out_images(cifar_root):
    bench = cifar_bench(cifar_root, meta_val_size=10)
    held_out, kept = set(bench.data.splits.meta_val.tolist()), set(bench.data.splits.labeled.tolist())
    assert len(held_out) == 10 and not held_out & kept
    seen = set()
    for _ in range(5):
        meta = positions_of(bench.data, bench.fresh_training_batch("meta")["image"])
        assert set(meta) <= held_out and len(set(meta)) == 4
        seen |= set(meta)
        picked = positions_of(bench.data, bench.fresh_training_batch("train")["image"])
        assert not set(picked[:4]) & held_out  # L_T's labelled images are never the held-out ones
    assert len(seen) > 4  # fresh draws, not one fixed batch
    with pytest.raises(ValueError, match="'train' or 'meta'"):
        bench.fresh_training_batch("val")


@pytest.mark.parametrize("pipeline", ["arml", "legacy"])
def test_meta_batches_official_on_cifar_leaves_the_training_stream(cifar_root, pipeline):
    """Fresh draws between the steps change none of the training batches (their own generator), and replay
    exactly after a state round trip."""
    drawing, plain = cifar_bench(cifar_root, pipeline), cifar_bench(cifar_root, pipeline)
    fresh = []
    for round_index in range(2):
        for a, b in zip(drawing.round_batches(round_index), plain.round_batches(round_index), strict=True):
            for key in a:
                torch.testing.assert_close(a[key], b[key])
            fresh.append(drawing.meta_batches(a, "official"))
    state = drawing.state_dict()
    assert not torch.equal(state["fresh_generator"], plain.state_dict()["fresh_generator"])
    torch.testing.assert_close(state["generator"], plain.state_dict()["generator"])
    again = cifar_bench(cifar_root, pipeline)
    again.load_state_dict(state)
    for a, b in zip(drawing.meta_batches(None, "official"), again.meta_batches(None, "official")):
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    assert not torch.equal(fresh[0][0]["image"], fresh[1][0]["image"])


def test_meta_batches_official_on_cifar_run_keeps_the_stream(cifar_root, tmp_path, monkeypatch):
    """In a whole run (meta-updates recorded, no forward pass of their own), the training batches are those of
    the same run without meta-updates; every meta-update gets a fresh L_T batch, never the step's."""
    from experiments import train_cifar_ssl
    from experiments.training.benchmarks import CifarSSLBenchmark
    recorder = Recorder()
    monkeypatch.setattr(type(get_method("auxilearn", 3)), "meta_update", lambda self, *args, **kwargs: recorder(self, *args))
    original = CifarSSLBenchmark.round_batches
    seen = []

    def recording_batches(self, round_index):
        for batch in original(self, round_index):
            seen.append(batch)
            yield batch

    monkeypatch.setattr(CifarSSLBenchmark, "round_batches", recording_batches)
    args = ["--data-root", cifar_root, "--method", "auxilearn", "--iterations", "4", "--eval-every", "2",
            "--labeled-batch", "4", "--unlabeled-batch", "4", "--width", "0.125", "--n-labeled", "50",
            "--val-size", "50", "--log-level", "WARNING", "--meta-batches", "official"]
    train_cifar_ssl.main([*args, "--meta-every", "1", "--out", str(tmp_path / "a")])
    with_meta, calls = list(seen), list(recorder.calls)
    seen.clear()
    train_cifar_ssl.main([*args, "--meta-every", "100", "--out", str(tmp_path / "b")])
    assert len(calls) == len(with_meta) == len(seen) == 4
    for a, b, (train_batch, val_batch) in zip(with_meta, seen, calls):
        assert train_batch is not a and set(train_batch) == set(a) and train_batch["image"].shape == a["image"].shape
        assert not torch.equal(train_batch["image"], a["image"]) and (val_batch["label"] >= 0).all()
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def test_meta_batches_official_on_cifar_resumes_exactly(cifar_root, tmp_path):
    import pandas as pd

    from experiments import train_cifar_ssl
    args = ["--data-root", cifar_root, "--method", "auxinash", "--iterations", "4", "--eval-every", "2",
            "--labeled-batch", "4", "--unlabeled-batch", "4", "--width", "0.125", "--n-labeled", "50",
            "--val-size", "50", "--meta-every", "1", "--meta-val-size", "10", "--log-level", "WARNING"]
    official = [*args, "--meta-batches", "official"]
    straight = train_cifar_ssl.main([*official, "--out", str(tmp_path / "a")])
    train_cifar_ssl.main([*official, "--out", str(tmp_path / "b"), "--stop-after", "1"])
    resumed = train_cifar_ssl.main([*official, "--out", str(tmp_path / "b"), "--resume"])
    step = train_cifar_ssl.main([*args, "--out", str(tmp_path / "c")])
    a, b, c = (pd.read_csv(os.path.join(d, "metrics.csv")).drop(columns="seconds") for d in (straight, resumed, step))
    assert len(a) == 6 and "p_cls" in a.columns
    # exact: the resumed run restores every state and recomputes the same numbers in the same order, in this process
    # (pandas' default would allow 1e-5; measured identical with 1 and 2 threads)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # other meta batches give other p: steps of lr 5e-3 × a hypergradient clipped to 1, ≫ allclose's 1e-5
    assert not np.allclose(a.filter(like="p_").dropna().values, c.filter(like="p_").dropna().values)


def test_meta_batches_official_on_multimnist(tmp_path):
    import pandas as pd

    from data.multimnist import MultiMnist, PairSpec
    from experiments import train_multimnist
    from experiments.training.benchmarks.multimnist import MultiMnistBenchmark
    from tests.test_multimnist import write_mnist
    write_mnist(str(tmp_path / "raw"), 0, 10_000)
    spec = PairSpec(n_train=100, n_val=20, n_test=20)
    data = MultiMnist(str(tmp_path), str(tmp_path / "cache"), spec, meta_val_size=10)
    bench = MultiMnistBenchmark(data, epochs=1, batch_size=8, device="cpu", seed=0)
    bench.check_meta_batches("official")
    plain = list(bench.round_batches(0))
    step_batch = plain[0]
    train_batch, val_batch = bench.meta_batches(step_batch, "official")
    assert set(train_batch) == set(step_batch) and train_batch["image"].shape == step_batch["image"].shape
    assert not torch.equal(train_batch["image"], step_batch["image"])

    def rows_of(images):  # the position in data.train of each batch image
        flat = data.train["image"].reshape(len(data.train["image"]), -1)
        return [torch.nonzero((flat == i.reshape(1, -1)).all(dim=1)).flatten().tolist()[0] for i in images]

    held_out, kept = set(data.meta_val_index.tolist()), set(data.train_index.tolist())
    assert not held_out & kept
    assert set(rows_of(val_batch["image"])) <= held_out and len(set(rows_of(val_batch["image"]))) == 8
    assert set(rows_of(train_batch["image"])) <= kept and len(set(rows_of(train_batch["image"]))) == 8
    for a, b in zip(plain, bench.round_batches(0), strict=True):  # the stream is untouched by the draws
        torch.testing.assert_close(a["image"], b["image"])
    common = ["--data-root", str(tmp_path), "--cache-root", str(tmp_path / "cache"), "--preset", "tiny",
              "--n-train", "100", "--n-val", "20", "--n-test", "20", "--epochs", "3", "--batch-size", "20",
              "--device", "cpu", "--log-level", "WARNING", "--method", "auxinash", "--meta-every", "2",
              "--meta-val-size", "10", "--meta-batches", "official"]
    whole = train_multimnist.main(common + ["--out", str(tmp_path / "a")])
    train_multimnist.main(common + ["--out", str(tmp_path / "b"), "--stop-after", "1"])
    parted = train_multimnist.main(common + ["--out", str(tmp_path / "b"), "--resume"])
    a, b = (pd.read_csv(os.path.join(d, "metrics.csv")).drop(columns="seconds") for d in (whole, parted))
    assert any(c.startswith("p_") for c in a.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # exact: resumed in this process, as above


def test_meta_batches_official_refused_where_unsupported():
    class NoFresh(Benchmark):
        name = "nofresh"

    with pytest.raises(ValueError, match="--meta-batches step"):
        NoFresh("cpu", 0).check_meta_batches("official")
    with pytest.raises(ValueError, match="one of"):
        NoFresh("cpu", 0).check_meta_batches("fresh")
    NoFresh("cpu", 0).check_meta_batches("step")


def test_cli_flags_reach_the_methods():
    from experiments.training.cli import method_kwargs_from_flags
    flags = {"olaux_interval": 5, "olaux_form": "accumulated", "auxilearn_train_on_loss": True, "olaux_lr": None,
             "lr": 1e-4, "seed": 0}
    assert method_kwargs_from_flags("olaux", flags) == {"interval": 5, "form": "accumulated"}
    assert method_kwargs_from_flags("auxilearn", flags) == {"train_on_loss": True, "seed": 0}


# -- tables ---------------------------------------------------------------------------------------------------------

def test_table_caption_says_what_each_delta_m_is_against(tmp_path):
    import json

    import pandas as pd

    from experiments.reporting import tables as make_tables
    for method, main in (("stl", "main-seg"), ("stl", "main-depth"), ("stl", "main-normal"), ("equal", "main-all")):
        run = tmp_path / "nyuv2" / method / main / "seed0"
        run.mkdir(parents=True)
        values = {"seg_miou": 38.0, "seg_pixacc": 64.0, "depth_abs_err": 0.6, "depth_rel_err": 0.25,
                  "normal_mean": 25.0, "normal_median": 19.0, "normal_within_11_25": 30.0,
                  "normal_within_22_5": 57.0, "normal_within_30": 69.0}
        pd.DataFrame([{"round": r, "step": r, "split": "test", **values} for r in range(10)]).to_csv(
            run / "metrics.csv", index=False)
        json.dump({"selection": "last", "device_name": "cpu", "synthetic_data": False}, open(run / "config.json", "w"))
        json.dump({"finished": True}, open(run / "status.json", "w"))  # tables read finished runs only
    make_tables.make_tables(str(tmp_path))
    text = open(tmp_path / "tables" / "nyuv2.md").read()
    assert "Δm (ours) vs our STL; Δm (paper) vs the paper's STL row" in text
