"""Dynamic Weight Average, DWA (Liu, Johns, Davison; "End-To-End Multi-Task Learning With Attention", CVPR 2019,
Eq. 7).

The training loss is Σ_k λ_k L_k (one backward: shared parameters and heads weighted alike), with

    λ_k(t) = K exp(w_k(t−1) / T) / Σ_i exp(w_i(t−1) / T),      w_k(t−1) = L̄_k(t−1) / L̄_k(t−2),

where L̄_k(e) is task k's mean training loss over epoch e, T = 2, and λ = 1 in the first two epochs. This is the
official MTAN code (lorenmt/mtan ``im2im_pred/utils.py`` ``multi_task_trainer``): ``lambda_weight`` ones in epochs
0 and 1 (lines 139-140), the ratios of the two previous epochs' ``avg_cost`` (lines 142-147), ``avg_cost`` the mean
of the per-batch losses over the epoch (line 181), the loss Σ λ_k L_k (lines 165-166), T = ``--temp`` 2.0
(``model_segnet_mtan.py`` line 13). The weights change once per epoch, from the loop's ``end_of_epoch`` hook with
the epoch's mean losses (epochs of the data, not evaluation rounds: on CIFAR-10 the ``--eval-every`` cadence does
not change them). Where a ratio cannot be formed (a task without a valid target in either epoch, its mean loss
NaN, or a previous mean of 0) we take w_k = 1 (no change): the MTAN code has no such case.

Other implementations (``ratio`` switch):

- LibMTL (``LibMTL/weighting/DWA.py`` lines 23-27) is the same per-epoch rule; its epoch means are weighted by
  batch size (``LibMTL/loss.py`` lines 31-34), which differs from MTAN's only when the last batch is smaller.
- Nash-MTL (AvivNavon/nash-mtl ``methods/weight_methods.py`` ``DynamicWeightAverage``, lines 744-791) works per
  iteration: ``ratio="window"`` follows it. A FIFO of the last 2·``window`` (25) batch losses, initialised to ones
  (line 764), receives this step's losses first (lines 772-773); from the step after the ``window``-th on (lines
  775-781: ``running_iterations > iteration_window``) λ = K softmax(w / T) with w the mean of the newer half over
  the mean of the older half, applied to this step; before that λ = 1. Its loss is the *mean* Σ λ_k L_k / K
  (line 786); we keep the sum in both modes (as MTAN's and LibMTL's), so its update is K times Nash-MTL's at the
  same λ (Adam's step is almost unaffected by the factor). The window's losses are kept in float64 (Nash-MTL:
  float32); ``accumulate`` is refused in this mode (a step's λ needs that step's union loss before any
  micro-batch's backward).

``info["weights"]`` is λ, the multiplier of each ∇L_k this step. State (the last two epochs' means, the epochs
seen, λ; in window mode the FIFO and step count) is in ``state_tensors``, so ``--resume`` continues exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import BackwardResult, FixedWeightMethod, weighted_sum_backward
from .settings import setting

MTAN = "lorenmt/mtan im2im_pred/utils.py multi_task_trainer"
NASH_MTL_DWA = "AvivNavon/nash-mtl methods/weight_methods.py DynamicWeightAverage"
RATIOS = ("epoch", "window")


@dataclass(frozen=True)
class DWASettings:
    """DWA's hyperparameters; defaults: the official MTAN code."""

    temperature: float = setting(2.0, "softmax temperature T", "lorenmt/mtan im2im_pred/model_segnet_mtan.py line 13 "
                                 "(--temp 2.0); paper Sec. 3.3")
    ratio: str = setting("epoch", "'epoch': ratios of the last two epochs' mean losses (MTAN, LibMTL); 'window': of "
                         "the means of the last two windows of batch losses (Nash-MTL)",
                         MTAN + " lines 138-147; " + NASH_MTL_DWA + " lines 744-791", choices=RATIOS)
    window: int = setting(25, "iterations per window in ratio='window'", NASH_MTL_DWA + " line 750 (iteration_window)")


class DWA(FixedWeightMethod):
    """Σ_k λ_k L_k with λ = K softmax(loss ratios / T), updated once per epoch."""

    Settings = DWASettings
    label = "DWA"
    has_meta_update = False
    uses_main_task = False  # a multi-task method: one model serves every task
    in_paper = False
    state_tensors = ("weights", "epoch_means", "epochs_seen", "window_losses")

    def __init__(self, n_tasks: int, main_task: int = 0, device=None,
                 temperature: float = DWASettings.temperature, ratio: str = DWASettings.ratio,
                 window: int = DWASettings.window) -> None:
        super().__init__(n_tasks, main_task, device)
        if ratio not in RATIOS:
            raise ValueError(f"DWA ratio must be one of {RATIOS} (--dwa-ratio), got {ratio!r}")
        if not temperature > 0:
            raise ValueError(f"DWA temperature must be positive, got {temperature!r}")
        if int(window) != window or window < 1:
            raise ValueError(f"DWA window must be a positive integer (--dwa-window), got {window!r}")
        self.temperature = float(temperature)
        self.ratio = ratio
        self.window = int(window)
        self.weights = torch.ones(n_tasks, device=self.device)  # λ: 1 in the first two epochs (utils.py 139-140)
        #: rows: the mean losses of the second-to-last and the last epoch seen (read once two epochs were seen)
        self.epoch_means = torch.zeros(2, n_tasks, dtype=torch.float64, device=self.device)
        self.epochs_seen = 0
        #: ratio="window": the last 2·window batch losses, oldest first, ones at the start (Nash-MTL line 764)
        self.window_losses = torch.ones(2 * self.window if ratio == "window" else 0, n_tasks, dtype=torch.float64,
                                        device=self.device)

    def softmax_weights(self, ratios: torch.Tensor) -> torch.Tensor:
        """λ = K exp(w / T) / Σ_i exp(w_i / T) (utils.py lines 145-147), in float64, as float32."""
        return (self.n_tasks * torch.softmax(ratios.double() / self.temperature, dim=0)).float().to(self.device)

    def task_weights(self) -> torch.Tensor:
        return self.weights

    # -- per epoch (MTAN): the loop's end_of_epoch ------------------------------------------------------------------
    def end_of_epoch(self, mean_losses: torch.Tensor) -> None:
        if self.ratio != "epoch":
            return
        means = torch.as_tensor(mean_losses, dtype=torch.float64).to(self.device).reshape(-1)
        if means.numel() != self.n_tasks:
            raise ValueError(f"DWA.end_of_epoch: expected {self.n_tasks} mean losses, got {means.numel()}")
        self.epoch_means = torch.stack([self.epoch_means[1], means])
        self.epochs_seen += 1
        if self.epochs_seen >= 2:  # the weights of epoch index ≥ 2 (utils.py lines 141-147)
            ratios = self.epoch_means[1] / self.epoch_means[0]
            ratios = torch.where(torch.isfinite(ratios) & (self.epoch_means[0] != 0), ratios,
                                 torch.ones_like(ratios))  # no ratio: no change (ours; not in MTAN)
            self.weights = self.softmax_weights(ratios)

    # -- per iteration (Nash-MTL): this step's losses enter the window before its weights are formed ---------------
    def backward(self, losses, shared_parameters, task_specific_parameters=(), representation=None) -> BackwardResult:
        values, shared, specific = self.check_inputs(losses, shared_parameters, task_specific_parameters,
                                                     representation)
        if self.ratio == "window":
            self._window_step(values)
        weights = self.task_weights().to(losses.device)
        weighted_sum_backward(losses, weights)
        return self.finish_weighted(weights, shared, specific)

    def _window_step(self, values: torch.Tensor) -> None:
        costs = torch.cat([self.window_losses[1:], values.detach().to(self.window_losses).reshape(1, -1)])
        self.window_losses = costs  # FIFO (lines 772-773)
        if self.step > self.window:  # running_iterations > iteration_window (line 775); self.step: steps before
            ratios = costs[self.window:].mean(0) / costs[:self.window].mean(0)
            ratios = torch.where(torch.isfinite(ratios), ratios, torch.ones_like(ratios))
            self.weights = self.softmax_weights(ratios)

    def accumulate(self, losses, shared_parameters, task_specific_parameters=(), representation=None) -> None:
        if self.ratio == "window":
            raise ValueError("DWA.accumulate: ratio='window' forms each step's weights from that step's losses "
                             "before its backward pass, which micro-batches cannot give; use ratio='epoch' (the "
                             "default) or one backward per optimiser step")
        super().accumulate(losses, shared_parameters, task_specific_parameters, representation)
