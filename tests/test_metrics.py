"""Metrics on hand-computed cases, and Δm against the paper's own printed values.

Tolerances: ``pytest.approx``'s default (relative 1e-6) where a hand value meets a float32/float64 computation of a
few terms; the normal angles are float32 sines and cosines through acos (1e-4 degrees) and the median is read off
a histogram of 0.001° bins (1e-3 degrees). Δm recomputed from the paper's printed (rounded) table entries is
compared with its printed Δm at 0.05: the entries' rounding moves it by a few hundredths, the printed Δm by 0.005."""
import math
import os

import pandas as pd
import pytest
import torch

from experiments.reporting.tables import CITYSCAPES_COLUMNS, NYUV2_COLUMNS
from experiments.storage.results_io import PAPER_DIR
from experiments.training.metrics import Accuracy, ConfusionMatrix, DepthError, MeanSquaredError, NormalError, delta_m


def test_confusion_matrix_miou_and_pixel_accuracy():
    target = torch.tensor([[0, 0, 1, 1, -1], [2, 2, 2, 1, -1]])
    prediction = torch.tensor([[0, 1, 1, 1, 2], [2, 2, 0, 1, 0]])
    matrix = ConfusionMatrix(3)
    matrix.update(prediction[:1], target[:1])
    matrix.update(prediction[1:], target[1:])  # pooled over batches
    result = matrix.result()
    # class 0: tp 1, fp 1, fn 1 → 1/3; class 1: tp 3, fp 1, fn 0 → 3/4; class 2: tp 2, fp 0, fn 1 → 2/3
    assert result["miou"] == pytest.approx(100 * (1 / 3 + 3 / 4 + 2 / 3) / 3)
    assert result["pixacc"] == pytest.approx(100 * 6 / 8)
    scores = torch.nn.functional.one_hot(prediction, 3).permute(0, 2, 1).float()  # N × C × W scores
    other = ConfusionMatrix(3)
    other.update(scores, target)
    assert other.result() == result


def test_depth_error_pools_valid_pixels():
    target = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])
    prediction = torch.tensor([[[[1.0, 9.0], [5.0, 1.5]]]])
    error = DepthError()
    error.update(prediction, target)
    result = error.result()
    assert result["abs_err"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert result["rel_err"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)


def test_normal_error_angles():
    target = torch.zeros(1, 3, 1, 5)
    target[0, 2] = 1.0  # every target points along z
    target[0, :, 0, 4] = 0.0  # invalid pixel
    angles = torch.tensor([0.0, 10.0, 20.0, 40.0, 77.0])
    radians = torch.deg2rad(angles)
    prediction = torch.stack([torch.sin(radians), torch.zeros(5), torch.cos(radians)])[None, :, None, :] * 3.0
    error = NormalError()
    error.update(prediction, target)
    result = error.result()
    assert result["mean"] == pytest.approx(17.5, abs=1e-4)
    assert result["median"] == pytest.approx(10.0, abs=1e-3)
    assert result["within_11_25"] == pytest.approx(50.0)
    assert result["within_22_5"] == pytest.approx(75.0)
    assert result["within_30"] == pytest.approx(75.0)


def test_metrics_without_a_valid_pixel_are_nan():
    """Issue 29: a test set with no valid normal (or depth, or label) gives NaN metrics, not ZeroDivisionError."""
    normals = NormalError()
    normals.update(torch.randn(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))  # zero target = invalid everywhere
    assert set(normals.result()) == {"mean", "median", "within_11_25", "within_22_5", "within_30"}
    assert all(math.isnan(v) for v in normals.result().values())
    depth = DepthError()
    depth.update(torch.rand(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert all(math.isnan(v) for v in depth.result().values())
    accuracy = Accuracy()
    accuracy.update(torch.rand(2, 3), torch.tensor([-1, -1]))
    assert math.isnan(accuracy.result()["acc"])


def test_accuracy_and_mse():
    accuracy = Accuracy()
    accuracy.update(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 0, -1]))
    assert accuracy.result()["acc"] == pytest.approx(50.0)
    mse = MeanSquaredError()
    mse.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    assert mse.result()["mse"] == pytest.approx(2.5)


def test_delta_m_signs():
    higher = {"acc": True, "err": False}
    assert delta_m({"acc": 110, "err": 0.9}, {"acc": 100, "err": 1.0}, higher) == pytest.approx(-10.0)


@pytest.mark.parametrize("name, columns", [("nyuv2", NYUV2_COLUMNS), ("cityscapes", CITYSCAPES_COLUMNS),
                                           ("nyuv2_fixed_p", NYUV2_COLUMNS)])
def test_delta_m_reproduces_paper(name, columns):
    table = pd.read_csv(os.path.join(PAPER_DIR, f"{name}.csv")).set_index("method")
    stl = table.loc["STL"].to_dict()
    for method, row in table.drop("STL").iterrows():
        assert delta_m(row.to_dict(), stl, columns) == pytest.approx(row["delta_m"], abs=0.05), method


def test_delta_m_reproduces_paper_meta_lr_after_the_known_swap():
    """Table 9: the five normal cells of its first two rows are swapped in print (see results/paper)."""
    table = pd.read_csv(os.path.join(PAPER_DIR, "nyuv2_meta_lr.csv")).set_index("method")
    stl = pd.read_csv(os.path.join(PAPER_DIR, "nyuv2.csv")).set_index("method").loc["STL"].to_dict()
    normals = [c for c in NYUV2_COLUMNS if c.startswith("normal")]
    first, second = table.index[:2]
    table.loc[[first, second], normals] = table.loc[[second, first], normals].values
    assert delta_m(table.loc[first].to_dict(), stl, NYUV2_COLUMNS) == pytest.approx(-6.80, abs=0.05)
    assert not math.isnan(delta_m(table.loc[second].to_dict(), stl, NYUV2_COLUMNS))
