"""Hypergradients: truncated Neumann series against exact implicit gradients and finite differences."""
import numpy as np
import pytest
import torch

from methods import get_method
from methods.implicit import implicit_hypergradient, neumann_series
from methods.nash_solver import solve_nash
from tests.helpers import TinyMultiTask, make_batch, task_gradients


pytestmark = pytest.mark.usefixtures("float64")


def quadratic_problem(k=3, d=5, n=40, seed=0):
    """Weighted least squares: L_T(θ, φ) = Σ_k φ_k ½‖X_k θ − y_k‖²/n, L_V = ½‖X_v θ − y_v‖²/n."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, d, generator=g) for _ in range(k)]
    ys = [torch.randn(n, generator=g) for _ in range(k)]
    xv, yv = torch.randn(n, d, generator=g), torch.randn(n, generator=g)
    phi = torch.tensor([1.0, 0.5, 2.0][:k])

    def train_loss(theta, weights):
        return sum(w * 0.5 * ((x @ theta - y) ** 2).mean() for w, x, y in zip(weights, xs, ys))

    def val_loss(theta):
        return 0.5 * ((xv @ theta - yv) ** 2).mean()

    def optimum(weights):
        hessian = sum(w * x.T @ x / n for w, x in zip(weights, xs))
        rhs = sum(w * x.T @ y / n for w, x, y in zip(weights, xs, ys))
        return torch.linalg.solve(hessian, rhs), hessian

    return train_loss, val_loss, optimum, phi


def test_neumann_hypergradient_converges_to_exact_implicit_gradient():
    train_loss, val_loss, optimum, phi = quadratic_problem()
    theta_star, hessian = optimum(phi)
    theta = theta_star.clone().requires_grad_(True)
    # reference 1: the implicit-function formula with the exact inverse Hessian
    v = torch.autograd.grad(val_loss(theta), theta)[0]
    task_grads = torch.stack([torch.autograd.grad(train_loss(theta, torch.eye(3)[k]), theta)[0] for k in range(3)])
    exact = -(task_grads @ torch.linalg.solve(hessian, v))
    # reference 2: central finite differences of L_V(θ*(φ))
    h = 1e-6
    numeric = torch.stack([(val_loss(optimum(phi + h * e)[0]) - val_loss(optimum(phi - h * e)[0])) / (2 * h)
                           for e in torch.eye(3)])
    # central differences with h = 1e-6 of direct solves (no stopping rule): O(h²) = 1e-12 truncation, round-off
    # eps · L_V / h ≈ 1e-10 absolute (L_V = 0.6): atol 1e-9 (measured 5e-11)
    torch.testing.assert_close(exact, numeric, rtol=1e-6, atol=1e-9)
    scale = 1.0 / torch.linalg.eigvalsh(hessian).max().item()
    errors = []
    for terms in [0, 1, 2, 4, 8, 200]:
        weights = phi.clone().requires_grad_(True)
        (estimate,) = implicit_hypergradient(val_loss(theta), train_loss(theta, weights), [theta], [weights],
                                             terms=terms, scale=scale)
        errors.append(((scale * estimate - exact).norm() / exact.norm()).item())
    assert all(a > b for a, b in zip(errors[:-1], errors[1:-1])), errors
    # 200 terms: the truncation (1 − λ_min / λ_max)^201 = 5e-62 (κ = 2), so only the round-off of 200 Hessian-vector
    # products remains, ≲ 200 · eps · κ = 4e-14 (measured 3.8e-16)
    assert errors[-1] < 1e-12


def test_neumann_series_uses_exact_hessian_vector_products():
    train_loss, _, optimum, phi = quadratic_problem()
    theta_star, hessian = optimum(phi)
    theta = (theta_star + 0.1).requires_grad_(True)
    gradient = torch.autograd.grad(train_loss(theta, phi), theta, create_graph=True)
    v = torch.randn(5)
    (one_term,) = neumann_series([v], gradient, [theta], terms=1, scale=0.3)
    torch.testing.assert_close(one_term, v + (v - 0.3 * hessian @ v))


def test_hvp_on_network_matches_explicit_hessian():
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    batch = make_batch()
    batch = (batch[0].double(), [y.double() for y in batch[1]])
    params = model.shared_parameters()
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    sizes = [p.numel() for p in params]

    def loss_of_flat(vector):
        chunks = torch.split(vector, sizes)
        x, ys = batch
        h = torch.tanh(x @ chunks[0].view(params[0].shape).T + chunks[1])
        return sum(((head(h) - y) ** 2).mean() for head, y in zip(model.heads, ys))

    hessian = torch.autograd.functional.hessian(loss_of_flat, flat)
    gradient = torch.autograd.grad(model.losses(batch).sum(), params, create_graph=True)
    v = torch.randn(flat.numel())
    pieces = [c.view_as(p) for c, p in zip(torch.split(v, sizes), params)]
    series = torch.cat([t.reshape(-1) for t in neumann_series(pieces, gradient, params, terms=1, scale=1.0)])
    torch.testing.assert_close(series, 2 * v - hessian @ v)


def test_auxinash_p_hypergradient_matches_one_step_finite_differences():
    """With 0 Neumann terms, dL_V/dp is the derivative of L_V after one SGD step of size η (times 1/η)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    train = make_batch(seed=1)
    train = (train[0].double(), [y.double() for y in train[1]])
    val = make_batch(seed=2)
    val = (val[0].double(), [y.double() for y in val[1]])
    method = get_method("auxinash", 3, p=[1.5, 0.5, 1.0], neumann_terms=0, neumann_scale=1.0)
    model.zero_grad()
    method.backward(model.losses(train), model.shared_parameters(), model.task_specific_parameters())
    analytic = method.p_hypergradient(model.losses, train, val, model.shared_parameters())

    g, _ = task_gradients(model, train)
    gram = (g @ g.T).numpy()
    params = model.shared_parameters()
    start = [p.detach().clone() for p in params]
    eta, h = 1e-6, 1e-5

    def val_after_step(p):
        alpha = torch.as_tensor(solve_nash(gram, p, tol=1e-15))
        update = torch.split(alpha @ g, [q.numel() for q in params])
        with torch.no_grad():
            for q, s, u in zip(params, start, update):
                q.copy_(s - eta * u.view_as(q))
            value = model.losses(val)[0].item()
            for q, s in zip(params, start):
                q.copy_(s)
        return value

    p0 = method.p.numpy()
    numeric = np.array([(val_after_step(p0 + h * e) - val_after_step(p0 - h * e)) / (2 * h * eta)
                        for e in np.eye(3)])
    # the finite step η adds an O(η ‖H‖ ‖update‖ / ‖∇L_V‖) term, measured 2e-5 to 6e-5 relative; the central
    # difference in p adds O(h²) = 1e-10 and the round-off of L_V over 2hη = 2e-11, which stays below that (L_V rounds
    # alike at nearby points: moving p by 1e-13 relative leaves the quotient unchanged); the method's α stops at
    # residual 1e-8, the reference's at 1e-15 (κ · 1e-8 relative)
    np.testing.assert_allclose(analytic.numpy(), numeric, rtol=1e-3, atol=1e-6 * np.abs(numeric).max())


def test_auxinash_meta_update_moves_p_and_keeps_it_normalised():
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    train = make_batch(seed=1)
    train = (train[0].double(), [y.double() for y in train[1]])
    method = get_method("auxinash", 3)
    model.zero_grad()
    method.backward(model.losses(train), model.shared_parameters(), model.task_specific_parameters())
    gradient = method.p_hypergradient(model.losses, train, train, model.shared_parameters())
    info = method.meta_update(model.losses, train, train, model.shared_parameters())
    clipped = gradient * min(1.0, 1.0 / gradient.norm().item())
    expected = (torch.ones(3, dtype=torch.float64) - 5e-3 * clipped).clamp(min=1e-4)
    torch.testing.assert_close(method.p, expected / expected.sum() * 3)
    assert abs(method.p.sum().item() - 3) < 1e-12 and torch.all(method.p > 0)  # rescaled in float64: a few ulps
    assert "p" in info


@pytest.mark.parametrize("linear", [True, False])
def test_auxilearn_hypergradient_matches_exact_implicit_gradient(linear):
    """On the weighted least-squares problem at its optimum, AuxiLearn's hypergradient (× η, many terms)
    equals the exact implicit gradient of L_V(θ*(φ)) with respect to the network's parameters."""
    train_loss, val_loss, optimum, _ = quadratic_problem(seed=3)
    network = get_method("auxilearn", 3, linear=linear).network

    def losses_at(theta):
        return torch.stack([train_loss(theta, torch.eye(3)[k]) for k in range(3)])

    # θ*(φ): the training loss h_φ(L(θ)) is minimised by Newton's method from the least-squares start
    def theta_star():
        theta = optimum(torch.ones(3))[0].clone().requires_grad_(True)
        for _ in range(12):
            loss = network(losses_at(theta))
            g = torch.autograd.grad(loss, theta, create_graph=True)[0]
            hess = torch.stack([torch.autograd.grad(g[i], theta, retain_graph=True)[0] for i in range(len(g))])
            theta = (theta - torch.linalg.solve(hess, g)).detach().requires_grad_(True)
        return theta, hess

    theta, hess = theta_star()
    scale = 1.0 / torch.linalg.eigvalsh(hess).max().item()
    params = list(network.parameters())
    estimate = implicit_hypergradient(val_loss(theta), network(losses_at(theta)), [theta], params,
                                      terms=500, scale=scale)
    first = params[0]
    h = 1e-6
    for index in [(0, 0), (0, 1)]:
        with torch.no_grad():
            first[index] += h
        plus = val_loss(theta_star()[0]).item()
        with torch.no_grad():
            first[index] -= 2 * h
        minus = val_loss(theta_star()[0]).item()
        with torch.no_grad():
            first[index] += h
        numeric = (plus - minus) / (2 * h)
        # 500 Neumann terms: truncation (1 − λ_min / λ_max)^501 < 1e-150 (κ ≤ 2); θ* by 12 Newton steps, converged to
        # round-off (‖∇‖ ~ 2e-16); central differences: O(h²) = 1e-12 and round-off eps · L_V / h ≈ 1e-10 absolute
        assert abs(scale * estimate[0][index].item() - numeric) <= 1e-5 * max(1e-4, abs(numeric)) + 1e-9
