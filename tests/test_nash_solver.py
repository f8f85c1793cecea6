import numpy as np
import pytest
import torch

from methods.nash_solver import (nash_alpha, nash_alpha_derivative, relative_residual, solve_nash,
                                 solve_nash_cvxpy)


def random_gram(rng, k, condition=None, dim=64, scale=1.0):
    grads = rng.normal(size=(k, dim))
    if condition is not None:  # ill-conditioned: gradients nearly parallel
        base = rng.normal(size=dim)
        grads = base + grads / condition
    return scale * grads @ grads.T, grads


@pytest.mark.parametrize("k", range(1, 11))
@pytest.mark.parametrize("condition", [None, 1e3, 1e6])
def test_residual_well_and_ill_conditioned(k, condition):
    rng = np.random.default_rng(k)
    gram, _ = random_gram(rng, k, condition, scale=rng.uniform(1e-4, 1e4))
    p = rng.uniform(0.1, 3.0, size=k)
    alpha = solve_nash(gram, p)
    assert np.all(np.isfinite(alpha)) and np.all(alpha > 0)
    assert relative_residual(gram, p, alpha) <= 1e-8


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_agrees_with_cvxpy_reference(k):
    rng = np.random.default_rng(10 + k)
    gram, _ = random_gram(rng, k, scale=50.0)
    p = rng.uniform(0.5, 2.0, size=k)
    p = p / p.sum() * k
    ours = solve_nash(gram, p)
    reference = solve_nash_cvxpy(gram, p)
    if relative_residual(gram, p, reference) < 1e-5:  # the reference converged
        assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) <= 1e-4
    assert relative_residual(gram, p, ours) <= min(1e-8, relative_residual(gram, p, reference))


def test_scale_behaviour():
    rng = np.random.default_rng(0)
    gram, _ = random_gram(rng, 4)
    p = np.array([0.5, 1.0, 1.5, 1.0])
    alpha = solve_nash(gram, p)
    for c in [1e-6, 0.3, 7.0, 1e6]:
        np.testing.assert_allclose(solve_nash(c * gram, p), alpha / np.sqrt(c), rtol=1e-7)


def test_update_norm_is_sqrt_sum_p():
    rng = np.random.default_rng(1)
    gram, grads = random_gram(rng, 5, scale=3.0)
    p = rng.uniform(0.2, 2.0, size=5)
    alpha = solve_nash(gram, p)
    update = (alpha[:, None] * np.sqrt(3.0) * grads).sum(0)  # the Gram matrix is 3 G Gᵀ
    np.testing.assert_allclose(update @ update, p.sum(), rtol=1e-7)


def test_p_one_is_nash_mtl_and_symmetric_in_tasks():
    rng = np.random.default_rng(2)
    gram, _ = random_gram(rng, 3)
    alpha = solve_nash(gram)
    np.testing.assert_allclose(alpha * (gram @ alpha), np.ones(3), rtol=1e-8)
    order = np.array([2, 0, 1])
    np.testing.assert_allclose(solve_nash(gram[np.ix_(order, order)]), alpha[order], rtol=1e-7)


def test_orthogonal_gradients_closed_form():
    norms = np.array([0.5, 2.0, 10.0])
    p = np.array([0.2, 1.0, 1.8])
    alpha = solve_nash(np.diag(norms**2), p)
    np.testing.assert_allclose(alpha, np.sqrt(p) / norms, rtol=1e-9)


def test_warm_start_gives_same_solution():
    rng = np.random.default_rng(3)
    gram, _ = random_gram(rng, 6)
    p = rng.uniform(0.5, 1.5, size=6)
    cold = solve_nash(gram, p)
    warm = solve_nash(gram, p, alpha0=cold * 1.7)
    np.testing.assert_allclose(warm, cold, rtol=1e-7)
    assert relative_residual(gram, p, solve_nash(gram, p, alpha0=np.full(6, np.nan))) <= 1e-8


def test_derivative_matches_central_differences():
    rng = np.random.default_rng(4)
    gram, _ = random_gram(rng, 4)
    p = rng.uniform(0.5, 1.5, size=4)
    alpha = solve_nash(gram, p, tol=1e-14)
    analytic = nash_alpha_derivative(gram, p, alpha)
    h = 1e-6
    numeric = np.zeros((4, 4))
    for j in range(4):
        e = np.zeros(4)
        e[j] = h
        numeric[:, j] = (solve_nash(gram, p + e, tol=1e-15) - solve_nash(gram, p - e, tol=1e-15)) / (2 * h)
    assert np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric) <= 1e-5


def test_autograd_function_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    gram_np, _ = random_gram(rng, 3)
    weights = torch.tensor(rng.normal(size=3))
    gram = torch.tensor(gram_np, requires_grad=True)
    p = torch.tensor([0.7, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    (weights @ nash_alpha(gram, p, None, 1e-14)).backward()

    def objective(m, q):
        return float(weights @ torch.as_tensor(solve_nash(m, q, tol=1e-15)))

    h = 1e-6
    for j in range(3):
        e = np.zeros(3)
        e[j] = h
        numeric = (objective(gram_np, p.detach().numpy() + e) - objective(gram_np, p.detach().numpy() - e)) / (2 * h)
        assert abs(p.grad[j].item() - numeric) <= 1e-5 * max(1e-3, abs(numeric))
    for a, b in [(0, 0), (0, 1), (1, 2)]:
        e = np.zeros((3, 3))
        e[a, b] = e[b, a] = h  # a symmetric perturbation: the directional derivative along it
        numeric = (objective(gram_np + e, p.detach().numpy()) - objective(gram_np - e, p.detach().numpy())) / (2 * h)
        analytic = (gram.grad * torch.as_tensor(e / h)).sum().item()
        assert abs(analytic - numeric) <= 1e-5 * max(1e-3, abs(numeric))


@pytest.mark.parametrize("case", ["zero", "identical", "opposite", "all_zero", "one_task", "tiny"])
def test_degenerate_gram_gives_finite_positive_weights(case):
    g = np.random.default_rng(6).normal(size=30)
    grads = {"zero": [g, 0 * g], "identical": [g, g], "opposite": [g, -g], "all_zero": [0 * g, 0 * g, 0 * g],
             "one_task": [g], "tiny": [1e-30 * g, 2e-30 * g]}[case]
    grads = np.stack(grads)
    gram = grads @ grads.T
    p = np.ones(len(grads))
    alpha = solve_nash(gram, p)
    assert np.all(np.isfinite(alpha)) and np.all(alpha > 0)
    update = alpha @ grads
    assert np.isfinite(update).all()
    if case == "identical":  # solvable although singular: α_1 = α_2 and ‖d‖² = Σ p
        assert relative_residual(gram, p, alpha) <= 1e-8
    if case == "opposite":  # no agreement possible: the contributions cancel
        assert np.linalg.norm(update) <= 1e-3 * np.linalg.norm(g)


def test_non_finite_gram_raises():
    with pytest.raises(FloatingPointError, match="not finite"):
        solve_nash(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="positive"):
        solve_nash(np.eye(2), np.array([1.0, -1.0]))
