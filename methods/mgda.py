"""MGDA (Sener & Koltun; "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, Sec. 3, Alg. 2).

The update is Σ_k w_k ∇L_k with w the minimum-norm point of the convex hull of the (normalised) per-task gradients,

    w = argmin_{w ∈ Δ} ‖Σ_k w_k ĝ_k‖²,      ĝ_k = g_k / n_k,                                           (1)

applied to the raw losses: the shared parameters *and* the heads get Σ_k w_k ∇L_k. This is the official code
(isl-org/MultiObjectiveOptimization ``multi_task/train_multi_task.py``): per-task gradients (lines 110-155),
normalised only to solve (1) (lines 157-161, "optional and not included in the paper"), the solver (line 164),
then one backward of Σ_k w_k L_k (lines 172-183: ``loss = loss + scale[t]*loss_t``). w sums to 1 (Nash-MTL's copy,
AvivNavon/nash-mtl ``methods/weight_methods.py`` line 396, multiplies it by K; LibMTL's applies w to the
*normalised* shared gradients and leaves the heads unweighted, ``LibMTL/weighting/MGDA.py`` lines 130-135).

**Normalisation** n_k (``gradient_normalizers``, ``multi_task/min_norm_solvers.py`` lines 183-199): "l2" ‖g_k‖,
"loss" L_k, "loss+" L_k ‖g_k‖, "none" 1. Default "loss+": the official repository's only configuration
(``sample.json``, ``"normalization_type": "loss+"``). LibMTL (``LibMTL/config.py`` line 39, ``--mgda_gn``) and
Nash-MTL (``weight_methods.py`` line 328) default to "none". L_k are the loss values ``backward`` checks (averaged
over ranks under torch.distributed). A normaliser of 0 (a zero gradient, or a zero loss under "loss"/"loss+"; the
official code would divide by zero) leaves that task's gradient as it is.

**Solver** (``solver``). "official" (default): ``MinNormSolver.find_min_norm_element`` (``min_norm_solvers.py``
lines 92-137), transcribed on the Gram matrix in float64 (the official code sums float32 products): the best pair
in closed form (``_min_norm_2d``, lines 32-58, through the pair line search ``_min_norm_element_from2``, lines
9-30, which returns 0.999 / 0.001, never 1 / 0, when one end is optimal): the answer for K = 2. For K ≥ 3, steps
along the projected negative gradient as far as the nearest face of the simplex (``_next_point``, lines 76-90,
ignoring faces nearer than 1e-7, then ``_projection2simplex``, lines 60-74), the pair line search between the
iterate and that point, until an iteration changes w by less than ``STOP_CRIT`` = 1e-5 in L1 (line 135); the
iterate before that change is returned. Its loop never increments ``iter_count`` (lines 112-137), so
``MAX_ITER`` = 250 (line 6) never ends it, nor in Nash-MTL's copy (``methods/min_norm_solvers.py``): ``max_iter``
= 0 (default) keeps that; LibMTL stops after 250 (``LibMTL/weighting/MGDA.py`` line 107), ``max_iter=250``. On
random 3- to 10-task problems 9 % of the solves needed more than 250 iterations and the slowest 34,000; with the
cap, an ill-conditioned 3-task problem ends 0.16 (L2) from the minimiser instead of 0.0014. Its pair search starts
from ``dmin = 1e8`` (line 38) and fails when every pair's squared norm exceeds 1e8; we start from infinity.

How close it gets: where the minimiser w* of (1) is interior, a step of exact line search along the projected
gradient is at least ‖w − w*‖₂ / κ (κ: the condition number of M on the simplex's plane), so the stopping rule
gives ‖w − w*‖₂ ≤ κ · 1e-5. Where the iterate reaches a face, the step to the nearest face can shrink below the
rule while w is far from w*: on the 4-task case of ``tests/test_method_mgda.py`` it stops after two iterations
with ‖Σ w_k g_k‖² = 0.298 against the minimum 1/66 ≈ 0.015 (w* interior). LibMTL's and Nash-MTL's solvers are the
same algorithm. "exact": the minimiser of (1) itself, by Wolfe's minimum-norm-point algorithm on the normalised
Gram matrix (to within 2e-12 · max |M_ij| of the minimum), in no peer's code.

**Gradient space.** The paper's MGDA-UB takes the gradients with respect to the shared representation z
(``train_multi_task.py`` lines 113-141, ``use_approximation``, ``true`` in ``sample.json``); the gradients of the
shared parameters are its exact MGDA (lines 142-155; LibMTL's and Nash-MTL's default). Our default is
``gradient_space="parameters"`` (label "MGDA"), where every benchmark can run it; ``gradient_space=
"representation"`` (the trainers' ``--representation``) is MGDA-UB, which needs every loss computed from one
shared representation (not the ARML CIFAR-10 pipeline, nor Multi-MNIST with the rotation task: the trainers refuse
``--representation`` there).

``info["weights"]`` is w (on the simplex), the multiplier of each raw ∇L_k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import GradientMethod, ReadsLossValues, gradient_space_setting
from .gradients import TaskGradients
from .settings import setting

OFFICIAL = "isl-org/MultiObjectiveOptimization multi_task/min_norm_solvers.py"
NORMALIZATIONS = ("loss+", "l2", "loss", "none")
SOLVERS = ("official", "exact")
STOP_CRIT = 1e-5  # min_norm_solvers.py line 7: stop when an iteration moves w by less than this in L1


@dataclass(frozen=True)
class MGDASettings:
    """MGDA's hyperparameters; defaults: the official code (isl-org/MultiObjectiveOptimization)."""

    normalization: str = setting("loss+", "per-task gradient normaliser for the min-norm problem: 'loss+' L_k‖g_k‖, "
                                 "'l2' ‖g_k‖, 'loss' L_k, 'none'",
                                 "isl-org/MultiObjectiveOptimization sample.json (normalization_type), "
                                 "min_norm_solvers.py gradient_normalizers", choices=NORMALIZATIONS)
    solver: str = setting("official", "'official': the official Frank-Wolfe-style solver and its 1e-5 stopping "
                          "rule; 'exact': the exact minimum-norm point (ours)",
                          OFFICIAL + " find_min_norm_element", choices=SOLVERS)
    max_iter: int = setting(0, "iteration cap of the official solver (0: none, as the official loop, which never "
                            "counts; 250: LibMTL's)", OFFICIAL + " lines 6, 112-137; LibMTL/weighting/MGDA.py line 107",
                            allow_zero=True)
    gradient_space: str = gradient_space_setting(
        "isl-org/MultiObjectiveOptimization train_multi_task.py (lines 142-155: MGDA on the shared parameters; "
        "representation: MGDA-UB, lines 113-141)")


# -- the official solver, on the Gram matrix ------------------------------------------------------------------------

def _pair_line_search(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
    """argmin_γ ‖γ x_1 + (1 − γ) x_2‖² from the three products, and its value (``_min_norm_element_from2``)."""
    if v1v2 >= v1v1:
        return 0.999, v1v1
    if v1v2 >= v2v2:
        return 0.001, v2v2
    gamma = -(v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2)
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def _project_to_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (``_projection2simplex``, sort-based)."""
    m = len(y)
    ordered = np.sort(y)[::-1]
    shift = (y.sum() - 1.0) / m
    running = 0.0
    for i in range(m - 1):
        running += ordered[i]
        candidate = (running - 1.0) / (i + 1.0)
        if candidate > ordered[i + 1]:
            shift = candidate
            break
    return np.maximum(y - shift, 0.0)


def _next_point(current: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """A projected step along ``direction`` (centred), to the nearest face farther than 1e-7 (``_next_point``)."""
    centred = direction - direction.sum() / len(current)
    to_zero = -current[centred < 0] / centred[centred < 0]
    to_one = (1.0 - current[centred > 0]) / centred[centred > 0]
    step = 1.0
    if (to_zero > 1e-7).any():
        step = float(np.min(to_zero[to_zero > 1e-7]))
    if (to_one > 1e-7).any():
        step = min(step, float(np.min(to_one[to_one > 1e-7])))
    return _project_to_simplex(centred * step + current)


def official_min_norm(gram: np.ndarray, max_iter: int = 0) -> np.ndarray:
    """``MinNormSolver.find_min_norm_element`` on the Gram matrix (float64); ``max_iter`` > 0 caps its iterations."""
    n = gram.shape[0]
    if n == 1:
        return np.ones(1)
    best, pair, gamma = np.inf, (0, 1), 0.5
    for i in range(n):
        for j in range(i + 1, n):
            c, d = _pair_line_search(gram[i, i], gram[i, j], gram[j, j])
            if d < best:  # strictly smaller: the first pair wins ties, as in the official loop
                best, pair, gamma = d, (i, j), c
    w = np.zeros(n)
    w[pair[0]], w[pair[1]] = gamma, 1.0 - gamma
    if n < 3:
        return w
    iteration = 0
    while max_iter <= 0 or iteration < max_iter:
        iteration += 1
        candidate = _next_point(w, -gram @ w)
        c, _ = _pair_line_search(w @ gram @ w, w @ gram @ candidate, candidate @ gram @ candidate)
        updated = c * w + (1 - c) * candidate
        if np.abs(updated - w).sum() < STOP_CRIT:
            return w
        w = updated
    return w


# -- the exact minimum-norm point -----------------------------------------------------------------------------------

def exact_min_norm(gram: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """argmin_{w ∈ Δ} wᵀMw by Wolfe's minimum-norm-point algorithm (Wolfe 1976) on the Gram matrix, scaled to
    max |M_ij| = 1: add the vertex p_j with the least p_jᵀx, move to the affine minimiser of the support (dropping
    the vertices that reach weight 0 on the way), until ‖x‖² − min_j p_jᵀx ≤ ``tol``. That is half the Frank-Wolfe
    gap, so wᵀMw is within 2·``tol``·max |M_ij| of the minimum."""
    k = gram.shape[0]
    scale = float(np.abs(gram).max())
    if k == 1 or scale == 0.0:
        return np.full(k, 1.0 / k)
    m = 0.5 * (gram + gram.T) / scale
    support = [int(np.argmin(np.diag(m)))]
    w = np.ones(1)
    for _ in range(100 * k):
        products = m[:, support] @ w  # p_jᵀx for every vertex j
        j = int(np.argmin(products))
        if float(w @ products[support]) - products[j] <= tol or j in support:
            break
        support.append(j)
        w = np.append(w, 0.0)
        while True:  # the affine minimiser of the support: M_SS v + μ1 = 0, 1ᵀv = 1
            s = len(support)
            kkt = np.ones((s + 1, s + 1))
            kkt[:s, :s] = m[np.ix_(support, support)]
            kkt[s, s] = 0.0
            rhs = np.zeros(s + 1)
            rhs[s] = 1.0
            v = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:s]
            if (v > 0).all():
                w = v
                break
            falling = np.flatnonzero(v < w)  # nonempty: some v_i ≤ 0 < w_i
            ratios = w[falling] / (w[falling] - v[falling])
            first = falling[int(np.argmin(ratios))]
            w = w + float(ratios.min()) * (v - w)
            w[first] = 0.0
            keep = w > 0
            support = [p for p, kept in zip(support, keep) if kept]
            w = w[keep]
    weights = np.zeros(k)
    weights[support] = w / w.sum()
    return weights


# -- the method -------------------------------------------------------------------------------------------------------

def normalised_gram(gram: torch.Tensor, losses: torch.Tensor, normalization: str) -> torch.Tensor:
    """D⁻¹ M D⁻¹ with D = diag(n_k) of ``gradient_normalizers`` (a normaliser of 0 is taken as 1), float64."""
    gram = gram.double()
    norms = gram.diagonal().clamp(min=0).sqrt()
    losses = losses.detach().to(gram.device, torch.float64)
    if normalization == "l2":
        normaliser = norms
    elif normalization == "loss":
        normaliser = losses
    elif normalization == "loss+":
        normaliser = losses * norms
    else:
        normaliser = torch.ones_like(norms)
    normaliser = torch.where(normaliser != 0, normaliser, torch.ones_like(normaliser))
    return gram / normaliser[:, None] / normaliser[None, :]


class MGDA(ReadsLossValues, GradientMethod):
    """The minimum-norm point of the convex hull of the (normalised) task gradients (MGDA; MGDA-UB in
    ``gradient_space="representation"``)."""

    Settings = MGDASettings
    label = "MGDA"
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task
    in_paper = False

    def __init__(self, n_tasks: int, main_task: int = 0, device=None,
                 normalization: str = MGDASettings.normalization, solver: str = MGDASettings.solver,
                 max_iter: int = MGDASettings.max_iter,
                 gradient_space: str = MGDASettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"MGDA normalization must be one of {NORMALIZATIONS} (--mgda-normalization), "
                             f"got {normalization!r}")
        if solver not in SOLVERS:
            raise ValueError(f"MGDA solver must be one of {SOLVERS} (--mgda-solver), got {solver!r}")
        if int(max_iter) != max_iter or max_iter < 0:
            raise ValueError(f"MGDA max_iter must be an integer ≥ 0 (0: no cap; --mgda-max-iter), got {max_iter!r}")
        self.normalization = normalization
        self.solver = solver
        self.max_iter = int(max_iter)

    gram_based = True  # weights_from_gram (with loss_values under the "loss" / "loss+" normalisers)

    @property
    def needs_loss_values(self) -> bool:
        return self.normalization in ("loss", "loss+")

    # the normalisers read the step's loss values (ReadsLossValues: a micro-batch's under accumulate, their sum in
    # backward_accumulated)

    def solve(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """w on the simplex for the raw Gram matrix and the loss values (float64)."""
        matrix = normalised_gram(gram, losses, self.normalization).cpu().numpy()
        w = official_min_norm(matrix, self.max_iter) if self.solver == "official" else exact_min_norm(matrix)
        return torch.as_tensor(w, dtype=torch.float64, device=gram.device)

    def combine(self, grads: TaskGradients):
        values = self._values if self._values is not None else torch.ones(self.n_tasks)
        weights = self.solve(grads.gram(), values)
        self._values = None
        return weights, weights, {}
