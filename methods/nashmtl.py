"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya; ICML 2022, arXiv 2202.01017).

The symmetric Nash bargaining solution, Δθ = Σ_k α_k g_k with α_k (GᵀGα)_k = 1 (their Eq. 2): AuxiNash with
every bargaining power fixed at 1. ``update_weights_every`` reuses α between solves (one backward of the
weighted loss on the other steps) and ``max_norm`` clips the shared gradient, as in their code. ``fast`` (the same
as ``gradient_space="representation"``): per-task gradients with respect to the shared representation (see
``auxinash``'s module docstring: not in the official Nash-MTL code, whose ``NashMTL`` ignores the representation
it is passed).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .auxinash import SOLVERS, AuxiNash
from .base import gradient_space_setting
from .settings import setting

NASH_MTL = "Nash-MTL code (AvivNavon/nash-mtl, methods/weight_methods.py NashMTL)"


@dataclass(frozen=True)
class NashMTLSettings:
    """Nash-MTL's hyperparameters; defaults: its official code."""

    max_norm: float = setting(1.0, "clip the shared update to this norm (0: no clipping)", NASH_MTL, allow_zero=True)
    update_weights_every: int = setting(1, "steps between Nash solves; α is reused in between", NASH_MTL)
    solver: str = setting("newton", "Nash solver: our exact Newton solve or the reference CVXPY program",
                          "ours; 'cvxpy' = " + NASH_MTL, choices=SOLVERS)
    fast: bool = setting(False, "fast mode: per-task gradients w.r.t. the shared representation, then one backward "
                         "of the weighted loss (an approximation: see methods/auxinash.py)",
                         "ours (issue 24); the Nash-MTL code's representation argument is unused")
    gradient_space: str = gradient_space_setting(NASH_MTL + " (the shared parameters; its backward ignores the "
                                                 "representation it is passed)")


class NashMTL(AuxiNash):
    """Nash-MTL (Navon et al., ICML 2022): the symmetric bargaining solution, p = 1, nothing learned."""

    Settings = NashMTLSettings
    label = "Nash-MTL"
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task
    reports_p = False  # p is fixed at 1

    def __init__(
        self,
        n_tasks: int,
        main_task: int = 0,
        device: torch.device | str | None = None,
        max_norm: float = NashMTLSettings.max_norm,
        update_weights_every: int = NashMTLSettings.update_weights_every,
        solver: str = NashMTLSettings.solver,
        fast: bool = NashMTLSettings.fast,
        gradient_space: str = NashMTLSettings.gradient_space,
    ) -> None:
        super().__init__(n_tasks, main_task, device, p=None, learn_p=False, max_norm=max_norm,
                         update_weights_every=update_weights_every, solver=solver, fast=fast,
                         gradient_space=gradient_space)
