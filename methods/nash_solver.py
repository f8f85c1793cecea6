"""The asymmetric Nash bargaining solution: α > 0 with α_k (M α)_k = p_k for every task k.

AuxiNash (Shamsian et al., ICML 2023, Eq. 3 and Prop. 3.1) and Nash-MTL (Navon et al., ICML 2022, p = 1)
both choose the update Δθ = Σ_k α_k g_k where, with M = G Gᵀ the RAW Gram matrix of the per-task
gradients, α solves

    α_k (M α)_k = p_k,    k = 1..K,                                             (1)

the stationarity condition of the strictly convex f(α) = ½ αᵀMα − Σ_k p_k log α_k on α > 0.

Scale. The official code divides GᵀG by its Frobenius norm ``nf`` to condition its CVXPY program, but ``nf``
re-enters inside its log constraint, so the α it returns solves (1) on the raw M. We solve (1) on
M / ‖M‖_F (well conditioned: entries O(1)) and rescale α by 1 / √‖M‖_F, which is exact. Consequences:
M → cM gives α → α/√c, and ‖Σ α_k g_k‖² = αᵀMα = Σ p_k (= K for p summing to K) before any clipping.

Singular M. (1) has a solution whenever every task's gradient has a positive component along the
bargaining direction; it has none when a gradient is zero or two gradients are exactly opposite. We solve
(1) for M + δ‖M‖_F I with δ = ``ridge`` (1e-8 by default): the solution then always exists, is unique,
finite and positive, and differs from the exact one by O(δ) where the exact one exists. A zero gradient
gets a large weight on a zero vector (no effect on the update); two opposite gradients get equal weights
whose contributions cancel. M = 0 (every gradient zero) gives α = √p (any α gives a zero update).
A non-finite M (a NaN or infinite loss) raises ``FloatingPointError``.

Algorithm: damped Newton on f with a fraction-to-the-boundary rule and Armijo backtracking, warm-started
from the previous α, to a relative residual ‖α ⊙ Mα − p‖ / ‖p‖ ≤ ``tol`` (1e-8 by default): a few K × K
solves, microseconds for K ≤ 10.

Derivative. By the implicit function theorem on (1), dα/dp = (M + diag(p/α²))⁻¹ diag(1/α);
``nash_alpha`` is the differentiable (autograd) version of ``solve_nash``.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

DEFAULT_RIDGE = 1e-8
DEFAULT_TOL = 1e-8


def relative_residual(gram: np.ndarray, p: np.ndarray, alpha: np.ndarray) -> float:
    """‖α ⊙ Mα − p‖ / ‖p‖: how far α is from solving (1)."""
    difference = alpha * (gram @ alpha) - p
    return float(np.sqrt(difference @ difference / (p @ p)))


def _newton(gram: np.ndarray, p: np.ndarray, alpha: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Minimise ½αᵀMα − Σ p log α from ``alpha`` (> 0) by damped Newton; M is assumed positive definite."""
    def objective(a: np.ndarray) -> float:
        return 0.5 * a @ gram @ a - p @ np.log(a)

    value = objective(alpha)
    for _ in range(max_iter):
        m_alpha = gram @ alpha
        difference = alpha * m_alpha - p
        if difference @ difference <= tol**2 * (p @ p):
            break
        gradient = m_alpha - p / alpha
        hessian = gram + np.diag(p / alpha**2)
        try:
            step = -np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:  # only on the un-regularised polish of a singular M
            break
        shrinking = step < 0
        t = min(1.0, 0.99 * float(np.min(-alpha[shrinking] / step[shrinking]))) if shrinking.any() else 1.0
        slope = gradient @ step
        while True:
            candidate = alpha + t * step
            candidate_value = objective(candidate)
            if candidate_value <= value + 1e-4 * t * slope or t < 1e-12:
                break
            t *= 0.5
        if t < 1e-12:  # no further decrease is representable: α is optimal to machine precision
            break
        alpha, value = candidate, candidate_value
    return alpha


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def solve_nash(
    gram: np.ndarray | torch.Tensor,
    p: Optional[np.ndarray | torch.Tensor] = None,
    alpha0: Optional[np.ndarray | torch.Tensor] = None,
    tol: float = DEFAULT_TOL,
    ridge: float = DEFAULT_RIDGE,
    max_iter: int = 100,
) -> np.ndarray:
    """Solve α_k (M α)_k = p_k for α > 0 (float64 numpy; see the module docstring).

    ``gram``: the raw K × K Gram matrix M = G Gᵀ. ``p``: bargaining powers (> 0; default ones = Nash-MTL).
    ``alpha0``: a warm start in the raw scale (e.g. the previous step's α); ignored unless finite and > 0.
    """
    gram = _as_float64(gram)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square K x K matrix, got shape {gram.shape}")
    k = gram.shape[0]
    p = np.ones(k) if p is None else _as_float64(p)
    if p.shape != (k,) or not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(f"p must hold {k} finite positive bargaining powers, got {p}")
    if not np.all(np.isfinite(gram)):
        raise FloatingPointError("the Gram matrix of the task gradients is not finite (a task loss or gradient "
                                 "is NaN or infinite); check the losses and the learning rate")
    gram = 0.5 * (gram + gram.T)
    scale = float(np.linalg.norm(gram))
    if scale == 0.0:
        return np.sqrt(p)
    normalised = gram / scale
    if alpha0 is not None:
        start = _as_float64(alpha0) * np.sqrt(scale)
    if alpha0 is None or start.shape != (k,) or not np.all(np.isfinite(start)) or np.any(start <= 0):
        # the exact solution when M is diagonal: a good start for the well-conditioned normalised problem
        start = np.sqrt(p / (np.diag(normalised) + ridge))
    alpha = _newton(normalised, p, start, tol, max_iter=30)
    if relative_residual(normalised, p, alpha) > tol:  # (near) singular: solve the ridge problem, then polish
        regularised = _newton(normalised + ridge * np.eye(k), p, start, tol, max_iter)
        polished = _newton(normalised, p, regularised, tol, max_iter=20)
        converged = relative_residual(normalised, p, polished) <= max(tol, 1e-10)  # (1) is solvable
        alpha = polished if converged else regularised
    return alpha / np.sqrt(scale)


def nash_alpha_derivative(gram: np.ndarray, p: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """dα/dp = (M + diag(p/α²))⁻¹ diag(1/α), the implicit-function-theorem derivative of (1) on the raw M."""
    return np.linalg.solve(gram + np.diag(p / alpha**2), np.diag(1.0 / alpha))


class _NashAlpha(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gram: torch.Tensor, p: torch.Tensor, alpha0: Optional[torch.Tensor], tol: float,
                ridge: float) -> torch.Tensor:
        alpha = torch.as_tensor(solve_nash(gram, p, alpha0, tol=tol, ridge=ridge), dtype=p.dtype, device=p.device)
        ctx.save_for_backward(gram, p, alpha)
        return alpha

    @staticmethod
    def backward(ctx, grad_alpha: torch.Tensor):
        gram, p, alpha = ctx.saved_tensors
        hessian = gram.to(p.dtype) + torch.diag(p / alpha**2)
        u = torch.linalg.solve(hessian, grad_alpha)  # the Hessian is symmetric
        grad_p = u / alpha
        # dF = dM α  ⇒  dα = −H⁻¹ dM α; the solve reads only the symmetric part of M
        outer = torch.outer(u, alpha)
        grad_gram = (-0.5 * (outer + outer.T)).to(gram.dtype)
        return grad_gram, grad_p, None, None, None


def nash_alpha(gram: torch.Tensor, p: torch.Tensor, alpha0: Optional[torch.Tensor] = None,
               tol: float = DEFAULT_TOL, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """Differentiable α(M, p): ``solve_nash`` forward, implicit-function-theorem gradients backward."""
    return _NashAlpha.apply(gram, p, alpha0, tol, ridge)


class CvxpyNashSolver:
    """Reference: the sequential convex procedure of Nash-MTL as the official AuxiNash code formulates it.

    The program is built once for K tasks and bargaining powers p (as the official code does) and re-solved
    with new parameters. Each iteration minimises Σ_i (Ĝα)_i + φ'(α_t)ᵀ(α − α_t) / nf subject to
    −log(α_i · nf) − log((Ĝα)_i) + log p_i ≤ 0, where Ĝ = M / nf, nf = ‖M‖_F and φ is the linearised
    concave part; it stops after ``n_iter`` iterations or when ‖Ĝα − 1/α‖ < 1e-3 or α stops moving (the
    official stopping rules). Needs ``cvxpy``; used in tests and benchmarks and by ``solver="cvxpy"``.
    """

    def __init__(self, n_tasks: int, p: Optional[np.ndarray] = None, n_iter: int = 20,
                 solver: Optional[str] = None) -> None:
        import cvxpy as cp

        self.n_iter, self.solver = n_iter, solver
        k = n_tasks
        self.p = np.ones(k) if p is None else np.asarray(p, dtype=np.float64)
        self.alpha = cp.Variable(k, nonneg=True)
        self.previous = cp.Parameter(k, value=np.ones(k))
        self.gram = cp.Parameter((k, k), value=np.eye(k))
        self.nf = cp.Parameter(1, value=np.ones(1))
        g_alpha = self.gram @ self.alpha
        phi_grad = 1 / self.previous + (1 / (self.gram @ self.previous)) @ self.gram
        objective = cp.Minimize(cp.sum(g_alpha) + phi_grad @ (self.alpha - self.previous) / self.nf)
        constraints = [-cp.log(self.alpha[i] * self.nf) - cp.log(g_alpha[i]) + np.log(self.p[i]) <= 0
                       for i in range(k)]
        self.problem = cp.Problem(objective, constraints)

    def solve(self, gram: np.ndarray, alpha0: Optional[np.ndarray] = None) -> np.ndarray:
        gram = np.asarray(gram, dtype=np.float64)
        nf = float(np.linalg.norm(gram))
        g_hat = gram / nf
        self.gram.value, self.nf.value = g_hat, np.array([nf])
        alpha_t = np.ones(len(self.p)) if alpha0 is None else np.asarray(alpha0, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            for _ in range(self.n_iter):
                alpha_t = np.clip(alpha_t, 1e-10, None)
                self.previous.value = alpha_t
                self.alpha.value = alpha_t
                self.problem.solve(solver=self.solver, warm_start=True)
                if self.alpha.value is None:
                    break
                new_alpha = self.alpha.value
                done = (np.linalg.norm(g_hat @ new_alpha - 1 / (new_alpha + 1e-10)) < 1e-3
                        or np.linalg.norm(new_alpha - alpha_t) < 1e-6)
                alpha_t = new_alpha
                if done:
                    break
        return alpha_t


def solve_nash_cvxpy(gram: np.ndarray, p: Optional[np.ndarray] = None, alpha0: Optional[np.ndarray] = None,
                     n_iter: int = 20, solver: Optional[str] = None) -> np.ndarray:
    """One solve with a freshly built ``CvxpyNashSolver``."""
    gram = np.asarray(gram, dtype=np.float64)
    return CvxpyNashSolver(gram.shape[0], p, n_iter, solver).solve(gram, alpha0)
