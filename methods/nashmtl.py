"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya; ICML 2022, arXiv 2202.01017).

The symmetric Nash bargaining solution, Δθ = Σ_k α_k g_k with α_k (GᵀGα)_k = 1 (their Eq. 2): AuxiNash with
every bargaining power fixed at 1. ``update_weights_every`` reuses α between solves (one backward of the
weighted loss on the other steps) and ``max_norm`` clips the shared gradient, as in their code. ``fast``:
per-task gradients with respect to the shared representation (see ``auxinash``'s module docstring: not in the
official Nash-MTL code, whose ``NashMTL`` ignores the representation it is passed).
"""
from __future__ import annotations

import torch

from .auxinash import AuxiNash


class NashMTL(AuxiNash):
    """Nash-MTL (Navon et al., ICML 2022): the symmetric bargaining solution, p = 1, nothing learned."""

    uses_main_task = False  # a multi-task method: one model serves every task
    reports_p = False  # p is fixed at 1

    def __init__(
        self,
        n_tasks: int,
        main_task: int = 0,
        device: torch.device | str | None = None,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        solver: str = "newton",
        fast: bool = False,
    ) -> None:
        super().__init__(n_tasks, main_task, device, p=None, learn_p=False, max_norm=max_norm,
                         update_weights_every=update_weights_every, solver=solver, fast=fast)
