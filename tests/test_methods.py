import copy
import io

import numpy as np
import pytest
import torch

from methods import METHOD_NAMES, get_method
from methods.cagrad import EPS, cagrad_objective, solve_cagrad
from methods.nash_solver import solve_nash
from methods.pcgrad import pcgrad_weights
from tests.helpers import TinyMultiTask, make_batch, run_backward, task_gradients


pytestmark = pytest.mark.usefixtures("float64")

# Tolerances (issue 29). Closed-form methods are compared at assert_close's float64 defaults (rtol = atol = 1e-7), far
# above the round-off of their sums (≤ 1e-14 measured). The Nash tests compare the method's α with the test's own
# solve_nash of the same Gram matrix by another route: two Newton solves, each stopped anywhere below relative
# residual 1e-8, so |δα_k| / α_k ≤ 2κ · 1e-8 with κ = ‖p‖ max_k (|J⁻¹| 1)_k / α_k (J = diag(Mα) + diag(α) M): κ = 1.2
# for p = 1 and 6.2 for p = (2.4, 0.3, 0.3) on this batch, 1.1 on its representation, hence 1.3e-7 at most. An
# update Σ α_k g_k moves by as much of Σ_k α_k |g_k| ≤ 1.3 max |update| (≤ 1.7 here): ≤ 2.9e-7 (p = 1: ≤ 5e-8).
SOLVER_TOLERANCE = dict(rtol=3e-7, atol=3e-7)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyMultiTask().double()


@pytest.fixture
def batch():
    x, ys = make_batch()
    return x.double(), [y.double() for y in ys]


def test_registry():
    for name in ["equal", "ls", "stl", "gcs", "olaux", "auxilearn", "nashmtl", "auxinash", "pcgrad", "cagrad"]:
        assert get_method(name, n_tasks=3).n_tasks == 3
    with pytest.raises(ValueError, match="valid names: .*auxinash"):
        get_method("nash", n_tasks=3)
    with pytest.raises(ValueError, match="main_task"):
        get_method("equal", n_tasks=3, main_task=3)


def test_equal_is_gradient_of_sum(model, batch):
    g, s = task_gradients(model, batch)
    info, shared, specific = run_backward(get_method("ls", 3), model, batch)
    torch.testing.assert_close(shared, g.sum(0))
    torch.testing.assert_close(specific, s.sum(0))
    assert info["weights"].tolist() == [1, 1, 1]


def test_stl_ignores_auxiliaries(model, batch):
    g, s = task_gradients(model, batch)
    info, shared, specific = run_backward(get_method("stl", 3, main_task=1), model, batch)
    torch.testing.assert_close(shared, g[1])
    torch.testing.assert_close(specific, s[1])
    assert info["weights"].tolist() == [0, 1, 0]


@pytest.mark.parametrize("name", ["nashmtl", "auxinash"])
def test_nash_grad_is_clipped_alpha_combination(name, model, batch):
    g, s = task_gradients(model, batch)
    method = get_method(name, 3, max_norm=1.0)
    info, shared, specific = run_backward(method, model, batch)
    alpha = torch.as_tensor(solve_nash(g @ g.T))
    update = alpha @ g
    # ‖Σ α_k g_k‖ = √K before clipping: ‖update‖² = αᵀMα = K + Σ r_k, |Σ r_k| ≤ √K ‖r‖ ≤ √K · 1e-8 √K, so
    # |‖update‖ − √3| ≤ 3e-8 / (2√3) = 8.7e-9 by the stopping rule
    assert abs(update.norm().item() - np.sqrt(3)) < 2e-8
    torch.testing.assert_close(shared, update / (update.norm() + 1e-6), **SOLVER_TOLERANCE)  # clip_grad_norm_ to 1
    torch.testing.assert_close(specific, alpha @ s, **SOLVER_TOLERANCE)
    torch.testing.assert_close(info["weights"].double(), alpha, rtol=SOLVER_TOLERANCE["rtol"], atol=0)


def test_auxinash_fixed_p_and_update_every(model, batch):
    g, _ = task_gradients(model, batch)
    p = torch.tensor([0.8, 0.1, 0.1]) * 3
    method = get_method("auxinash", 3, p=p, learn_p=False, max_norm=0.0, update_weights_every=2)
    info, shared, _ = run_backward(method, model, batch)
    alpha = torch.as_tensor(solve_nash(g @ g.T, p.double()))
    torch.testing.assert_close(shared, alpha @ g, **SOLVER_TOLERANCE)
    # info["p"] is float32 (for the log): one rounding, ≤ 2^-24 relative
    torch.testing.assert_close(info["p"].double(), p.double(), rtol=2**-23, atol=0)
    # the next step reuses α with one backward of the weighted loss, on a different batch
    other = make_batch(seed=1)
    other = (other[0].double(), [y.double() for y in other[1]])
    g2, _ = task_gradients(model, other)
    _, shared2, _ = run_backward(method, model, other)
    torch.testing.assert_close(shared2, alpha @ g2, **SOLVER_TOLERANCE)
    assert method.meta_update(None, None, None, []) == {}


def test_representation_gradients(model, batch):
    """With a representation, α comes from the Gram matrix of ∇_h L_k; the update goes through the encoder."""
    x, ys = batch
    h = model.shared(x)
    losses = torch.stack([((head(h) - y) ** 2).mean() for head, y in zip(model.heads, ys)])
    rep_grads = torch.stack([torch.autograd.grad(losses[k], h, retain_graph=True)[0].reshape(-1) for k in range(3)])
    alpha = torch.as_tensor(solve_nash(rep_grads @ rep_grads.T))
    expected = torch.autograd.grad(h, model.shared_parameters(), grad_outputs=(alpha @ rep_grads).view_as(h))
    expected = torch.cat([e.reshape(-1) for e in expected])
    _, shared, _ = run_backward(get_method("nashmtl", 3, max_norm=0.0, gradient_space="representation"), model, batch,
                                representation=True)
    torch.testing.assert_close(shared, expected, **SOLVER_TOLERANCE)


def test_gcs_drops_conflicting_auxiliary(model):
    for seed in range(100):  # the first batch with one agreeing and one conflicting auxiliary
        x, ys = make_batch(seed=seed)
        batch = (x.double(), [y.double() for y in ys])
        g, s = task_gradients(model, batch)
        cos = torch.nn.functional.cosine_similarity(g[0:1], g, dim=1)
        if (cos[1:] < 0).any() and (cos[1:] > 0).any():
            break
    assert (cos[1:] < 0).any() and (cos[1:] > 0).any()
    info, shared, specific = run_backward(get_method("gcs", 3), model, batch)
    keep = (cos > 0).double()
    keep[0] = 1
    torch.testing.assert_close(shared, keep @ g)
    torch.testing.assert_close(specific, s.sum(0))  # every head still trained by its own loss
    _, shared_w, _ = run_backward(get_method("gcs", 3, weighted=True), model, batch)
    weights = cos.clamp(min=0)
    weights[0] = 1
    torch.testing.assert_close(shared_w, weights @ g)


def test_olaux_weight_update_formula(model, batch):
    """Lin et al.'s accumulated form (``form="accumulated"``; the default is ARML's, pinned in
    tests/test_baselines_fidelity.py): the update now happens inside ``backward`` at the end of every
    ``interval``-th step, no longer in ``meta_update``, and the heads are weighted by w_k too (ARML
    ``task_weighter.py`` / Lin et al. ``ddpg.py``: the auxiliary losses enter the training loss as w_k L_k)."""
    g, s = task_gradients(model, batch)
    method = get_method("olaux", 3, lr=0.05, form="accumulated", interval=2)
    run_backward(method, model, batch)
    run_backward(method, model, batch)  # two steps accumulate, then one update
    method.meta_update(None, None, None, [])  # a no-op now
    dots = g @ g[0]
    expected = (1 + 0.05 * 2 * dots).clamp(min=0)
    expected[0] = 1
    # float64 closed form: 30-term dot products (gemm in the method, gemv here) and 3-term sums in other orders,
    # ≤ 30 · eps = 3e-15 of the sum of the terms' magnitudes; 1e-10 / 1e-12 leaves a factor > 100 for cancellation
    torch.testing.assert_close(method.weights.double(), expected, rtol=1e-10, atol=1e-12)
    _, shared, specific = run_backward(method, model, batch)
    torch.testing.assert_close(shared, method.weights.double() @ g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(specific, method.weights.double() @ s, rtol=1e-10, atol=1e-12)


def test_pcgrad_projects_conflicting_pair():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    grads = torch.stack([g1, g2])
    w = pcgrad_weights(grads @ grads.T, torch.Generator().manual_seed(0))
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    torch.testing.assert_close(w @ grads, p1 + p2)
    # no conflict: plain sum
    grads = torch.stack([g1, torch.tensor([1.0, 1.0])])
    torch.testing.assert_close(pcgrad_weights(grads @ grads.T, torch.Generator()), torch.ones(2))


def test_pcgrad_matches_vector_surgery(model, batch):
    g, _ = task_gradients(model, batch)
    method = get_method("pcgrad", 3, seed=3)
    order_gen = torch.Generator().manual_seed(3)
    projected = []
    for i in range(3):
        gi = g[i].clone()
        for j in torch.randperm(3, generator=order_gen).tolist():
            if j != i and gi @ g[j] < 0:
                gi = gi - (gi @ g[j]) / (g[j] @ g[j]) * g[j]
        projected.append(gi)
    _, shared, _ = run_backward(method, model, batch)
    torch.testing.assert_close(shared, sum(projected))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_cagrad_optimal_and_matches_brute_force(k):
    rng = np.random.default_rng(k)
    grads = rng.normal(size=(k, 8))
    gram = grads @ grads.T
    gram = gram / np.linalg.norm(gram)
    radius = 0.4 * np.sqrt(gram.mean())
    w = solve_cagrad(gram, radius)
    assert abs(w.sum() - 1) < 1e-12 and np.all(w >= 0)  # renormalised after every step: K ulps
    # KKT on the simplex: ∇F_i = μ on the support, ≥ μ off it. The barrier method stops at a duality gap of 1e-10,
    # which bounds F(w) − F*, not w: for an L-smooth convex F the gradient's component along the simplex is then
    # ≤ √(2 L · 1e-10) = 9e-6 (L ≤ 0.42 here), and 1e-16 changes of the input move it anywhere in that range
    # (measured: ≤ 1.5e-9 on these three problems, up to 1e-5 on others)
    norm = np.sqrt(w @ gram @ w + EPS)
    grad = gram.mean(1) + radius * gram @ w / norm
    support = w > 1e-6  # off the support w_i ≈ 1e-10 / (its slope)
    mu = grad[support].mean()
    assert np.allclose(grad[support], mu, atol=2e-5)
    assert np.all(grad[~support] >= mu - 2e-5)
    samples = rng.dirichlet(np.ones(k), size=200000)
    values = samples @ gram.mean(1) + radius * np.sqrt(np.einsum("ni,ij,nj->n", samples, gram, samples) + EPS)
    assert cagrad_objective(w, gram, radius) <= values.min() + 1e-9  # the duality gap, 1e-10, and round-off


def test_cagrad_rank_deficient_gram_is_finite():
    """Three gradients in a plane (a singular Gram matrix), including a pair whose sum is zero."""
    rng = np.random.default_rng(0)
    for grads in (rng.normal(size=(3, 2)), np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])):
        gram = grads @ grads.T
        gram = gram / np.linalg.norm(gram)
        w = solve_cagrad(gram, 0.4 * np.sqrt(max(gram.mean(), 0) + EPS))
        assert np.all(np.isfinite(w)) and abs(w.sum() - 1) < 1e-9 and np.all(w >= 0)  # K ulps: ample


def test_cagrad_update(model, batch):
    g, _ = task_gradients(model, batch)
    info, shared, _ = run_backward(get_method("cagrad", 3, c=0.4), model, batch)
    gram = (g @ g.T).numpy()
    radius = 0.4 * np.sqrt(gram.mean())
    w = torch.as_tensor(solve_cagrad(gram / np.linalg.norm(gram), 0.4 * np.sqrt((gram / np.linalg.norm(gram)).mean())))
    gw = w @ g
    # × K: the official AuxiNash and CAGrad code scale the shared update by the number of tasks
    # (AvivSham/auxinash methods/weight_methods.py CAGrad.overwrite_grad; Cranial-XIX/CAGrad nyuv2/utils.py)
    expected = 3 * (g.mean(0) + radius / gw.norm() * gw) / (1 + 0.4**2)
    # w sits at a vertex of the simplex here (slopes ≥ 0.11 off it), where the barrier's error is ~1e-10 / slope
    # (1e-15 relative noise on the Gram matrix moves the update by 3e-10); the method keeps the reference's 1e-8
    # terms, which this formula drops: 1e-8 / ‖g_w‖ and 1e-8 / (2 mean A) relative, 5e-8 together
    torch.testing.assert_close(shared, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("linear", [False, True])
def test_auxilearn_backward_is_chain_rule_through_network(linear, model, batch):
    method = get_method("auxilearn", 3, linear=linear)
    model.zero_grad()
    losses = model.losses(batch)
    expected = torch.autograd.grad(method.network(losses), model.shared_parameters(), retain_graph=True)
    info, shared, _ = run_backward(method, model, batch)
    torch.testing.assert_close(shared, torch.cat([e.reshape(-1) for e in expected]))
    if linear:
        assert info["weights"].tolist() == [1.0, 1.0, 1.0]


def bound(method, model):
    """``method`` told an optimiser over ``model`` (the loop's ``bind_optimizer``; Auto-λ's look-ahead reads its lr)."""
    method.bind_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
    return method


def _step_all(name, model, batch, val_batch, steps=3, **kwargs):
    method = bound(get_method(name, 3, **kwargs), model)
    for _ in range(steps):
        run_backward(method, model, batch)
        method.meta_update(model.losses, batch, val_batch, model.shared_parameters())
    return method


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_state_round_trip_gives_same_next_update(name, model, batch):
    val_batch = make_batch(seed=7)
    val_batch = (val_batch[0].double(), [y.double() for y in val_batch[1]])
    method = _step_all(name, model, batch, val_batch)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = get_method(name, 3, seed=123) if name in ("pcgrad", "auxilearn", "arml") else get_method(name, 3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    twin = copy.deepcopy(model)
    bound(restored, twin)
    for m, net in [(method, model), (restored, twin)]:
        m.meta_update(net.losses, batch, val_batch, net.shared_parameters())
    info_a, shared_a, spec_a = run_backward(method, model, batch)
    info_b, shared_b, spec_b = run_backward(restored, twin, batch)
    # exact: a bit-identical state (torch.save round trip) and a deep copy of the model run the same code on the same
    # numbers; anything the state dict missed would show up here, not as round-off
    torch.testing.assert_close(shared_a, shared_b, rtol=0, atol=0)
    torch.testing.assert_close(spec_a, spec_b, rtol=0, atol=0)
    torch.testing.assert_close(info_a["weights"], info_b["weights"], rtol=0, atol=0)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_one_task(name):
    torch.manual_seed(0)
    model = TinyMultiTask(n_tasks=1).double()
    x, ys = make_batch(n_tasks=1)
    batch = (x.double(), [ys[0].double()])
    g, _ = task_gradients(model, batch)
    method = bound(get_method(name, 1), model)
    info, shared, _ = run_backward(method, model, batch)
    method.meta_update(model.losses, batch, batch, model.shared_parameters())
    assert torch.isfinite(shared).all()
    cosine = torch.nn.functional.cosine_similarity(shared, g[0], dim=0)
    assert cosine > 0.999  # with one task every method follows its gradient


@pytest.mark.parametrize("name", ["nashmtl", "auxinash", "pcgrad", "cagrad", "gcs", "olaux"])
def test_zero_and_parallel_gradients_stay_finite(name):
    shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = torch.stack([shared.sum() * 0.0, (shared**2).sum(), (shared**2).sum()])  # zero, parallel, parallel
    info = get_method(name, 3).backward(losses, [shared])
    assert torch.isfinite(shared.grad).all() and torch.isfinite(info["weights"]).all()


def test_nan_loss_raises_clearly():
    shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = torch.stack([shared.sum() * float("nan"), (shared**2).sum()])
    with pytest.raises(FloatingPointError, match="NaN"):
        get_method("auxinash", 2).backward(losses, [shared])
