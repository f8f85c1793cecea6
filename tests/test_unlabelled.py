"""A training batch where a task has no valid target (issue 21): loss 0 with gradient 0 for every task kind, the
epoch means count only the batches with valid targets, the run continues, ``data.check`` reports the items; a
genuinely non-finite loss still stops the run."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from data import synthetic
from data.check import check
from experiments import train_nyuv2
from experiments.training.tasks import Task
from methods.equal import Equal

KINDS = {  # task, prediction shape, a target with no valid entry
    "segmentation": (Task("seg", "segmentation", "segmentation", n_classes=4), (1, 4, 3, 5),
                     torch.full((1, 3, 5), -1, dtype=torch.long)),
    "classification": (Task("cls", "label", "classification", n_classes=4), (6, 4), torch.full((6,), -1)),
    "depth": (Task("depth", "depth", "depth"), (1, 1, 3, 5), torch.zeros(1, 1, 3, 5)),
    "disparity": (Task("disp", "disparity", "disparity", invalid=-1.0), (1, 1, 3, 5), torch.full((1, 1, 3, 5), -1.0)),
    "normal": (Task("normal", "normal", "normal"), (1, 3, 3, 5), torch.zeros(1, 3, 3, 5)),
    "regression": (Task("y", "y", "regression"), (0, 1), torch.zeros(0, 1)),
}


@pytest.mark.parametrize("kind", KINDS)
def test_no_valid_target_gives_loss_zero_and_gradient_zero(kind):
    task, shape, target = KINDS[kind]
    prediction = torch.randn(shape, requires_grad=True)
    loss = task.loss(prediction, target)
    (gradient,) = torch.autograd.grad(loss, prediction)
    assert loss.item() == 0 and torch.equal(gradient, torch.zeros_like(gradient))
    assert not bool(task.has_valid_target(target))


def test_losses_with_valid_targets_are_unchanged():
    """The rewritten losses against their textbook forms where some targets are valid."""
    torch.manual_seed(0)
    seg = torch.randint(-1, 4, (2, 3, 5))
    logits = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(KINDS["segmentation"][0].loss(logits, seg), F.cross_entropy(logits, seg, ignore_index=-1))
    prediction, target = torch.randn(2, 3, 3, 5), F.normalize(torch.randn(2, 3, 3, 5), dim=1)
    target[0, :, 0] = 0  # invalid pixels
    valid = target.norm(dim=1) > 0
    cosine = (F.normalize(prediction, dim=1) * target).sum(1)[valid]
    torch.testing.assert_close(KINDS["normal"][0].loss(prediction, target), 1 - cosine.mean())
    y, t = torch.randn(7, 1), torch.randn(7, 1)
    torch.testing.assert_close(KINDS["regression"][0].loss(y, t), F.mse_loss(y, t))
    assert bool(KINDS["depth"][0].has_valid_target(torch.tensor([0.0, 2.0])))


@pytest.fixture
def nyu_one_unlabelled(tmp_path):
    root = synthetic.write_nyuv2(str(tmp_path / "nyu"), n_train=2, n_test=1, shape=(32, 64))
    np.save(f"{root}/train/label/0.npy", np.full((32, 64), -1.0, np.float32))  # no labelled pixel
    return root


ARGS = ["--epochs", "1", "--width", "0.0625", "--batch-size", "1", "--workers", "0", "--log-level", "WARNING",
        "--method", "equal", "--no-augment"]


def test_run_continues_and_epoch_mean_counts_only_labelled_batches(nyu_one_unlabelled, tmp_path, monkeypatch):
    seen = []
    original = Equal.backward

    def recording(self, losses, *args, **kwargs):
        seen.append(losses.detach().clone())
        return original(self, losses, *args, **kwargs)

    monkeypatch.setattr(Equal, "backward", recording)
    run = train_nyuv2.main(["--data-root", nyu_one_unlabelled, "--out", str(tmp_path), *ARGS])
    rows = pd.read_csv(f"{run}/metrics.csv")
    train = rows[rows.split == "train"].iloc[0]
    seg = [float(s[0]) for s in seen]
    assert len(seg) == 2 and sorted(s == 0 for s in seg) == [False, True]  # one batch without labels: loss 0
    # the logged means of float32 loss values against the same values averaged here: a few 2^-24 apart
    assert train["loss_seg"] == pytest.approx(max(seg), rel=1e-6)  # the mean over the labelled batch alone
    assert train["loss_depth"] == pytest.approx(np.mean([float(s[1]) for s in seen]), rel=1e-6)


def test_non_finite_loss_still_stops_the_run(nyu_one_unlabelled, tmp_path, monkeypatch):
    original = Task.loss

    def broken(self, prediction, target):
        loss = original(self, prediction, target)
        return loss * float("nan") if self.kind == "depth" else loss

    monkeypatch.setattr(Task, "loss", broken)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss in epoch 0.*task 1 is NaN.*lower --lr"):
        train_nyuv2.main(["--data-root", nyu_one_unlabelled, "--out", str(tmp_path), *ARGS])


def test_data_check_reports_items_without_valid_target(nyu_one_unlabelled, capsys):
    check("nyuv2", nyu_one_unlabelled)  # no MalformedDatasetError: reported, not rejected
    out = capsys.readouterr().out
    assert "1 item(s) without any valid segmentation pixel" in out and "label/0.npy" in out
