"""Task metrics pooled over a whole evaluation set, and Δm.

- Segmentation: one confusion matrix over every test pixel (−1 ignored): mIoU (mean over classes present in
  the labels or the predictions) and pixel accuracy.
- Depth / disparity: absolute error pooled over all valid pixels (target ≠ the invalid marker: 0, or −1 for
  Auto-λ's Cityscapes disparity, where 0 is a valid, infinitely far pixel), relative error over the valid pixels
  with a non-zero target.
- Surface normals: angles between prediction and target over all valid pixels (target ≠ 0): mean, median
  and % within 11.25°, 22.5°, 30°. The median is exact to 0.001° (a histogram of 180,000 bins), not a mean
  of per-batch medians as in the official code.
- Classification: accuracy (−1 labels ignored).
All accumulate on the device and synchronise once, in ``result``.

Δm (Maninis et al. 2019; the AuxiNash paper's Δ%): 100 × mean over all metrics m of (−1)^δ_m (M_m − S_m)/S_m,
δ_m = 1 when higher is better and S the single-task baseline: lower is better.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping

import torch


def _require(state, name: str):
    """An accumulator's totals, or a clear error when it saw no data (an empty evaluation split)."""
    if state is None:
        raise ValueError(f"{name}: no evaluation data was seen (the evaluation split is empty); give the split "
                         f"at least one item (e.g. a positive --val-size)")
    return state


class ConfusionMatrix:
    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.counts: torch.Tensor | None = None

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction``: N×C×… scores or N×… class ids; ``target``: N×… class ids, −1 ignored."""
        if prediction.dim() == target.dim() + 1:
            prediction = prediction.argmax(1)
        valid = target >= 0
        index = target[valid] * self.n_classes + prediction[valid]
        counts = torch.bincount(index, minlength=self.n_classes**2).view(self.n_classes, self.n_classes)
        self.counts = counts if self.counts is None else self.counts + counts

    def result(self) -> Dict[str, float]:
        counts = _require(self.counts, "segmentation metrics").double()
        true_positive = counts.diagonal()
        union = counts.sum(0) + counts.sum(1) - true_positive
        present = union > 0
        miou = (true_positive[present] / union[present]).mean().item() if present.any() else float("nan")
        total = counts.sum().item()
        return {"miou": 100 * miou, "pixacc": 100 * true_positive.sum().item() / total if total else float("nan")}


class DepthError:
    def __init__(self, invalid: float = 0.0) -> None:
        self.invalid = invalid
        self.totals = None

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        valid = target != self.invalid
        nonzero = valid & (target != 0)
        difference = (prediction - target).abs().double()
        totals = torch.stack([difference[valid].sum(), (difference[nonzero] / target[nonzero].abs().double()).sum(),
                              valid.sum().double(), nonzero.sum().double()])
        self.totals = totals if self.totals is None else self.totals + totals

    def result(self) -> Dict[str, float]:
        absolute, relative, count, nonzero = _require(self.totals, "depth error").tolist()
        return {"abs_err": absolute / count if count else float("nan"),
                "rel_err": relative / nonzero if nonzero else float("nan")}


class NormalError:
    BINS = 180_000  # 0.001° bins over [0°, 180°]

    def __init__(self) -> None:
        self.histogram = None

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """N×3×H×W predictions (normalised here) and targets (zero = invalid)."""
        valid = target.norm(dim=1) > 0
        prediction = torch.nn.functional.normalize(prediction.float(), dim=1)
        cosine = (prediction * target).sum(1)[valid].clamp(-1, 1)
        angles = torch.rad2deg(torch.acos(cosine.double()))
        bins = (angles / 180 * self.BINS).long().clamp(max=self.BINS - 1)
        counts = torch.bincount(bins, minlength=self.BINS)
        sums = torch.stack([angles.sum(), (angles < 11.25).sum(), (angles < 22.5).sum(), (angles < 30).sum()])
        if self.histogram is None:
            self.histogram, self.sums = counts, sums.double()
        else:
            self.histogram, self.sums = self.histogram + counts, self.sums + sums

    def result(self) -> Dict[str, float]:
        count = _require(self.histogram, "normal error").sum().item()
        cumulative = self.histogram.cumsum(0)
        median_bin = int(torch.searchsorted(cumulative, torch.tensor((count + 1) // 2, device=cumulative.device)))
        if not count:  # no evaluated pixel had a valid normal: NaN, as the depth and accuracy metrics
            return {name: float("nan") for name in ("mean", "median", "within_11_25", "within_22_5", "within_30")}
        total, within_11, within_22, within_30 = self.sums.tolist()
        return {"mean": total / count, "median": (median_bin + 0.5) * 180 / self.BINS,
                "within_11_25": 100 * within_11 / count, "within_22_5": 100 * within_22 / count,
                "within_30": 100 * within_30 / count}


class Accuracy:
    def __init__(self) -> None:
        self.totals = None

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        valid = target >= 0
        totals = torch.stack([(prediction.argmax(1)[valid] == target[valid]).sum(), valid.sum()])
        self.totals = totals if self.totals is None else self.totals + totals

    def result(self) -> Dict[str, float]:
        correct, count = _require(self.totals, "accuracy").tolist()
        return {"acc": 100 * correct / count if count else float("nan")}


class MeanSquaredError:
    def __init__(self) -> None:
        self.totals = None

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        totals = torch.stack([((prediction - target).double() ** 2).sum(), torch.tensor(target.numel()).double()])
        self.totals = totals if self.totals is None else self.totals + totals

    def result(self) -> Dict[str, float]:
        total, count = _require(self.totals, "mean squared error").tolist()
        return {"mse": total / count}


def delta_m(values: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: Mapping[str, bool]) -> float:
    """Δm in %: 100 × mean over the metrics of the signed relative change against ``baseline``."""
    terms = []
    for name, higher in higher_is_better.items():
        value, base = values.get(name, math.nan), baseline.get(name, math.nan)
        terms.append((-1 if higher else 1) * (value - base) / base)
    return 100 * sum(terms) / len(terms)
