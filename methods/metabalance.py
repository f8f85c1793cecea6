"""MetaBalance: auxiliary gradients rescaled towards the main gradient's magnitude, per shared parameter tensor
(He, Feng, Cheng, Ji, Guo, Caverlee; "MetaBalance: Improving Multi-Task Recommendations via Adapting Gradient
Magnitudes of Auxiliary Tasks", WWW 2022).

Official code: facebookresearch/MetaBalance ``metabalance.py`` (the ``MetaBalance`` optimiser,
``balance_GradMagnitudes``) and ``example_main_metabalance.py`` (how it is called). For every shared parameter
tensor t and every task k, with g_{k,t} = ∇_t L_k on this step's batch:

    m_{k,t} ← β m_{k,t} + (1 − β) ‖g_{k,t}‖                                   (metabalance.py:80-82)
    g_{k,t} ← (m_{main,t} / m_{k,t} · r + (1 − r)) g_{k,t}                    (metabalance.py:84-86)
    update_t = Σ_k g_{k,t}                                                    (metabalance.py:88-101)

with β = ``beta`` = 0.9 and r = ``relax_factor`` = 0.7 (the constructor's defaults, metabalance.py:32, which
the example uses: ``MetaBalance(sharedLayerParameters)``, example_main_metabalance.py:116). ‖·‖ is the Frobenius
norm of the whole tensor (``torch.norm(p.grad)``). What the official code does that the paper's prose leaves
open, and we follow:

- **Moving averages start at 0 without bias correction** (``torch.zeros(1)``, metabalance.py:75-78) and are
  updated *before* they are used, on every step; one average per (task, tensor). The main task goes through
  the same formula, which leaves it unchanged (m_main / m_main = 1): its multiplier is exactly 1 here.
- **Only the shared parameters are rebalanced** (the optimiser is built on ``sharedLayerParameters``,
  example:114-116). The task heads are trained by the plain sum of the losses (example:156-158,
  ``loss_buy + loss_click + loss_fav + loss_cart`` stepped by ``optimizer_taskLayer``): each head gets its own
  loss's gradient, weight 1.
- **The main task is the first loss** of ``loss_array`` (example:161, ``[loss_buy, ...]``, buy the target task);
  here it is ``main_task``.
- **No epsilon.** The official division m_main / m_k has none. A task whose average on a tensor is 0 has had a
  zero gradient there on every step so far, so its contribution is 0 whatever the multiplier: we set the
  multiplier to 1 there instead of the official 0 · 0/0 = NaN. Where the main task's average is 0 and an
  auxiliary's is not (a tensor only auxiliaries reach), the formula gives multiplier 1 − r, as the official code.
- **A tensor no loss reaches this step** keeps ``.grad`` None and its averages unchanged (the official loop
  ``break``s out of the parameter group at the first tensor without a gradient, metabalance.py:65-67, which would
  also skip every later tensor of the group: we skip that tensor only). A tensor some tasks reach and others do
  not gives the others a zero gradient there, whose norm enters their averages, as in the official code (there
  ``.grad`` is the zero tensor left by the previous loss's ``zero_()``).

``strategy`` (not in the official code, which implements only ``"both"``; the paper describes three strategies
and tunes the choice per data set): ``"both"`` (default) moves every auxiliary's magnitude towards the main
task's, ``"reduce"`` only those larger than the main task's (m_{k,t} > m_{main,t}; the others keep multiplier 1),
``"enlarge"`` only those smaller.

What ``info["weights"]`` reports: the multipliers are one per (task, tensor), not one per task. The weight of
task k is its effective multiplier over the shared parameters,

    w_k = ‖(m-rescaled g_k)‖ / ‖g_k‖ = √(Σ_t mult_{k,t}² ‖g_{k,t}‖²) / √(Σ_t ‖g_{k,t}‖²),

the factor by which MetaBalance changed the length of task k's shared gradient on this step (1 for the main task;
the mean of its multipliers over the reached tensors when ‖g_k‖ = 0). ``info["multipliers"]`` holds the K × T
multipliers themselves (T: the shared tensors of the parameter list, 1 for tensors no loss reached this step).

``gradient_space="representation"`` (the trainers' ``--representation``; not in the official code, which
rebalances parameter tensors): the representation is treated as the one shared tensor, so every auxiliary gets
one multiplier, from the norms of its gradient with respect to the whole (union-batch) representation.

Under torch.distributed the per-task gradients are averaged over the ranks before the norms are taken (the
norms of the union batch's gradients), so every rank computes the same multipliers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .base import BackwardResult, GradientMethod, gradient_space_setting
from .gradients import TaskGradients
from .settings import setting

OFFICIAL = "facebookresearch/MetaBalance"
STRATEGIES = ("both", "reduce", "enlarge")


@dataclass(frozen=True)
class MetaBalanceSettings:
    """MetaBalance's hyperparameters; defaults: the official optimiser's."""

    relax_factor: float = setting(0.7, "relax factor r in [0, 1): multiplier r·m_main/m_aux + (1 − r) (0: no "
                                  "rebalancing, towards 1: magnitudes closer to the main task's)",
                                  OFFICIAL + " metabalance.py:32 (relax_factor=0.7), :86", allow_zero=True)
    beta: float = setting(0.9, "decay β in [0, 1) of the moving averages of the per-tensor gradient norms",
                          OFFICIAL + " metabalance.py:32 (beta=0.9), :82", allow_zero=True)
    strategy: str = setting("both", "which auxiliary gradients are rescaled: 'both' (all), 'reduce' (only those "
                            "larger than the main task's), 'enlarge' (only those smaller)",
                            OFFICIAL + " metabalance.py:84-86 ('both', the only one in the code); 'reduce' / "
                            "'enlarge': the paper's other two strategies", choices=STRATEGIES)
    gradient_space: str = gradient_space_setting(OFFICIAL + " metabalance.py (per shared parameter tensor; "
                                                 "'representation': the representation as one tensor, ours)")


class MetaBalance(GradientMethod):
    """Rescale each auxiliary gradient, per shared tensor, towards the main gradient's moving-average norm."""

    Settings = MetaBalanceSettings
    label = "MetaBalance"
    has_meta_update = False
    in_paper = False
    state_tensors = ("norm_averages",)

    def __init__(self, n_tasks: int, main_task: int = 0, device=None,
                 relax_factor: float = MetaBalanceSettings.relax_factor, beta: float = MetaBalanceSettings.beta,
                 strategy: str = MetaBalanceSettings.strategy,
                 gradient_space: str = MetaBalanceSettings.gradient_space) -> None:
        super().__init__(n_tasks, main_task, device, gradient_space)
        if not 0.0 <= relax_factor < 1.0:  # the official constructor's checks (metabalance.py:33-36)
            raise ValueError(f"MetaBalance relax_factor must be in [0, 1) (--metabalance-relax-factor), got "
                             f"{relax_factor!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"MetaBalance beta must be in [0, 1) (--metabalance-beta), got {beta!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"MetaBalance strategy must be one of {STRATEGIES} (--metabalance-strategy), got "
                             f"{strategy!r}")
        self.relax_factor = float(relax_factor)
        self.beta = float(beta)
        self.strategy = strategy
        #: K × T moving averages of ‖g_{k,t}‖ (float64), one column per shared tensor of the parameter list (per
        #: representation: one); None until the first step fixes T
        self.norm_averages: Optional[torch.Tensor] = None

    def combine(self, grads: TaskGradients):
        raise NotImplementedError("MetaBalance's multipliers are per (task, shared tensor), not one weight per task: "
                                  "see apply_gradients")

    def _block_norms(self, grads: TaskGradients, shared: List[torch.Tensor],
                     representation: Optional[torch.Tensor]):
        """The reached tensors' column indices into ``norm_averages``, their sizes, and the K × T' norms
        ‖g_{k,t}‖ (float64) of this step's (reduced) gradients."""
        if representation is not None:  # one block; the Gram matrix is the union batch's under torch.distributed
            return [0], [grads.shared.shape[1]], grads.gram().diagonal().clamp(min=0).sqrt()[:, None]
        used = grads.shared_used if grads.shared_used is not None else [True] * len(shared)
        columns = [t for t, u in enumerate(used) if u]
        sizes = [shared[t].numel() for t in columns]
        norms = torch.stack([torch.linalg.vector_norm(block, dim=1, dtype=torch.float64)
                             for block in torch.split(grads.shared, sizes, dim=1)], dim=1) if columns else \
            torch.zeros(self.n_tasks, 0, dtype=torch.float64, device=grads.shared.device)
        return columns, sizes, norms

    def multipliers(self, averages: torch.Tensor) -> torch.Tensor:
        """K × T' multipliers r·m_main/m_k + (1 − r) (metabalance.py:86) from the updated averages; 1 for the
        main task, where m_k = 0 (a contribution that is zero anyway) and where ``strategy`` leaves g_k as is."""
        main = averages[self.main_task]
        safe = torch.where(averages > 0, averages, torch.ones_like(averages))
        factors = main / safe * self.relax_factor + (1.0 - self.relax_factor)
        keep = averages > 0
        if self.strategy == "reduce":
            keep = keep & (averages > main)
        elif self.strategy == "enlarge":
            keep = keep & (averages < main)
        factors = torch.where(keep, factors, torch.ones_like(factors))
        factors[self.main_task] = 1.0
        return factors

    def apply_gradients(self, grads: TaskGradients, shared: List[torch.Tensor], specific: List[torch.Tensor],
                        representation: Optional[torch.Tensor] = None) -> BackwardResult:
        n_columns = 1 if representation is not None else len(shared)
        if self.norm_averages is None:
            self.norm_averages = torch.zeros(self.n_tasks, n_columns, dtype=torch.float64, device=grads.shared.device)
        elif self.norm_averages.shape[1] != n_columns:
            raise ValueError(f"MetaBalance.backward: the moving averages are kept per shared tensor; they were made "
                             f"for {self.norm_averages.shape[1]} tensor(s), this call passes {n_columns}: pass the "
                             f"same shared_parameters list (or the representation) on every step")
        columns, sizes, norms = self._block_norms(grads, shared, representation)
        averages = self.norm_averages.to(norms.device)
        updated = self.beta * averages[:, columns] + (1.0 - self.beta) * norms  # metabalance.py:82
        averages[:, columns] = updated
        self.norm_averages = averages
        factors = self.multipliers(updated)
        # tensor t: Σ_k m_{k,t} g_{k,t}; each head by its own loss, weight 1 (example_main_metabalance.py:156-158)
        self.write_blockwise(grads, factors, sizes, shared, specific, representation)
        self.step += 1

        all_factors = torch.ones_like(averages)
        all_factors[:, columns] = factors
        return BackwardResult(weights=self.effective_weights(factors, norms), multipliers=all_factors)

    def effective_weights(self, factors: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """w_k = √(Σ_t mult_{k,t}² ‖g_{k,t}‖²) / √(Σ_t ‖g_{k,t}‖²): how much the rescaling changed the length of
        task k's shared gradient (the mean multiplier where ‖g_k‖ = 0; 1 for the main task)."""
        squared = norms**2
        total = squared.sum(dim=1)
        ratio = ((factors**2 * squared).sum(dim=1) / torch.where(total > 0, total, torch.ones_like(total))).sqrt()
        fallback = factors.mean(dim=1) if factors.shape[1] else torch.ones_like(total)
        weights = torch.where(total > 0, ratio, fallback)
        weights[self.main_task] = 1.0
        return weights
