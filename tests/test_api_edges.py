"""The methods API under what real training loops give it (issue 21), registry-wide: every method in
``METHOD_NAMES`` (a tenth inherits these tests) on frozen parameters, half-precision gradients, parameters no task
uses, and bad input at the API edge. Expected values are independent: a run without the frozen / unused
parameters in the lists, and the same gradients in float64."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from methods import METHOD_NAMES, get_method
from methods.cagrad import solve_cagrad
from methods.nash_solver import solve_nash
from tests.helpers import TinyMultiTask, make_batch

STEPS = 21  # past OL-AUX's first weight iteration (step 20)


def double_batch(seed=0, n_tasks=3):
    x, ys = make_batch(n_tasks=n_tasks, seed=seed)
    return x.double(), [y.double() for y in ys]


def train(method, model, shared, specific, steps=STEPS, meta_every=5, check=None):
    """SGD steps of ``method`` on ``model`` (meta-updates every ``meta_every`` steps); ``check()`` after each
    backward."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    method.bind_optimizer(optimizer)  # as the loop does (Auto-λ's look-ahead reads the optimiser's lr)
    batch, val = double_batch(0), double_batch(1)
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        method.backward(model.losses(batch), shared, specific)
        if check is not None:
            check()
        optimizer.step()
        if step % meta_every == 0:
            method.meta_update(model.losses, batch, val, [p for p in shared])
    return model


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_frozen_shared_parameter_is_skipped_like_torch_optim(name):
    """The issue's minimal input: the trunk's first-layer bias frozen and left in ``shared_parameters``."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    model.shared[0].bias.requires_grad_(False)
    frozen_value = model.shared[0].bias.detach().clone()
    reference = copy.deepcopy(model)

    def frozen_grad_is_none():
        assert model.shared[0].bias.grad is None

    train(get_method(name, 3), model, model.shared_parameters(), model.task_specific_parameters(),
          check=frozen_grad_is_none)
    trainable = [p for p in reference.shared_parameters() if p.requires_grad]
    train(get_method(name, 3), reference, trainable, reference.task_specific_parameters())
    torch.testing.assert_close(model.shared[0].bias, frozen_value, rtol=0, atol=0)
    # exact: the frozen parameter is skipped before any gradient is taken, so both runs sum the same numbers in the
    # same order (an iterative solver would turn any 1e-16 difference into one of its stopping tolerance)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_parameter_no_task_uses_keeps_grad_none(name):
    """A shared parameter no loss reaches: ``.grad`` stays None (as after ``loss.backward()``), the rest as without it.

    Exact by construction: its zero columns are dropped before the Gram matrix is formed
    (``TaskGradients.drop_unused``), so both runs sum the same numbers in the same order. It sits between the other
    shared parameters, where a zero block would move every later column's place in the sum (issue 29)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    model.unused = nn.Parameter(torch.ones(5, dtype=torch.float64))
    reference = copy.deepcopy(model)

    def unused_grad_is_none():
        assert model.unused.grad is None

    shared = model.shared_parameters()
    train(get_method(name, 3), model, shared[:1] + [model.unused] + shared[1:], model.task_specific_parameters(),
          check=unused_grad_is_none)
    train(get_method(name, 3), reference, reference.shared_parameters(), reference.task_specific_parameters())
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_parameter_listed_twice_counts_once(name):
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    shared = model.shared_parameters()
    train(get_method(name, 3), model, shared + shared[:1], model.task_specific_parameters(), steps=3)
    train(get_method(name, 3), reference, reference.shared_parameters(), reference.task_specific_parameters(), steps=3)
    for a, b in zip(model.parameters(), reference.parameters()):  # exact: the duplicate is dropped before any sum
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- half precision: the K×K algebra in float64 --------------------------------------------------------------

def large_gradients(seed=0):
    """Three fp16-representable gradients of norms ≈ 300, 110, 270 whose squares overflow fp16 (65,504)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(3, 40, generator=g, dtype=torch.float64)
    rows = rows / rows.norm(dim=1, keepdim=True) * torch.tensor([[300.0], [110.0], [270.0]], dtype=torch.float64)
    rows[1] += 0.3 * rows[0]  # some agreement, some conflict
    return rows.half().double()


def linear_problem(grads, dtype):
    """θ (shared) and one head per task with L_k = g_kᵀθ + ½‖φ_k‖²·k: ∇_θ L_k = g_k exactly, in any dtype."""
    theta = nn.Parameter(torch.zeros(grads.shape[1], dtype=dtype))
    heads = [nn.Parameter(torch.full((2,), 0.5, dtype=dtype)) for _ in range(len(grads))]
    rows = grads.to(dtype)

    def losses():
        return torch.stack([(rows[k] * theta).sum() + 0.5 * (k + 1) * (heads[k] ** 2).sum() for k in range(len(rows))])
    return theta, heads, losses


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_half_precision_weights_and_update_equal_float64(name):
    grads = large_gradients()
    assert torch.isinf((grads.half() ** 2).sum(1)).any()  # the fp16 Gram matrix would overflow
    runs = {}
    for dtype in (torch.float16, torch.float64):
        theta, heads, losses = linear_problem(grads, dtype)
        method = get_method(name, 3)
        steps = []
        for _ in range(STEPS):
            theta.grad = None
            for h in heads:
                h.grad = None
            info = method.backward(losses(), [theta], heads)
            assert theta.grad is None or theta.grad.dtype == dtype  # gradients keep the model's dtype
            steps.append((info["weights"].double(), None if theta.grad is None else theta.grad.double(),
                          [None if h.grad is None else h.grad.double() for h in heads]))
        runs[dtype] = steps
    # The gradients are fp16-representable, so the Gram methods see the same float64 Gram matrix in both runs (the
    # same solve; their weights come back in float32: 2^-24). fp16 itself rounds to u = 2^-11 = 4.9e-4 relative: the
    # weights of a method that returns them in the losses' dtype (AuxiLearn) once, an fp16 .grad up to four times
    # (the float32 combination, then clip_grad_norm_'s norm, coefficient and product: 4u = 1.95e-3), hence rtol 2e-3;
    # the update's atol is relative to its largest entry, for entries that cancel (measured: ≤ 0.2 of each bound).
    for (w16, g16, h16), (w64, g64, h64) in zip(runs[torch.float16], runs[torch.float64]):
        assert torch.isfinite(w16).all()
        torch.testing.assert_close(w16, w64, rtol=2e-3, atol=1e-6)
        assert (g16 is None) == (g64 is None)
        if g64 is not None and g64.abs().max() < 65504:  # the update up to fp16's rounding of its entries
            torch.testing.assert_close(g16, g64, rtol=2e-3, atol=2e-3 * g64.abs().max().item())
        # (OL-AUX's weights grow with these dot products, ~1e5, until its update itself leaves fp16's range)
        for a, b in zip(h16, h64):
            assert (a is None) == (b is None)
            if b is not None:
                torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-4)


class HalfModel(TinyMultiTask):
    """fp16 parameters and activations; each MSE loss in float32 (as ``Task.loss`` computes it): its value
    (~1e5) would overflow in fp16, its gradients in the parameters' fp16 do not."""

    def losses(self, batch):
        x, ys = batch
        return torch.stack([((out.float() - y) ** 2).mean() for out, y in zip(self(x), ys)])


def issue_half_model():
    """The issue's minimal input: the 2-layer trunk and three linear heads in fp16, targets scaled by 600."""
    torch.manual_seed(0)
    model = HalfModel().half()
    x, ys = make_batch()
    return model, (x.half(), [600 * y for y in ys])


def per_task_rows(model, batch):
    losses = model.losses(batch)
    rows = []
    for k in range(3):
        g = torch.autograd.grad(losses[k], model.shared_parameters(), retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["gcs", "cagrad", "nashmtl", "auxinash"])
def test_half_model_of_the_issue_matches_float64_formulas(name):
    model, batch = issue_half_model()
    rows = per_task_rows(model, batch)
    assert rows.dtype == torch.float16 and torch.isfinite(rows).all()
    g = rows.double()
    norms = g.norm(dim=1)
    assert norms.max() > 256  # squared norms beyond fp16's range
    gram = g @ g.T
    if name == "gcs":
        cosine = gram[0] / (norms[0] * norms)
        expected = (cosine > 0).double()
        expected[0] = 1
        update = expected @ g
    elif name == "cagrad":
        scale = np.linalg.norm(gram.numpy())
        normalised = gram.numpy() / scale
        radius = 0.4 * np.sqrt(normalised.mean())
        w = torch.as_tensor(solve_cagrad(normalised, radius))
        gw = w @ g
        lam = 0.4 * np.sqrt(gram.numpy().mean()) / gw.norm()
        expected = 3 * (torch.full((3,), 1 / 3, dtype=torch.float64) + lam * w) / (1 + 0.4**2)
        update = expected @ g
    else:
        expected = torch.as_tensor(solve_nash(gram.numpy()))
        update = expected @ g
        update = update / update.norm()  # clipped to norm 1
    model.zero_grad(set_to_none=True)
    info = get_method(name, 3).backward(model.losses(batch), model.shared_parameters(),
                                        model.task_specific_parameters())
    # The weights: the method and this formula take the same fp16 rows to float64, so they differ by the float32
    # rounding of the returned weights (2^-24), two Nash solves (2κ · 1e-8, κ = 1.2) and the reference's 1e-8 terms
    # that CAGrad keeps (negligible at these norms; its w sits at a vertex, slopes ≥ 0.17, where the barrier's error
    # is ~1e-10): ≤ 2e-7 relative (measured 4.4e-8)
    torch.testing.assert_close(info["weights"].double(), expected, rtol=1e-6, atol=0)
    got = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
    assert got.dtype == torch.float16
    # the fp16 .grad: up to four roundings of u = 2^-11 (see above), 2e-3; atol for entries that cancel
    torch.testing.assert_close(got.double(), update, rtol=5e-3, atol=5e-3 * update.abs().max().item())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bf16_autocast_losses_train(name):
    """Losses computed under bf16 autocast and cast to float32 (the loop's --amp): finite weights and update."""
    torch.manual_seed(0)
    model = TinyMultiTask()
    x, ys = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.losses((x, ys)).float()
    info = get_method(name, 3).backward(losses, model.shared_parameters(), model.task_specific_parameters())
    assert torch.isfinite(info["weights"]).all()
    for p in model.shared_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.dtype == torch.float32


# -- errors at the API edge ------------------------------------------------------------------------------------

def fresh():
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    return model, model.losses(double_batch())


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_names_the_task(name, bad):
    model, losses = fresh()
    losses = losses * torch.tensor([1.0, bad, 1.0], dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="task 1 is NaN or infinite"):
        get_method(name, 3).backward(losses, model.shared_parameters(), model.task_specific_parameters())
    assert all(p.grad is None for p in model.parameters())  # nothing written


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("make, error, message", [
    (lambda l: l[:2], ValueError, r"shape \(3,\)"),
    (lambda l: l.reshape(3, 1), ValueError, r"shape \(3,\)"),
    (lambda l: l.sum(), ValueError, r"shape \(3,\)"),
    (lambda l: list(l), TypeError, "torch.stack"),
    (lambda l: l.detach(), ValueError, "no autograd history"),
    (lambda l: l.detach().long(), TypeError, "floating-point"),
])
def test_bad_losses(name, make, error, message):
    model, losses = fresh()
    with pytest.raises(error, match=message):
        get_method(name, 3).backward(make(losses), model.shared_parameters(), model.task_specific_parameters())


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("make, error, message", [
    (lambda m: (m.shared[0].weight, ()), TypeError, r"shared_parameters .*single tensor"),
    (lambda m: (m.shared, ()), TypeError, r"shared_parameters .*list\(module.parameters\(\)\)"),
    (lambda m: (m.shared.named_parameters(), ()), TypeError, r"shared_parameters .*not named_parameters"),
    (lambda m: (m.shared_parameters(), 3), TypeError, "task_specific_parameters must be an iterable"),
    (lambda m: (m.shared_parameters(), m.shared_parameters()[:1]), ValueError, "both shared_parameters"),
])
def test_bad_parameter_arguments(name, make, error, message):
    model, losses = fresh()
    shared, specific = make(model)
    with pytest.raises(error, match=message):
        get_method(name, 3).backward(losses, shared, specific)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bad_representation(name):
    model, losses = fresh()
    with pytest.raises(TypeError, match="representation must be a tensor"):
        get_method(name, 3).backward(losses, model.shared_parameters(), representation=[1.0])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_non_finite_meta_validation_loss(name):
    """A meta-update on a NaN meta-validation loss: a FloatingPointError for methods that learn from it, nothing
    for the others; the method's state is unchanged either way."""
    model, losses = fresh()
    method = get_method(name, 3)
    method.bind_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
    method.backward(losses, model.shared_parameters(), model.task_specific_parameters())
    before = copy.deepcopy(method.state_dict())

    def nan_losses(batch):
        return model.losses(batch) * float("nan")
    try:
        method.meta_update(nan_losses, double_batch(0), double_batch(1), model.shared_parameters())
    except FloatingPointError as error:
        assert "meta-validation" in str(error)
    after = method.state_dict()
    for key, value in before.items():  # exact: unchanged, not recomputed
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True)
