"""MGDA (methods/mgda.py) against the official code, isl-org/MultiObjectiveOptimization: ``multi_task/
min_norm_solvers.py`` (the solver and ``gradient_normalizers``) and ``multi_task/train_multi_task.py`` (lines
157-183: normalise to solve, then one backward of Σ_k w_k L_k). The reference solver below is an independent
few-line transcription of ``find_min_norm_element`` (lines 92-137), not our code; CVXPY gives the minimum-norm QP."""
import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

from methods.mgda import MGDA, exact_min_norm, official_min_norm

EPS64 = np.finfo(np.float64).eps
# CVXPY's optimum (below) is within its gap tolerances of the minimum (1e-12 absolute + 1e-12 relative on M / max|M_ij|,
# whose minimum is ≤ 1) and may undercut it through its feasibility tolerance (1e-12 on w, times the gradient 2Mw,
# ≤ 2 max|M_ij|): 4e-12 · max|M_ij| in all; ``exact`` stops within 2e-12 · max|M_ij| of it (its docstring)
CVXPY_GAP = 4e-12
EXACT_GAP = 2e-12


# -- an independent transcription of the official solver (min_norm_solvers.py) ----------------------------------

def ref_from2(v11, v12, v22):  # lines 9-30
    if v12 >= v11:
        return 0.999, v11
    if v12 >= v22:
        return 0.001, v22
    gamma = -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))
    return gamma, v22 + gamma * (v12 - v22)


def ref_projection(y):  # lines 60-74
    m = len(y)
    sorted_y = np.flip(np.sort(y), axis=0)
    tmpsum, tmax_f = 0.0, (np.sum(y) - 1.0) / m
    for i in range(m - 1):
        tmpsum += sorted_y[i]
        tmax = (tmpsum - 1) / (i + 1.0)
        if tmax > sorted_y[i + 1]:
            tmax_f = tmax
            break
    return np.maximum(y - tmax_f, np.zeros(y.shape))


def ref_next_point(cur, grad, n):  # lines 76-90
    proj = grad - np.sum(grad) / n
    tm1 = -1.0 * cur[proj < 0] / proj[proj < 0]
    tm2 = (1.0 - cur[proj > 0]) / proj[proj > 0]
    t = 1
    if len(tm1[tm1 > 1e-7]) > 0:
        t = np.min(tm1[tm1 > 1e-7])
    if len(tm2[tm2 > 1e-7]) > 0:
        t = min(t, np.min(tm2[tm2 > 1e-7]))
    return ref_projection(proj * t + cur)


def ref_solver(dps):  # lines 92-137, on the matrix of products dps; like the official loop, no iteration count
    n = len(dps)
    dmin = 1e8
    for i in range(n):
        for j in range(i + 1, n):
            c, d = ref_from2(dps[i, i], dps[i, j], dps[j, j])
            if d < dmin:
                dmin, sol = d, [(i, j), c, d]
    sol_vec = np.zeros(n)
    sol_vec[sol[0][0]], sol_vec[sol[0][1]] = sol[1], 1 - sol[1]
    if n < 3:
        return sol_vec
    while True:
        new_point = ref_next_point(sol_vec, -1.0 * np.dot(dps, sol_vec), n)
        v11 = sum(sol_vec[i] * sol_vec[j] * dps[i, j] for i in range(n) for j in range(n))
        v12 = sum(sol_vec[i] * new_point[j] * dps[i, j] for i in range(n) for j in range(n))
        v22 = sum(new_point[i] * new_point[j] * dps[i, j] for i in range(n) for j in range(n))
        nc, _ = ref_from2(v11, v12, v22)
        new_sol_vec = nc * sol_vec + (1 - nc) * new_point
        if np.sum(np.abs(new_sol_vec - sol_vec)) < 1e-5:
            return sol_vec
        sol_vec = new_sol_vec


def cvxpy_min_norm(gram):
    """min_{w ∈ Δ} wᵀMw by CVXPY (Clarabel at tight tolerances), on M scaled to max |M_ij| = 1."""
    scale = np.abs(gram).max()
    w = cp.Variable(len(gram))
    problem = cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(gram / scale))), [w >= 0, cp.sum(w) == 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == cp.OPTIMAL, problem.status  # not "optimal_inaccurate": the tolerances above hold
    return np.asarray(w.value), problem.value * scale


def random_grams(count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        k, p = int(rng.integers(3, 7)), int(rng.integers(2, 12))
        g = rng.normal(size=(k, p)) * rng.uniform(0.3, 3.0, size=(k, 1))
        yield g @ g.T


# -- one step by hand --------------------------------------------------------------------------------------------

def linear_problem(rows, heads=2):
    """θ shared with ∇_θ L_k = rows_k exactly; head k: ½(k+1)‖φ_k‖², φ_k = 1 (∇ = (k+1)·1); L_k(θ=0) = heads·(k+1)/2."""
    theta = torch.nn.Parameter(torch.zeros(len(rows[0]), dtype=torch.float64))
    phis = [torch.nn.Parameter(torch.ones(heads, dtype=torch.float64)) for _ in rows]

    def losses():
        return torch.stack([torch.tensor(r, dtype=torch.float64) @ theta + 0.5 * (k + 1) * (phis[k] ** 2).sum()
                            for k, r in enumerate(rows)])
    return theta, phis, losses


def test_two_tasks_by_hand_loss_plus_and_heads_weighted():
    """g_1 = (3, 0), g_2 = (0, 4); L = (1, 2) at θ = 0. 'loss+' (sample.json): n = (1·3, 2·4), ĝ_1 = (1, 0),
    ĝ_2 = (0, ½). The pair line search (lines 28-29): γ = (v22 − v12)/(v11 + v22 − 2 v12) = ¼ / (1 + ¼) = 0.2 on
    ĝ_1, so w = (0.2, 0.8), applied to the raw losses (train_multi_task.py lines 172-183): shared grad
    0.2 (3, 0) + 0.8 (0, 4) = (0.6, 3.2), head k gets w_k (k+1)·1."""
    theta, phis, losses = linear_problem([(3.0, 0.0), (0.0, 4.0)])
    method = MGDA(2)
    assert method.normalization == "loss+" and method.solver == "official"  # the official configuration
    info = method.backward(losses(), [theta], phis)
    # exact but for γ = 0.25 / 1.25 = fl(0.2) (½ ulp) and ≤ 2 more roundings of each product and sum: 4 eps relative
    hand = dict(rtol=4 * EPS64, atol=0)
    torch.testing.assert_close(info["weights"], torch.tensor([0.2, 0.8], dtype=torch.float64), **hand)
    torch.testing.assert_close(theta.grad, torch.tensor([0.6, 3.2], dtype=torch.float64), **hand)
    torch.testing.assert_close(phis[0].grad, torch.tensor([0.2, 0.2], dtype=torch.float64), **hand)
    torch.testing.assert_close(phis[1].grad, torch.tensor([1.6, 1.6], dtype=torch.float64), **hand)


def test_two_tasks_one_dominating_gets_0999_not_1():
    """'none': g_1 = (1, 0), g_2 = (2, 1): g_1ᵀg_2 = 2 ≥ ‖g_1‖² = 1, so the official pair search returns γ = 0.999
    (line 19), not 1."""
    theta, phis, losses = linear_problem([(1.0, 0.0), (2.0, 1.0)])
    info = MGDA(2, normalization="none").backward(losses(), [theta], phis)
    # 1 − 0.999 is exact (Sterbenz) but carries the literal 0.999's representation error, ≤ ulp(1)/4, into 0.001
    torch.testing.assert_close(info["weights"], torch.tensor([0.999, 0.001], dtype=torch.float64), rtol=0, atol=EPS64)
    # that, and one rounding of each sum of O(1) terms (ours and the literal 0.999 + 0.002): ≤ 2 eps absolute
    torch.testing.assert_close(theta.grad, torch.tensor([0.999 + 0.002, 0.001], dtype=torch.float64), rtol=0,
                               atol=2 * EPS64)
    info = MGDA(2, normalization="none", solver="exact").backward(losses(), [theta], phis)
    # exact: the first vertex already meets the stopping rule (gap 0), returned as w / w.sum() = 1 / 1
    torch.testing.assert_close(info["weights"], torch.tensor([1.0, 0.0], dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("normalization", ["loss+", "l2", "loss", "none"])
def test_three_tasks_match_the_official_transcription(normalization):
    """One step on K = 3: w = the transcribed solver on the gradients divided by ``gradient_normalizers`` (lines
    183-199), and .grad = Σ w_k ∇L_k (raw). Same operations in another order (the Gram matrix by torch against
    NumPy's): rounding carried through the solver's iterations (measured ≤ 5e-16 here; ≤ 5.5e-12 on the random Gram
    matrices below), 1e-12. (No step of these solves is within rounding of the 1e-5 stopping rule.)"""
    rows = [(1.0, -2.0, 0.5), (0.3, 1.0, 2.0), (-1.5, 0.2, 1.0)]
    theta, phis, losses = linear_problem(rows)
    values = losses().detach().numpy()
    g = np.array(rows)
    n = {"loss+": values * np.linalg.norm(g, axis=1), "l2": np.linalg.norm(g, axis=1), "loss": values,
         "none": np.ones(3)}[normalization]
    normalised = g / n[:, None]
    expected = ref_solver(normalised @ normalised.T)
    info = MGDA(3, normalization=normalization).backward(losses(), [theta], phis)
    np.testing.assert_allclose(info["weights"].numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(theta.grad.numpy(), expected @ g, rtol=0, atol=1e-12)
    for k, phi in enumerate(phis):
        np.testing.assert_allclose(phi.grad.numpy(), expected[k] * (k + 1) * np.ones(2), rtol=0, atol=1e-12)


# -- the solvers -------------------------------------------------------------------------------------------------

def test_official_solver_equals_the_transcription():
    """On random Gram matrices (K = 3..6): the same algorithm, float rounding (w @ M @ w against the transcription's
    double sums) carried over up to 276 iterations: measured ≤ 5.5e-12, 1e-9. Valid while no step lies within
    rounding of the 1e-5 stopping rule (a changed iteration count would move w by up to 1e-5): the closest step here
    is 1.3e-3 relative from it, ~1e4 times the rounding."""
    for gram in random_grams(40):
        np.testing.assert_allclose(official_min_norm(gram), ref_solver(gram), rtol=0, atol=1e-9)


@pytest.mark.parametrize("solver", [official_min_norm, exact_min_norm])
def test_weights_are_on_the_simplex(solver):
    """Non-negative (exact: a projection's max(·, 0), convex combinations, w / Σw) and summing to 1 up to rounding:
    ``exact`` divides by the sum (≤ K eps); ``official``'s convex combination c·w + (1 − c)·p contracts the sum's
    error (c ≤ 0.999) while each iteration adds ≤ 2K eps: measured ≤ 4.4e-16, 1e-12."""
    for gram in random_grams(40, seed=1):
        w = solver(gram)
        assert (w >= 0).all()
        assert abs(w.sum() - 1) < 1e-12


def test_exact_solver_is_the_minimum_norm_point():
    """``exact``'s stopping rule (‖x‖² − min_j p_jᵀx ≤ 1e-12 on M / max|M_ij|) is half the Frank-Wolfe gap, so
    wᵀMw ≤ min + 2e-12·max|M_ij|; CVXPY's optimum is within ``CVXPY_GAP`` of the minimum: 6e-12 in all, 1e-11
    (measured: ours at most 1.5e-17·max|M_ij| above CVXPY's). The minimiser is unique where M is positive definite
    (K ≤ P here): strong convexity, f(w) − f(w*) ≥ ½ λ_min ‖w − w*‖², puts each within √(2·gap / λ_min) of it
    (measured ≤ 3.5e-11 apart, against bounds of 9e-6 to 2e-2)."""
    for gram in random_grams(40, seed=2):
        w = exact_min_norm(gram)
        reference, value = cvxpy_min_norm(gram)
        scale = np.abs(gram).max()
        assert w @ gram @ w <= value + 1e-11 * scale
        smallest = np.linalg.eigvalsh(gram).min()
        if smallest > 1e-6 * scale:
            distance = np.sqrt(2 * EXACT_GAP * scale / smallest) + np.sqrt(2 * CVXPY_GAP * scale / smallest)
            np.testing.assert_allclose(w, reference, rtol=0, atol=distance)


def test_official_solver_interior_minimum_within_its_stopping_rule():
    """With an interior minimiser w*, each step of exact line search along the projected gradient has length
    ≥ ‖w − w*‖₂ / κ (κ: condition number of M on the simplex's plane), so the official rule (a step < 1e-5 in L1,
    min_norm_solvers.py line 135) gives ‖w − w*‖₂ ≤ κ·1e-5. Here κ ≈ 540: 1,499 iterations, 0.0014 from w* =
    (¼, ½, ¼) (by hand: M w* = ½·1 with w* > 0, the interior minimum's condition). LibMTL's cap of 250 iterations
    (MGDA.py line 107) stops it 0.16 away."""
    g = np.array([[1.0, -2.0, -2.0], [0.0, -1.0, -1.0], [-3.0, 4.0, 2.0]])
    gram = g @ g.T
    minimiser = np.array([0.25, 0.5, 0.25])
    np.testing.assert_array_equal(gram @ minimiser, np.full(3, 0.5))  # exact: small dyadic numbers
    plane = np.linalg.qr(np.column_stack([np.ones(3), np.eye(3)[:, :2]]))[0][:, 1:]
    eigenvalues = np.linalg.eigvalsh(plane.T @ gram @ plane)
    kappa = eigenvalues[-1] / eigenvalues[0]
    # CVXPY agrees: within √(2·gap / λ_min) on the simplex's plane (strong convexity), ≈ 6e-5 here (measured 8e-11)
    reference, _ = cvxpy_min_norm(gram)
    scale = np.abs(gram).max()
    np.testing.assert_allclose(reference, minimiser, rtol=0, atol=np.sqrt(2 * CVXPY_GAP * scale / eigenvalues[0]))
    w = official_min_norm(gram)
    assert np.linalg.norm(w - minimiser) <= kappa * 1e-5
    assert np.linalg.norm(official_min_norm(gram, max_iter=250) - minimiser) > 0.1


def test_official_solver_stops_early_at_a_face():
    """The known limitation of the official solver (also in LibMTL's and Nash-MTL's copies): its step only reaches
    the nearest face farther than 1e-7 (``_next_point``), so with a weight ~1e-6 the step falls below the 1e-5 rule
    and it stops far from w* (here after two iterations, ‖Σ w_k g_k‖² = 0.298 against the minimum 1/66, with w*
    interior). The transcription does the same; ``solver="exact"`` finds w* = (8, 25, 16, 17)/66."""
    g = np.array([[4.0, -3.0, -2.0, -1.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    gram = g @ g.T
    w = official_min_norm(gram)
    # three iterations whose decisions are far from their thresholds (faces at ≥ 2.9e-6 ≫ 1e-7, the last step
    # 4.9e-6 against 1e-5): rounding only, ~10 eps on entries ≤ 30; 1e-13
    np.testing.assert_allclose(w, ref_solver(gram), rtol=0, atol=1e-13)
    assert w @ gram @ w > 0.29 and w[2] < 1e-5
    exact = exact_min_norm(gram)
    # w* is the solution of its support's KKT system (condition number 160): 160·eps·|w| ≈ 4e-14, 1e-13
    np.testing.assert_allclose(exact, np.array([8, 25, 16, 17]) / 66, rtol=0, atol=1e-13)
    # wᵀMw = 1/66 from entries up to 30: cancellation max|M_ij|·‖w‖₁² / (1/66) ≈ 2e3 times a few eps; 1e-12
    np.testing.assert_allclose(exact @ gram @ exact, 1 / 66, rtol=1e-12)


# -- edges ---------------------------------------------------------------------------------------------------------

def test_zero_gradient_and_parallel_gradients_stay_finite():
    """A task with a zero gradient (normaliser 0 under 'loss+': its gradient kept as it is) is the minimum-norm
    point: the shared update is ~0, nothing is NaN."""
    shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = torch.stack([shared.sum() * 0.0 + 1.0, (shared ** 2).sum(), (shared ** 2).sum()])
    for solver in ("official", "exact"):
        shared.grad = None
        info = MGDA(3, solver=solver).backward(losses, [shared])
        assert torch.isfinite(info["weights"]).all() and torch.isfinite(shared.grad).all()
        assert info["weights"][0] > 0.99


def test_representation_mode_is_mgda_ub():
    """``gradient_space="representation"`` (MGDA-UB, train_multi_task.py lines 113-141): w from the gradients with
    respect to z, then Σ w_k ∇L_k through the encoder; with z = θ itself both are the same."""
    rows = [(1.0, -2.0, 0.5), (0.3, 1.0, 2.0), (-1.5, 0.2, 1.0)]
    theta, phis, losses = linear_problem(rows)
    expected = MGDA(3).backward(losses(), [theta], phis)["weights"]
    expected_grad = theta.grad.clone()
    theta.grad = None
    z = theta * 1.0
    rep_losses = torch.stack([torch.tensor(r, dtype=torch.float64) @ z + 0.5 * (k + 1) * (phis[k] ** 2).sum()
                              for k, r in enumerate(rows)])
    info = MGDA(3, gradient_space="representation").backward(rep_losses, [theta], phis, representation=z)
    # exact: z = θ·1.0 gives bitwise the same rows, the same solve, and z's gradient passes to θ times 1.0
    torch.testing.assert_close(info["weights"], expected, rtol=0, atol=0)
    torch.testing.assert_close(theta.grad, expected_grad, rtol=0, atol=0)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="normalization"):
        MGDA(3, normalization="norm")  # Nash-MTL's name for 'l2'
    with pytest.raises(ValueError, match="solver"):
        MGDA(3, solver="cvxpy")
    with pytest.raises(ValueError, match="max_iter"):
        MGDA(3, max_iter=-1)
    assert MGDA.in_paper is False and MGDA.uses_main_task is False and MGDA.label == "MGDA"
