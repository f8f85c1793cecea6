"""GradVac: Gradient Vaccine (Wang, Tsvetkov, Firat, Cao; "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021).

For every task i and, in a random order, every other task j, with φ_ij the cosine between the (already vaccinated)
g_i and the original g_j, and φ̂_ij an exponential moving average of φ_ij that serves as its target:

    if φ_ij < φ̂_ij:  g_i ← g_i + g_j · ‖g_i‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²))
    φ̂_ij ← (1 − β) φ̂_ij + β φ_ij
    update = Σ_i g_i (the vaccinated gradients)

The authors released no code; issue 32 names LibMTL's implementation (median-research-group/LibMTL
``LibMTL/weighting/GradVac.py``, "implemented by us", lines 12-13), which we follow:

- φ_ij = g_iᵀg_j / (‖g_i‖ ‖g_j‖ + 1e-8) with the vaccinated g_i and the original g_j (``GradVac.py`` line 68); the
  vaccine's coefficient has + 1e-8 in its denominator too (line 70); it is applied only when φ_ij < φ̂_ij (line 69);
  φ̂_ij is updated on every pair, after the vaccine, from the φ_ij computed before it (line 73);
- β = ``beta`` = 0.5: φ̂ ← (1 − β) φ̂ + β φ (``GradVac.py`` line 73; ``GradVac_beta`` default, ``LibMTL/config.py``
  line 42); φ̂ starts at 0 for every pair and group (``GradVac.py`` line 42);
- the order over j is a fresh random permutation of the other tasks for every i on every step (``GradVac.py`` lines
  59-62, Python's ``random.shuffle``); ours draws it from a ``torch.Generator`` seeded with the run's ``--seed``
  (``seed``) and saved with the state, so ``--resume`` replays it;
- granularity (``group``; LibMTL's ``GradVac_group_type``, ``config.py`` lines 43-44, ``GradVac.py`` lines 29-41):
  ``"model"`` (type 0, the default): one φ̂ per pair over the whole shared gradient; ``"tensor"`` (type 2,
  "all_matrix"): the vaccine and φ̂ separately on the slice of every shared parameter tensor (``grad_index``, one
  entry per tensor of the shared parameters, ``abstract_weighting.py`` lines 17-24). LibMTL's type 1
  ("all_layer": one slice per leaf module of the encoder, lines 32-36) needs the module structure, which the
  method API (a list of parameters) does not carry: not offered (a layer of one tensor, or a weight and bias
  listed together, is what "tensor" gives for the weight and bias separately);
- task-specific heads are trained by their own losses, weight 1 (``_compute_grad`` back-propagates each task's
  loss into the heads, ``abstract_weighting.py`` line 48; only the shared parameters' ``.grad`` is replaced,
  line 73).

Every vaccinated gradient is a combination of the original ones, g_i' = Σ_m C_im g_m (per group), so the vaccine
runs on the K × K Gram matrix of each group (float64): g_i'ᵀg_j = (C G)_ij, ‖g_i'‖² = (C G Cᵀ)_ii; the update of a
group is Σ_m (Σ_i C_im) g_m. This is the official arithmetic in another order (float64 instead of LibMTL's float32).
Two guards where the official is undefined or adds nothing: 1 − φ² is clamped at 0 before its square root (a
round-off |φ| > 1 would give NaN), and a vaccine on a group where ‖g_j‖ = 0 gets coefficient 0 (the official adds
g_j · w = 0 with w ≈ ‖g_i‖ φ̂ / 1e-8). A tensor that no loss reaches this step keeps ``.grad`` None and its φ̂
unchanged (LibMTL's slice of zeros would move its φ̂ towards 0, without effect on any update).

What ``info["weights"]`` reports: the update is Σ_t Σ_k λ_{t,k} g_{k,t} (t: group), so a task's weight is one per
group. The weight of task k is its effective coefficient,

    w_k = Σ_t λ_{t,k} ‖g_{k,t}‖² / Σ_t ‖g_{k,t}‖²,

the coefficient of g_k in the update projected on g_k (⟨Σ_t λ_{t,k} g_{k,t}, g_k⟩ / ‖g_k‖²; exactly λ_k with one
group, the default; the mean of λ_{·,k} where ‖g_k‖ = 0). It is 1 for a task that no vaccine touched and exceeds 1
when other tasks' vaccines added g_k. ``info["multipliers"]`` holds the K × T coefficients λ_{t,k} (T: 1, or the
shared tensors of the parameter list; 1 for tensors no loss reached this step). LibMTL's ``backward`` returns ones
(``batch_weight``, line 57; the line that would add w is commented out, line 72).

``gradient_space="representation"`` (the trainers' ``--representation``; LibMTL refuses ``rep_grad``, line 52):
the gradients with respect to the whole (union-batch) representation form one group.

Under torch.distributed the per-task gradients are averaged over the ranks before the Gram matrices are formed, and
every rank draws the same order from the same seed, so all replicas take the same step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .base import BackwardResult, GradientMethod, gradient_space_setting
from .gradients import TaskGradients, gram64
from .settings import setting

LIBMTL = "LibMTL (median-research-group/LibMTL) LibMTL/weighting/GradVac.py"
GROUPS = ("model", "tensor")
EPS = 1e-8  # in both denominators, as LibMTL GradVac.py lines 68 and 70


@dataclass(frozen=True)
class GradVacSettings:
    """GradVac's hyperparameters; defaults: LibMTL's (the authors released no code)."""

    beta: float = setting(0.5, "EMA rate β in (0, 1] of the cosine targets: φ̂ ← (1 − β) φ̂ + β φ",
                          LIBMTL + " line 73; LibMTL/config.py line 42 (GradVac_beta 0.5)")
    group: str = setting("model", "granularity: 'model' one target per task pair over all shared parameters; "
                         "'tensor' one per pair and shared parameter tensor",
                         LIBMTL + " lines 29-41; LibMTL/config.py lines 43-44 (GradVac_group_type 0 = whole model; "
                         "2 = all_matrix)", choices=GROUPS)
    seed: int = setting(0, "seed of the random order over the other tasks",
                        LIBMTL + " lines 59-62 (random.shuffle per task and step)", run_setting="seed")
    gradient_space: str = gradient_space_setting(LIBMTL + " (gradients of the shared parameters; LibMTL refuses "
                                                 "representation gradients, line 52)")


def vaccinate(grams: torch.Tensor, targets: torch.Tensor, beta: float, orders: List[List[int]]):
    """LibMTL's vaccine on each group's Gram matrix (``GradVac.py`` lines 58-74), all groups at once.

    ``grams``: T × K × K (float64); ``targets``: T × K × K, φ̂_ij per group; ``orders[i]``: the other tasks in the
    order task i meets them. Returns (C, new targets), C: T × K × K with row i the vaccinated g_i in the basis of
    the original g_m."""
    n_groups, k = grams.shape[0], grams.shape[1]
    coefficients = torch.eye(k, dtype=grams.dtype, device=grams.device).expand(n_groups, k, k).clone()
    targets = targets.clone()
    norms = grams.diagonal(dim1=1, dim2=2).clamp(min=0).sqrt()  # ‖g_{j,t}‖, T × K
    for i in range(k):
        for j in orders[i]:
            row = coefficients[:, i, :]  # g_i' = Σ_m C_im g_m
            dot = (row * grams[:, :, j]).sum(dim=1)  # g_i'ᵀ g_j
            norm_i = torch.einsum("tm,tmn,tn->t", row, grams, row).clamp(min=0).sqrt()  # ‖g_i'‖
            cosine = dot / (norm_i * norms[:, j] + EPS)  # line 68
            target = targets[:, i, j]
            target_sine = (1 - target**2).clamp(min=0).sqrt()
            coefficient = norm_i * (target * (1 - cosine**2).clamp(min=0).sqrt() - cosine * target_sine) / \
                (norms[:, j] * target_sine + EPS)  # line 70
            apply = (cosine < target) & (norms[:, j] > 0)  # line 69 (a zero g_j would add nothing)
            coefficients[:, i, j] += torch.where(apply, coefficient, torch.zeros_like(coefficient))  # line 71
            targets[:, i, j] = (1 - beta) * target + beta * cosine  # line 73
    return coefficients, targets


class GradVac(GradientMethod):
    """Raise each pair's gradient cosine to its moving-average target, per group of shared parameters."""

    Settings = GradVacSettings
    label = "GradVac"
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task
    in_paper = False
    state_tensors = ("targets",)

    def __init__(self, n_tasks: int, main_task: int = 0, device=None, beta: float = GradVacSettings.beta,
                 group: str = GradVacSettings.group, seed: int = GradVacSettings.seed,
                 gradient_space: str = GradVacSettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"GradVac beta must be in (0, 1] (--gradvac-beta), got {beta!r}")
        if group not in GROUPS:
            raise ValueError(f"GradVac group must be one of {GROUPS} (--gradvac-group), got {group!r}")
        self.beta = float(beta)
        self.group = group
        self.generator = torch.Generator().manual_seed(seed)
        #: T × K × K targets φ̂_ij (float64; row i: the task being vaccinated), one slice per group; None until the
        #: first step fixes T (1, or the number of shared tensors with ``group="tensor"``)
        self.targets: Optional[torch.Tensor] = None

    def combine(self, grads: TaskGradients):
        raise NotImplementedError("GradVac's coefficients are per (task, group): see apply_gradients")

    def orders(self) -> List[List[int]]:
        """For each task i, the other tasks in a fresh random order (LibMTL ``GradVac.py`` lines 60-62)."""
        orders = []
        for i in range(self.n_tasks):
            others = [j for j in range(self.n_tasks) if j != i]
            orders.append([others[p] for p in torch.randperm(len(others), generator=self.generator).tolist()])
        return orders

    def _groups(self, grads: TaskGradients, shared: List[torch.Tensor], representation: Optional[torch.Tensor]):
        """(number of groups T, this step's group indices, their column counts, their T' × K × K Gram matrices)."""
        if representation is not None or self.group == "model":  # one group (the union batch's Gram matrix)
            return 1, [0], [grads.shared.shape[1]], grads.gram()[None]
        used = grads.shared_used if grads.shared_used is not None else [True] * len(shared)
        columns = [t for t, u in enumerate(used) if u]
        sizes = [shared[t].numel() for t in columns]
        grams = torch.stack([gram64(block) for block in torch.split(grads.shared, sizes, dim=1)]) if columns else \
            torch.zeros(0, self.n_tasks, self.n_tasks, dtype=torch.float64, device=grads.shared.device)
        return len(shared), columns, sizes, grams

    def apply_gradients(self, grads: TaskGradients, shared: List[torch.Tensor], specific: List[torch.Tensor],
                        representation: Optional[torch.Tensor] = None) -> BackwardResult:
        n_groups, columns, sizes, grams = self._groups(grads, shared, representation)
        k = self.n_tasks
        if self.targets is None:
            self.targets = torch.zeros(n_groups, k, k, dtype=torch.float64, device=grams.device)  # line 42
        elif self.targets.shape[0] != n_groups:
            raise ValueError(f"GradVac.backward: the cosine targets are kept per group; they were made for "
                             f"{self.targets.shape[0]} group(s), this call has {n_groups}: pass the same "
                             f"shared_parameters list (or the representation) on every step")
        targets = self.targets.to(grams.device)
        coefficients, updated = vaccinate(grams, targets[columns], self.beta, self.orders())
        targets[columns] = updated
        self.targets = targets
        lam = coefficients.sum(dim=1)  # T' × K: the update of group t is Σ_m lam[t, m] g_{m,t}
        # group t: Σ_m lam[t, m] g_{m,t}; each head by its own loss, weight 1 (LibMTL abstract_weighting.py line 48)
        self.write_blockwise(grads, lam.T, sizes, shared, specific, representation)
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(shared, self.max_norm)
        self.step += 1

        multipliers = torch.ones(n_groups, k, dtype=torch.float64, device=grams.device)
        multipliers[columns] = lam
        squared = grams.diagonal(dim1=1, dim2=2).clamp(min=0)
        return BackwardResult(weights=effective_weights(lam, squared), multipliers=multipliers.T.contiguous())

    def state_dict(self) -> Dict:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


def effective_weights(lam: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
    """w_k = Σ_t λ_{t,k} ‖g_{k,t}‖² / Σ_t ‖g_{k,t}‖² (T' × K inputs); the mean of λ_{·,k} where ‖g_k‖ = 0 (1 when no
    group was reached)."""
    total = squared_norms.sum(dim=0)
    projected = (lam * squared_norms).sum(dim=0) / torch.where(total > 0, total, torch.ones_like(total))
    fallback = lam.mean(dim=0) if lam.shape[0] else torch.ones_like(total)
    return torch.where(total > 0, projected, fallback)
