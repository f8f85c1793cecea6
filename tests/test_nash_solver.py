import numpy as np
import pytest
import torch

from methods.nash_solver import (nash_alpha, nash_alpha_derivative, relative_residual, solve_nash,
                                 solve_nash_cvxpy)

# Tolerances (issue 29). ``solve_nash`` stops at a relative residual ‖α ⊙ Mα − p‖ / ‖p‖ ≤ 1e-8, evaluated on
# M / ‖M‖_F. Recomputed here on the raw M and α it is the same number up to round-off (≤ 2.2e-16 measured on every
# case below), which matters because the solver may stop right at the rule: for K = 1 its diagonal start already
# has residual ridge / (1 + ridge) = 1e-8 − 1e-16 and no Newton step is taken (14 % of random K = 1 problems then
# recompute above 1e-8 exactly).
RESIDUAL_BOUND = 1e-8 + 1e-14
# To first order a residual r moves α by δα = J⁻¹ δF with J = diag(Mα) + diag(α) M and ‖δF‖ ≤ r ‖p‖, so
# |δα_k| / α_k ≤ κ r with κ = ‖p‖ max_k (|J⁻¹| 1)_k / α_k. Two solves of the same problem by different routes
# (scaled, permuted, warm-started: another Newton path, which a 1e-16 change of the input can also cause) each stop
# anywhere within the rule, so they may differ by 2 κ · 1e-8; κ ≤ 2.5 on the problems below (computed for each
# test), hence:
SOLVER_RTOL = 1e-7


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
    assert relative_residual(gram, p, alpha) <= RESIDUAL_BOUND


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_agrees_with_cvxpy_reference(k):
    rng = np.random.default_rng(10 + k)
    gram, _ = random_gram(rng, k, scale=50.0)
    p = rng.uniform(0.5, 2.0, size=k)
    p = p / p.sum() * k
    ours = solve_nash(gram, p)
    reference = solve_nash_cvxpy(gram, p)
    residual = relative_residual(gram, p, reference)
    if residual < 1e-5:  # the reference converged (its own rules stop at ‖Ĝα − p/α‖ < 1e-3 or α still, and
        # CVXPY's solver at its default tolerances, so how far it gets varies with the CVXPY version): two solutions
        # with residuals r and 1e-8 differ by at most κ (r + 1e-8) relative, κ = ‖J⁻¹‖ ‖p‖ / ‖α‖ ≤ 0.71 here
        # (measured: 4e-8 to 6e-7 apart for residuals 7e-8 to 1.2e-6)
        assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) <= 2 * (residual + 1e-8)
    assert relative_residual(gram, p, ours) <= min(RESIDUAL_BOUND, residual)


def test_scale_behaviour():
    rng = np.random.default_rng(0)
    gram, _ = random_gram(rng, 4)
    p = np.array([0.5, 1.0, 1.5, 1.0])
    alpha = solve_nash(gram, p)
    for c in [1e-6, 0.3, 7.0, 1e6]:  # c M / ‖c M‖_F is M / ‖M‖_F to round-off: two solves (κ = 1.8)
        np.testing.assert_allclose(solve_nash(c * gram, p), alpha / np.sqrt(c), rtol=SOLVER_RTOL)


def test_update_norm_is_sqrt_sum_p():
    rng = np.random.default_rng(1)
    gram, grads = random_gram(rng, 5, scale=3.0)
    p = rng.uniform(0.2, 2.0, size=5)
    alpha = solve_nash(gram, p)
    update = (alpha[:, None] * np.sqrt(3.0) * grads).sum(0)  # the Gram matrix is 3 G Gᵀ
    # ‖update‖² = αᵀMα = Σ p_k + Σ r_k with |Σ r_k| ≤ √K ‖r‖ ≤ √K · 1e-8 ‖p‖: 1.2e-8 relative to Σ p here
    np.testing.assert_allclose(update @ update, p.sum(), rtol=1e-7)


def test_p_one_is_nash_mtl_and_symmetric_in_tasks():
    rng = np.random.default_rng(2)
    gram, _ = random_gram(rng, 3)
    alpha = solve_nash(gram)
    # each component of the residual is at most its norm: |α_k (Mα)_k − 1| ≤ 1e-8 ‖p‖ = 1.7e-8 (the rule allows it,
    # even if Newton usually lands far below)
    np.testing.assert_allclose(alpha * (gram @ alpha), np.ones(3), rtol=2e-8)
    order = np.array([2, 0, 1])  # the permuted matrix is summed in another order: two solves (κ = 1.0)
    np.testing.assert_allclose(solve_nash(gram[np.ix_(order, order)]), alpha[order], rtol=SOLVER_RTOL)


def test_orthogonal_gradients_closed_form():
    norms = np.array([0.5, 2.0, 10.0])
    p = np.array([0.2, 1.0, 1.8])
    alpha = solve_nash(np.diag(norms**2), p)
    # diagonal M: δα_k / α_k = r_k / (2 p_k) ≤ 1e-8 ‖p‖ / (2 min p) = 5.2e-8 by the stopping rule
    np.testing.assert_allclose(alpha, np.sqrt(p) / norms, rtol=1e-7)


def test_warm_start_gives_same_solution():
    rng = np.random.default_rng(3)
    gram, _ = random_gram(rng, 6)
    p = rng.uniform(0.5, 1.5, size=6)
    cold = solve_nash(gram, p)
    warm = solve_nash(gram, p, alpha0=cold * 1.7)
    np.testing.assert_allclose(warm, cold, rtol=SOLVER_RTOL)  # two Newton paths (κ = 2.5)
    assert relative_residual(gram, p, solve_nash(gram, p, alpha0=np.full(6, np.nan))) <= RESIDUAL_BOUND


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
    # central differences: O(h²) = 1e-12 truncation; the solves stop at residual ≤ 1e-15 (or at round-off), an α
    # error ≤ κ · 1e-15 (κ = 1) that the division by 2h turns into ≤ 1e-9 (measured 2.6e-10)
    assert np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric) <= 1e-7


def test_autograd_function_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    gram_np, _ = random_gram(rng, 3)
    weights = torch.tensor(rng.normal(size=3))
    gram = torch.tensor(gram_np, requires_grad=True)
    p = torch.tensor([0.7, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    (weights @ nash_alpha(gram, p, None, 1e-14)).backward()

    def objective(m, q):
        return float(weights @ torch.as_tensor(solve_nash(m, q, tol=1e-15)))

    # central differences of solves to residual 1e-15: |error| ≤ O(h²) + κ · 1e-15 / h ≈ 1e-9 absolute, 1e-6 of the
    # 1e-3 floor below, so 1e-5 keeps a factor 10 (measured ≤ 1.2e-8 of it)
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
        assert relative_residual(gram, p, alpha) <= RESIDUAL_BOUND
    if case == "opposite":  # no agreement possible: the contributions cancel
        # the ridge problem's residual rule pins α_1 − α_2 to 2 · 1e-8 · ridge relative (the antisymmetric direction
        # has eigenvalue 1 against the ridge's 1e-8), i.e. to round-off: with α = 1e4 / (√2 ‖g‖), ‖d‖ ≲ 2 eps α ‖g‖
        # = 3e-12, 6e-13 ‖g‖ here (measured 5e-14 ‖g‖); a real update has norm √(Σ p) = 1.4
        assert np.linalg.norm(update) <= 1e-9 * np.linalg.norm(g)


def test_non_finite_gram_raises():
    with pytest.raises(FloatingPointError, match="not finite"):
        solve_nash(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="positive"):
        solve_nash(np.eye(2), np.array([1.0, -1.0]))
