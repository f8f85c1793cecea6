"""The fast mode of the Nash family (issue 24) against the exact method, in cases solved by hand; the per-task
gradients do no work for other tasks' heads; α reuse between solves; the meta-update's exact shortcut."""

import pytest
import torch
from torch import nn

from experiments.training.cli import base_parser, make_config
from methods import METHOD_NAMES, METHODS, GradientMethod, get_method
from methods.gradients import per_task_gradients, task_outputs
from tests.helpers import TinyMultiTask, make_batch


class OneLinearLayer(nn.Module):
    """z = W x (no bias) is the shared representation; head k: L_k = (a_kᵀ z − y_k)²."""

    def __init__(self, n_tasks=3, d_in=4, d_z=5):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W = nn.Parameter(torch.randn(d_z, d_in, generator=g, dtype=torch.float64))
        self.heads = nn.ParameterList([nn.Parameter(torch.randn(d_z, generator=g, dtype=torch.float64))
                                       for _ in range(n_tasks)])

    def losses(self, x, y):
        z = self.W @ x
        return torch.stack([(a @ z - y_k) ** 2 for a, y_k in zip(self.heads, y)]), z


def grads_of(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


@pytest.mark.parametrize("name", ["auxinash", "nashmtl"])
def test_fast_alpha_is_exact_alpha_times_norm_of_x(name):
    """One sample x through one linear shared layer: ∇_W L_k = g_z,k xᵀ, so the parameter Gram matrix is the
    representation Gram matrix times ‖x‖², and α_k (Mα)_k = p_k gives α_exact = α_fast / ‖x‖. The updates are
    then parallel: fast = ‖x‖ × exact, for the shared and the task-specific parameters."""
    model = OneLinearLayer()
    x = torch.tensor([0.5, -2.0, 1.5, 3.0], dtype=torch.float64)
    y = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    kwargs = dict(max_norm=0.0) if name == "nashmtl" else dict(max_norm=0.0, p=[1.6, 0.9, 0.5])
    results = {}
    for fast in (False, True):
        method = get_method(name, n_tasks=3, fast=fast, **kwargs)
        model.zero_grad(set_to_none=True)
        losses, z = model.losses(x, y)
        info = method.backward(losses, [model.W], list(model.heads), representation=z if fast else None)
        results[fast] = info["weights"].double(), grads_of([model.W]), grads_of(model.heads)
    norm_x = x.norm()
    # Two Newton solves, on M_z and on M_θ = ‖x‖² M_z summed in another order, each stopped anywhere below relative
    # residual 1e-8: |δα_k| / α_k ≤ κ · 1e-8 with κ = ‖p‖ max_k (|J⁻¹| 1)_k / α_k ≤ 3.4 here (J = diag(Mα) + diag(α) M),
    # 6.8e-8 for the two; the updates Σ α_k g_k move by as much of their largest entry (measured: 1.3e-11 relative)
    torch.testing.assert_close(results[False][0], results[True][0] / norm_x, rtol=1e-7, atol=0)
    for fast_update, exact_update in zip(results[True][1:], results[False][1:]):
        torch.testing.assert_close(fast_update, norm_x * exact_update, rtol=1e-7,
                                   atol=1e-7 * fast_update.abs().max().item())


def test_fast_mode_head_gradients_equal_the_exact_methods():
    """The K passes that stop at the representation give each head the same gradient as the K passes over the
    shared parameters; with the same α, the heads' update is the exact method's; the shared parameters get
    Σ_k α_k ∇_θ L_k through one backward of the representation's combined gradient."""
    torch.manual_seed(0)
    model = TinyMultiTask()
    batch = make_batch()
    x, ys = batch
    z = model.shared(x)
    losses = torch.stack([((head(z) - y) ** 2).mean() for head, y in zip(model.heads, ys)])
    specific = model.task_specific_parameters()
    exact = per_task_gradients(losses, model.shared_parameters(), specific)
    fast = per_task_gradients(losses, [z], specific)
    # exact: each head's gradient comes from the same backward through that head in both (autograd only prunes the
    # branches whose gradient is not asked for)
    torch.testing.assert_close(fast.task_specific, exact.task_specific, rtol=0, atol=0)

    method = get_method("auxinash", n_tasks=3, fast=True, max_norm=0.0)
    model.zero_grad(set_to_none=True)
    info = method.backward(losses, model.shared_parameters(), specific, representation=z)
    alpha = info["weights"].float()
    # exact: the method forms the same float32 product α @ (the same rows)
    torch.testing.assert_close(grads_of(specific), alpha @ exact.task_specific, rtol=0, atol=0)
    # float32 by two routes, Jᵀ(Σ_k α_k g_z,k) against Σ_k α_k Jᵀ g_z,k: each entry sums 16 samples' and 3 tasks'
    # terms in two orders, within (16 + 3) · 2^-24 = 1.1e-6 of the sum of their magnitudes; atol 1e-5 of the
    # largest entry (measured: 1.2e-7 of 1.15) allows those magnitudes to sum to 9 times it
    expected = alpha @ exact.shared
    torch.testing.assert_close(grads_of(model.shared_parameters()), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max().item())


def test_each_head_gradient_comes_from_its_own_pass_only():
    """With stacked losses, pass k reaches head k only: other heads get no gradient (None), not zeros computed
    by running their backward on zero (what ``losses[k]`` gives), and the values are unchanged."""
    torch.manual_seed(0)
    model = TinyMultiTask()
    losses = model.losses(make_batch())
    heads = model.task_specific_parameters()
    for k, target in enumerate(task_outputs(losses)):
        output, grad_output = target
        grads = torch.autograd.grad([output], heads, grad_outputs=[grad_output], retain_graph=True,
                                    allow_unused=True)
        own = {2 * k, 2 * k + 1}  # weight and bias of head k
        assert all((g is None) == (i not in own) for i, g in enumerate(grads))
        reference = torch.autograd.grad(losses[k], heads, retain_graph=True, allow_unused=True)
        assert all(r is not None for r in reference)  # the stack's backward reaches every head
        for i in own:
            torch.testing.assert_close(grads[i], reference[i], rtol=0, atol=0)
    # a loss vector that is not a plain stack falls back to losses[k]
    assert all(isinstance(t[0], torch.Tensor) for t in task_outputs(losses * 2))
    # a constant task loss (CIFAR's unlabelled-only batches) gives zero rows
    main = losses[0]
    constant = torch.stack([main, torch.zeros_like(main), losses[2]])
    grads = per_task_gradients(constant, model.shared_parameters(), heads)
    assert grads.shared[1].abs().sum() == 0 and grads.task_specific[1].abs().sum() == 0
    assert grads.shared[0].abs().sum() > 0


@pytest.mark.parametrize("fast", [False, True])
def test_alpha_reuse_uses_the_last_solves_alpha_exactly(fast):
    """update_weights_every=3: steps 0 and 3 solve; steps 1, 2 apply the α of step 0 bit for bit, as one
    backward of Σ_k α_k L_k (no representation needed on those steps)."""
    torch.manual_seed(0)
    model = TinyMultiTask()
    method = get_method("auxinash", n_tasks=3, fast=fast, update_weights_every=3, max_norm=0.0)
    weights = []
    for step in range(5):
        x, ys = make_batch(seed=step)
        z = model.shared(x)
        losses = torch.stack([((head(z) - y) ** 2).mean() for head, y in zip(model.heads, ys)])
        model.zero_grad(set_to_none=True)
        reused = step % 3 != 0
        info = method.backward(losses, model.shared_parameters(), model.task_specific_parameters(),
                               representation=None if reused else (z if fast else None))
        weights.append(info["weights"].detach().float().cpu().clone())  # as applied to the float32 losses
        if reused:
            assert torch.equal(info["weights"].cpu(), method.alpha)  # the last solve's α, float64
            expected = torch.autograd.grad((weights[-1] * model.losses((x, ys))).sum(),
                                           model.shared_parameters() + model.task_specific_parameters())
            # exact: the same forward pass and one backward of the same float32 weighted sum
            torch.testing.assert_close(grads_of(model.shared_parameters() + model.task_specific_parameters()),
                                       torch.cat([e.reshape(-1) for e in expected]), rtol=0, atol=0)
    assert torch.equal(weights[1], weights[0]) and torch.equal(weights[2], weights[0])
    assert not torch.equal(weights[3], weights[0]) and torch.equal(weights[4], weights[3])


def test_fast_mode_needs_the_representation():
    model = TinyMultiTask()
    method = get_method("auxinash", n_tasks=3, fast=True)
    with pytest.raises(ValueError, match="representation"):
        method.backward(model.losses(make_batch()), model.shared_parameters(), model.task_specific_parameters())


def test_fast_flag_reaches_the_nash_family_only():
    parser = base_parser("test", lr=1e-3)
    for name in ("auxinash", "nashmtl"):
        config = make_config(parser.parse_args(["--method", name, "--fast"]), ["a", "b"], None)
        assert config.method_kwargs["fast"] is True
        assert get_method(name, n_tasks=2, **config.method_kwargs).fast
    assert "fast" not in make_config(parser.parse_args(["--method", "auxinash"]), ["a", "b"], None).method_kwargs
    with pytest.raises(ValueError, match="--fast"):
        make_config(parser.parse_args(["--method", "equal", "--fast"]), ["a", "b"], None)


def test_mixed_term_from_k_gradients_equals_double_backward():
    """The meta-update's mixed term u ᵀ∇_θ L_k from K plain gradients equals the double backward of the
    official code (and ``implicit_hypergradient``), in float64, on a model with batch norm."""
    from experiments.training.models import MultiLeNet
    from methods.implicit import implicit_hypergradient, weighted_sum_hypergradient

    torch.manual_seed(0)
    model = MultiLeNet({"left": 10, "right": 10}, width=0.5).double()
    x, y = torch.randn(6, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (6,))
    shared = model.shared_parameters()

    def losses():
        features = model.encode(x)
        return torch.stack([nn.functional.cross_entropy(head(features), y) for head in model.heads.values()])

    weights = torch.tensor([0.7, 1.9], dtype=torch.float64)
    results = {mode: weighted_sum_hypergradient(losses()[0], losses, weights, shared, 3, 1e-2, mixed=mode)
               for mode in ("gradients", "double_backward")}
    alpha = weights.clone().requires_grad_(True)
    (reference,) = implicit_hypergradient(losses()[0], lambda: (alpha * losses()).sum(), shared, [alpha], 3, 1e-2)
    assert results["gradients"].abs().min() > 0
    # float64, no iterative solve: the routes differ by round-off in their sums (measured ≤ 6e-16 relative); 1e-10
    # (here and in the two tests below) leaves a factor 1e5 for cancellation on another machine
    torch.testing.assert_close(results["gradients"], results["double_backward"], rtol=1e-10, atol=0)
    torch.testing.assert_close(results["gradients"], reference.detach(), rtol=1e-10, atol=0)


def test_auxinash_meta_update_unchanged_by_the_mixed_term_mode():
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    batch = tuple(t.double() if isinstance(t, torch.Tensor) else [u.double() for u in t] for t in make_batch())
    updates = {}
    for mode in ("gradients", "double_backward"):
        method = get_method("auxinash", n_tasks=3, mixed_term=mode)
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        updates[mode] = method.p_hypergradient(model.losses, batch, batch,
                                               model.shared_parameters())
    # the same solve in both (same Gram matrix): round-off of the mixed term only (measured 3e-15)
    torch.testing.assert_close(updates["gradients"], updates["double_backward"], rtol=1e-9, atol=0)


def test_zero_neumann_terms_skip_the_gradient_graph_with_the_same_result():
    """terms = 0: u = ∇_θ L_V, so the hypergradient is −(∇_θ L_V)ᵀ∇_θ L_k, with or without building the graph."""
    from methods.implicit import weighted_sum_hypergradient

    torch.manual_seed(0)
    model = TinyMultiTask().double()
    batch = tuple(t.double() if isinstance(t, torch.Tensor) else [u.double() for u in t] for t in make_batch())
    weights = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    shared = model.shared_parameters()
    short = weighted_sum_hypergradient(model.losses(batch)[0], lambda: model.losses(batch), weights, shared, 0)
    full = weighted_sum_hypergradient(model.losses(batch)[0], lambda: model.losses(batch), weights, shared, 0,
                                      mixed="double_backward")
    torch.testing.assert_close(short, full, rtol=1e-10, atol=0)
    g = per_task_gradients(model.losses(batch), shared).shared
    torch.testing.assert_close(short, -(g @ g[0]), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if issubclass(METHODS[n], GradientMethod)])
def test_a_loss_that_misses_the_representation_is_named(name):
    """A task computed from another encoder pass (a rotated view) would get a zero representation gradient and
    silently drop out of the trunk's update: every per-task-gradient method names it instead."""
    torch.manual_seed(0)
    encoder, heads = torch.nn.Linear(4, 6), [torch.nn.Linear(6, 1) for _ in range(3)]
    x = torch.randn(8, 4)
    z, other = encoder(x), encoder(x.flip(0))
    losses = torch.stack([heads[0](z).pow(2).mean(), heads[1](z).pow(2).mean(), heads[2](other).pow(2).mean()])
    method = get_method(name, 3, gradient_space="representation")
    with pytest.raises(ValueError, match="task 2 does not depend on the representation"):
        method.backward(losses, list(encoder.parameters()), [p for h in heads for p in h.parameters()],
                        representation=z)
