"""The faster paths give the same numbers: batched per-task gradients against K backward passes, and
forward-over-reverse Hessian-vector products against reverse-over-reverse, explicit Hessians and finite
differences (equality only, no timings)."""
import copy
import logging

import pytest
import torch
from torch import nn

from experiments.training.models import CifarSSLNet, MultiLeNet, SegNet, SharedLinear
from methods import get_method
from methods import gradients as gradients_module
from methods.gradients import per_task_gradients
from methods.implicit import forward_over_reverse, frozen_buffers, implicit_hypergradient
from tests.helpers import TinyMultiTask, make_batch


def segnet_case():
    model = SegNet({"segmentation": 13, "depth": 1, "normal": 3}, width=0.0625)
    return model, torch.randn(2, 3, 32, 64), model.encode


def wrn_case():
    model = CifarSSLNet(width=0.125)
    return model, torch.randn(4, 3, 32, 32), model.encode


def lenet_case():
    model = MultiLeNet({"left": 10, "right": 10}, width=0.5)
    return model, torch.randn(4, 1, 28, 28), model.encode


def shared_linear_case():
    model = SharedLinear({"main": 1, "aux": 1}, init=0.3)
    return model, torch.randn(6, 2), None


# Every model of experiments/training/models.py at tiny width: (model, input batch, encoder or None); one line each.
MODEL_CASES = {"segnet": segnet_case, "wrn-28-2": wrn_case, "multi-lenet": lenet_case,
               "shared_linear": shared_linear_case}


def model_losses(model, x, encode):
    """K losses that differ per task (squared outputs with task-dependent offsets) through the shared trunk."""
    if encode is None:
        outputs = list(model(x).values())
        return torch.stack([((out - k) ** 2).mean() for k, out in enumerate(outputs)]), None
    features = encode(x)
    return torch.stack([((head(features) - 0.1 * k) ** 2).mean() for k, head in enumerate(model.heads.values())]), \
        features


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_batched_per_task_gradients_equal_k_passes(case):
    model, x, encode = MODEL_CASES[case]()
    model.train()
    losses, features = model_losses(model, x, encode)
    shared, specific = model.shared_parameters(), model.task_specific_parameters()
    loop = per_task_gradients(losses, shared, specific, mode="loop")
    batched = per_task_gradients(losses, shared, specific, mode="batched")
    assert batched.shared.shape == loop.shared.shape and batched.task_specific.shape == loop.task_specific.shape
    assert loop.shared.abs().sum() > 0

    # float32, the same products possibly through other kernels (batched matmul, grouped convolution) that sum in
    # another order: an entry is then within n · 2^-24 of the sum of its terms' magnitudes, n up to 2 · 32 · 64 =
    # 4096 positions (SegNet's convolutions), ~√n · 2^-24 = 4e-6 in practice. So rtol 1e-5 and, for entries that
    # cancel, atol 1e-4 of the row block's largest entry (an absolute 1e-7 was one float32 ulp of SegNet's largest
    # gradient). Measured here: identical.
    def close(actual, expected):
        largest = expected.abs().max().item() if expected.numel() else 0.0
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4 * largest)
    close(batched.shared, loop.shared)
    close(batched.task_specific, loop.task_specific)
    if features is not None:  # gradients with respect to the shared representation
        loop_rep = per_task_gradients(losses, [features], mode="loop").shared
        batched_rep = per_task_gradients(losses, [features], mode="batched").shared
        close(batched_rep, loop_rep)


def test_batched_gradients_rows_are_the_unit_vector_products():
    """By hand: L_k = c_k · wᵀx, so ∇_w L_k = c_k x; an unused task-specific parameter gives a zero row."""
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    unused = torch.zeros(3, requires_grad=True)
    x = torch.tensor([0.5, 3.0])
    losses = torch.stack([2.0 * (w @ x), -1.0 * (w @ x), 0.0 * (w @ x)])
    grads = per_task_gradients(losses, [w], [unused], mode="batched")
    torch.testing.assert_close(grads.shared, torch.tensor([[1.0, 6.0], [-0.5, -3.0], [0.0, 0.0]]))
    torch.testing.assert_close(grads.task_specific, torch.zeros(3, 3))


class NoBatchingRule(torch.autograd.Function):
    """Identity whose backward reads a Python number from its gradient: vmap cannot batch that."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * (1.0 + 0.0 * grad.sum().item())


def test_batched_gradients_fall_back_to_k_passes_with_one_log_line(caplog):
    gradients_module._logged_fallbacks.clear()
    model = TinyMultiTask()
    x, ys = make_batch()

    def losses():
        h = NoBatchingRule.apply(model.shared(x))
        return torch.stack([((head(h) - y) ** 2).mean() for head, y in zip(model.heads, ys)])

    shared, specific = model.shared_parameters(), model.task_specific_parameters()
    expected = per_task_gradients(losses(), shared, specific, mode="loop")
    with caplog.at_level(logging.WARNING, logger="methods.gradients"):
        first = per_task_gradients(losses(), shared, specific, mode="batched")
        second = per_task_gradients(losses(), shared, specific, mode="batched")
    torch.testing.assert_close(first.shared, expected.shared)
    torch.testing.assert_close(second.task_specific, expected.task_specific)
    lines = [r for r in caplog.records if "batched per-task gradients unavailable" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage()


def test_per_task_gradients_rejects_bad_mode_and_shape():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="choose one of"):
        per_task_gradients(torch.stack([w.sum()]), [w], mode="vmap")
    with pytest.raises(ValueError, match="1-D"):
        per_task_gradients(w.sum(), [w])


# -- Hessian-vector products ------------------------------------------------------------------------------


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.usefixtures("float64")
def test_forward_over_reverse_hvp_matches_explicit_hessian():
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    params = model.shared_parameters()
    sizes = [p.numel() for p in params]

    def loss_of_flat(vector):
        weight, bias = torch.split(vector, sizes)
        h = torch.tanh(batch[0] @ weight.view(params[0].shape).T + bias)
        return sum(((head(h) - y) ** 2).mean() for head, y in zip(model.heads, batch[1]))

    hessian = torch.autograd.functional.hessian(loss_of_flat, flat(params).detach())
    v = torch.randn(sum(sizes))
    tangents = [t.view_as(p) for t, p in zip(torch.split(v, sizes), params)]
    before = [p.detach().clone() for p in params]
    product = forward_over_reverse(lambda: model.losses(batch).sum(), params, tangents, params)
    # float64 round-off of two orders of ~30-term sums (measured 7e-16 absolute); 1e-10 / 1e-12 leave a factor 1000
    torch.testing.assert_close(flat(product), hessian @ v, rtol=1e-10, atol=1e-12)
    for p, b in zip(params, before):  # values untouched, no tangent left behind
        assert torch.equal(p, b)
        assert torch.autograd.forward_ad.unpack_dual(p).tangent is None


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("case", ["segnet", "wrn-28-2"])
def test_forward_over_reverse_hvp_matches_finite_differences_in_train_mode(case):
    """H v against the central difference (∇L(θ + εv) − ∇L(θ − εv)) / 2ε with batch norm in train mode.

    ε is tiny (1e-8, float64) because max-pooling and ReLU make the gradient piecewise smooth: on the tiny
    SegNet a step of 1e-7 already switches pooling winners and the difference is then off by 100 %.
    """
    model, x, encode = MODEL_CASES[case]()
    model.double().train()
    params = model.shared_parameters()
    tangents = [torch.randn_like(p) for p in params]
    loss = lambda: model_losses(model, x.double(), encode)[0].sum()  # noqa: E731
    with frozen_buffers():
        product = flat(forward_over_reverse(loss, params, tangents, params))
        eps = 1e-8

        def gradient_at(sign):
            with torch.no_grad():
                for p, t in zip(params, tangents):
                    p.add_(sign * eps * t)
            g = flat(torch.autograd.grad(loss(), params))
            with torch.no_grad():
                for p, t in zip(params, tangents):
                    p.sub_(sign * eps * t)
            return g

        numeric = (gradient_at(1) - gradient_at(-1)) / (2 * eps)
    # central differences: O(ε²) = 1e-16 truncation; the gradients' float64 round-off (~1e-16 of their size) divided
    # by 2ε gives ~1e-8 (measured 1.1e-8 on both models), so 1e-5 leaves a factor 1000
    assert relative(product, numeric) < 1e-5


def hypergradient_case(case, hvp):
    """The AuxiNash-style hypergradient dL_V/dα on a float64 model in train mode, from a fixed seed."""
    torch.manual_seed(1)
    model, x, encode = MODEL_CASES[case]()
    model.double().train()
    x = x.double()
    params = model.shared_parameters()
    alpha = torch.tensor([1.0, 0.5, 2.0][:len(model_losses(model, x, encode)[0])], requires_grad=True)
    torch.manual_seed(2)
    buffers_before = copy.deepcopy({k: v for k, v in model.state_dict().items() if "running" in k or "batches" in k})
    val_loss = model_losses(model, x + 0.1, encode)[0][0]
    (d_alpha,) = implicit_hypergradient(val_loss, lambda: (alpha * model_losses(model, x, encode)[0]).sum(), params,
                                        [alpha], terms=3, scale=1e-3, hvp=hvp)
    return d_alpha, model, buffers_before, torch.get_rng_state()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_forward_hypergradient_equals_reverse_and_updates_running_stats_once(case):
    reverse, model_r, before, rng_r = hypergradient_case(case, "reverse")
    forward, model_f, _, rng_f = hypergradient_case(case, "forward")
    assert reverse.abs().max() > 0
    # float64, a fixed number of Neumann terms (no stopping rule): the modes differ by round-off (measured ≤ 1.6e-15)
    assert relative(forward, reverse) <= 1e-10
    after_r, after_f = model_r.state_dict(), model_f.state_dict()
    for name in after_r:  # exact: the same forward passes update the running statistics in both modes
        torch.testing.assert_close(after_f[name], after_r[name], rtol=0, atol=0)
    for name, value in before.items():  # one validation and one training forward: two updates, no more
        if name.endswith("num_batches_tracked") and not name.startswith("teacher."):  # the EMA teacher never runs
            assert after_f[name].item() == value.item() + 2
    assert torch.equal(rng_f, rng_r)


@pytest.mark.usefixtures("float64")
def test_forward_hypergradient_reuses_the_random_state_of_its_first_evaluation():
    """With dropout, every re-evaluation of the training loss must draw the same mask as the first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)).double().train()
    x = torch.randn(16, 4)
    phi = torch.tensor([1.0, 0.3], requires_grad=True)
    params = list(model[0].parameters())
    results = []
    for hvp in ("reverse", "forward"):
        torch.manual_seed(5)
        val_loss = model(x).square().mean()
        (g,) = implicit_hypergradient(val_loss, lambda: (phi * model(x).square().mean(0)).sum(), params, [phi],
                                      terms=4, scale=0.1, hvp=hvp)
        results.append(g)
    assert relative(results[1], results[0]) <= 1e-10  # float64 round-off, as above (measured: 0)


@pytest.mark.usefixtures("float64")
def test_auxinash_and_auxilearn_meta_updates_agree_across_hvp_modes():
    from methods import implicit

    train, val = make_batch(seed=1), make_batch(seed=2)
    train = (train[0].double(), [y.double() for y in train[1]])
    val = (val[0].double(), [y.double() for y in val[1]])
    outcomes = {}
    for hvp in ("reverse", "forward"):
        torch.manual_seed(0)
        model = TinyMultiTask().double()
        auxinash = get_method("auxinash", 3, hvp=hvp)
        auxinash.backward(model.losses(train), model.shared_parameters(), model.task_specific_parameters())
        p_gradient = auxinash.p_hypergradient(model.losses, train, val, model.shared_parameters())
        auxilearn = get_method("auxilearn", 3)
        previous, implicit.DEFAULT_HVP_MODE = implicit.DEFAULT_HVP_MODE, hvp
        try:
            info = auxilearn.meta_update(model.losses, train, val, model.shared_parameters())
        finally:
            implicit.DEFAULT_HVP_MODE = previous
        outcomes[hvp] = (p_gradient, info["hypergradient_norm"], flat(auxilearn.network.parameters()))
    # the same Nash solve in both (α is computed before the meta-update), then float64 round-off (measured 8e-16)
    for forward, reverse in zip(outcomes["forward"], outcomes["reverse"]):
        torch.testing.assert_close(forward, reverse, rtol=1e-10, atol=1e-12)


def test_forward_mode_needs_a_loss_function():
    w = torch.ones(2, requires_grad=True)
    phi = torch.ones(1, requires_grad=True)
    with pytest.raises(TypeError, match="function without arguments"):
        implicit_hypergradient((w ** 2).sum(), phi * (w ** 3).sum(), [w], [phi], hvp="forward")
    with pytest.raises(ValueError, match="choose one of"):
        implicit_hypergradient((w ** 2).sum(), lambda: phi * (w ** 3).sum(), [w], [phi], hvp="fast")


def test_frozen_buffers_restores_batch_norm_statistics():
    bn = nn.BatchNorm1d(3).train()
    x = torch.randn(8, 3) + 2.0
    bn(x)  # outside: updated
    mean, count = bn.running_mean.clone(), bn.num_batches_tracked.item()
    with frozen_buffers():
        bn(x)
        bn(x + 1.0)
        assert not torch.equal(bn.running_mean, mean)  # inside, the statistics move as usual
    assert torch.equal(bn.running_mean, mean) and bn.num_batches_tracked.item() == count == 1
    torch.testing.assert_close(mean, 0.1 * x.mean(0))  # momentum 0.1 from zeros, by hand
