"""Task definitions: for each prediction task its loss (MTAN lineage, as Nash-MTL and the official AuxiNash
code) and its metrics, together.

- segmentation: cross-entropy (NLL of log-softmax), −1 ignored; metrics mIoU and pixel accuracy (Cityscapes
  part_seg has no −1 labels: its 10 classes include background 0, as Auto-λ's ``utils.compute_loss`` /
  ``ConfMatrix``);
- depth / disparity: L1 over valid pixels (target ≠ the task's ``invalid`` marker: 0 for depth, −1 for
  Auto-λ's Cityscapes disparity, as ``utils.compute_loss``); metrics absolute and relative error (the relative
  error over valid pixels with a non-zero target);
- normal: 1 − mean cosine over valid pixels (target ≠ 0), predictions L2-normalised per pixel; metrics the
  angle's mean, median and % within 11.25°, 22.5°, 30°;
- classification: cross-entropy, −1 ignored; metric accuracy;
- regression (the illustrative example): mean squared error;
- exemplar (Exemplar-MT): its loss is computed by the CIFAR benchmark (teacher features); no metric.
Every loss over valid entries is 0, with a zero gradient, on a batch without any valid entry for that task (an
image whose label map is all −1, a batch of unlabelled CIFAR images); ``has_valid_target`` says which.
Metric columns are ``<task>_<metric>``; ``table_metrics`` lists those that enter the paper's tables and Δm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from .metrics import Accuracy, ConfusionMatrix, DepthError, MeanSquaredError, NormalError
from experiments.storage.results_io import metric_column

# metric → higher is better
METRICS = {
    "segmentation": {"miou": True, "pixacc": True},
    "depth": {"abs_err": False, "rel_err": False},
    "disparity": {"abs_err": False, "rel_err": False},
    "normal": {"mean": False, "median": False, "within_11_25": True, "within_22_5": True, "within_30": True},
    "classification": {"acc": True},
    "regression": {"mse": False},
    "exemplar": {},
}


@dataclass(frozen=True)
class Task:
    """A prediction task: ``name`` (column prefix), the batch ``key`` of its target, its ``kind``."""

    name: str
    key: str
    kind: str
    n_classes: int = 0
    table_metrics: Tuple[str, ...] = ()
    invalid: float = 0.0  # depth / disparity: the target value that marks an invalid pixel

    @property
    def channels(self) -> int:
        return {"segmentation": self.n_classes, "classification": self.n_classes, "normal": 3}.get(self.kind, 1)

    def columns(self, table_only: bool = False) -> Dict[str, bool]:
        """``<name>_<metric>`` → higher is better."""
        metrics = METRICS[self.kind]
        keep = self.table_metrics if (table_only and self.table_metrics) else tuple(metrics)
        return {metric_column(self.name, m): metrics[m] for m in keep}

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction = prediction.float()
        if self.kind in ("segmentation", "classification"):
            # the mean over labelled pixels / items (F.cross_entropy's ignore_index=-1 mean), but 0 with a zero
            # gradient where the batch has none (F.cross_entropy gives 0/0 = NaN there)
            total = F.cross_entropy(prediction, target, ignore_index=-1, reduction="sum")
            return total / (target != -1).sum().clamp(min=1)
        if self.kind in ("depth", "disparity"):
            valid = (target != self.invalid).float()
            return ((prediction - target).abs() * valid).sum() / valid.sum().clamp(min=1)
        if self.kind == "regression":
            return F.mse_loss(prediction, target, reduction="sum") / max(target.numel(), 1)
        if self.kind == "normal":  # 1 − mean cosine over valid pixels, written so that no valid pixel gives 0
            valid = (target.norm(dim=1, keepdim=True) != 0).float()
            cosine = (F.normalize(prediction, dim=1) * target * valid).sum()
            return (valid.sum() - cosine) / valid.sum().clamp(min=1)
        raise ValueError(f"unknown task kind {self.kind!r}")

    def has_valid_target(self, target: torch.Tensor) -> torch.Tensor:
        """Whether ``target`` holds any valid entry (a 0-d bool tensor on its device: no synchronisation). A task
        without one contributes loss 0 (gradient 0) to its batch, and the batch does not count in the epoch's
        mean loss of that task."""
        if self.kind in ("segmentation", "classification"):
            return (target != -1).any()
        if self.kind in ("depth", "disparity"):
            return (target != self.invalid).any()
        if self.kind == "normal":
            return (target != 0).any()
        return torch.tensor(target.numel() > 0, device=target.device)

    def accumulator(self):
        if self.kind == "segmentation":
            return ConfusionMatrix(self.n_classes)
        if self.kind == "classification":
            return Accuracy()
        if self.kind == "regression":
            return MeanSquaredError()
        return NormalError() if self.kind == "normal" else DepthError(self.invalid)
