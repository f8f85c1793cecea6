"""The loop's hooks for methods (issue 32, "what the loop must give them"), with a stand-in method registered for the
test only: its own meta-update interval (``meta_interval``, recorded beside ``--meta-every``), the task-specific
parameters in ``meta_update``, the model optimiser (``bind_optimizer``), an after-step hook (``needs_after_step``)
and an end-of-epoch hook with the epoch's mean losses, epochs of the data rather than evaluation rounds (also across
a ``--resume``); and the registry's ``in_paper`` declaration in the plan and the tables. The paper's nine methods
declare none of the hooks: that their results stay bit-identical was checked by running the scripts before and
after (see the closing note of the change), not here. Cost: a few toy runs of 12 steps (~1 s each)."""
from __future__ import annotations

import json
import os

import pytest
import torch

import methods
from experiments.orchestration import plan, run_all
from experiments.training.benchmarks import ToyBenchmark
from experiments.training.loop import TrainConfig, train
from experiments.training.models import SharedLinear
from methods.equal import Equal


class Hooked(Equal):
    """Linear scalarisation that records every hook the loop calls."""

    label = "Hooked"
    in_paper = False
    meta_interval = 4
    needs_after_step = True
    calls: list = []

    def bind_optimizer(self, optimizer):
        Hooked.calls.append(("bind", optimizer.param_groups[0]["lr"]))

    def backward(self, losses, shared_parameters, task_specific_parameters=(), representation=None):
        Hooked.calls.append(("backward", self.step, losses.detach().clone()))
        return super().backward(losses, shared_parameters, task_specific_parameters, representation)

    def after_step(self, compute_losses, batch):
        with torch.no_grad():
            Hooked.calls.append(("after_step", self.step, compute_losses(batch)))

    def meta_update(self, compute_losses, train_batch, val_batch, shared_parameters, task_specific_parameters=()):
        Hooked.calls.append(("meta", self.step, len(list(task_specific_parameters))))
        return {}

    def end_of_epoch(self, mean_losses):
        Hooked.calls.append(("epoch", self.step, mean_losses))


@pytest.fixture
def hooked(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "hooked", Hooked)
    monkeypatch.setattr(run_all, "METHOD_NAMES", (*methods.METHOD_NAMES, "hooked"))
    monkeypatch.setattr(plan, "METHOD_NAMES", (*methods.METHOD_NAMES, "hooked"))
    Hooked.calls = []
    return Hooked


def toy(**kwargs):
    # 24 samples in batches of 8: 3 steps per epoch; rounds of 2 epochs (6 steps), 4 epochs
    return ToyBenchmark("cpu", seed=0, epochs=4, eval_every=2, n_train=24, batch_size=8, meta_val_size=8, **kwargs)


def calls(kind):
    return [c[1:] for c in Hooked.calls if c[0] == kind]


def test_the_loop_calls_each_hook(hooked, tmp_path, monkeypatch):
    build = ToyBenchmark.build_model

    def with_heads(self):  # the toy's model has no heads: give it three (unused by its losses: legal, no .grad)
        model = build(self)
        model.heads = torch.nn.ModuleDict({t.name: torch.nn.Linear(1, 1) for t in self.tasks})
        return model
    monkeypatch.setattr(ToyBenchmark, "build_model", with_heads)
    run_dir = train(toy(), TrainConfig(method="hooked", main_task="main", lr=1e-2, meta_every=25, out=str(tmp_path)))
    assert Hooked.calls[0] == ("bind", 1e-2)  # before any step
    steps = [s for s, _ in calls("backward")]
    assert steps == list(range(12))
    assert [s for s, _ in calls("after_step")] == list(range(1, 13))  # after each optimiser step
    before, after = calls("backward")[5][1], calls("after_step")[5][1]  # the same batch, before and after the step
    assert not torch.equal(before, after)
    assert calls("meta") == [(4, 6), (8, 6), (12, 6)]  # every meta_interval = 4 steps, with the heads' 6 tensors
    epochs = calls("epoch")
    assert [s for s, _ in epochs] == [3, 6, 9, 12]  # every epoch (3 steps), not every round (6 steps)
    for epoch, (_, means) in enumerate(epochs):
        losses = torch.stack([l for _, l in calls("backward")[3 * epoch:3 * epoch + 3]])
        assert means.dtype == torch.float64
        # the mean of the recorded (float32) losses in float64, against the loop's, which sums them in a float32
        # accumulator: 2 roundings of ≤ 2⁻²⁴ of a sum of positive losses, so ≤ 2⁻²³ relative; 2⁻²² leaves a factor 2
        torch.testing.assert_close(means, losses.double().mean(0), rtol=2.0 ** -22, atol=0)
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["meta_every"] == 25 and config["meta_interval"] == 4 and config["identity"]["meta_every"] == 25


def test_meta_before_step_learns_on_the_step_batch_before_the_step(hooked, tmp_path, monkeypatch):
    """``meta_before_step`` (Auto-λ's order): meta_update on steps 4, 8, 12 is called before that step's backward,
    with that step's own training batch as L_T (the batch whose losses the backward then sees)."""
    seen = []

    def meta_update(self, compute_losses, train_batch, val_batch, shared_parameters, task_specific_parameters=()):
        with torch.no_grad():
            seen.append((self.step, compute_losses(train_batch)))
        Hooked.calls.append(("meta", self.step, 0))
        return {}
    monkeypatch.setattr(Hooked, "meta_before_step", True, raising=False)
    monkeypatch.setattr(Hooked, "meta_update", meta_update)
    train(toy(), TrainConfig(method="hooked", main_task="main", lr=1e-2, meta_every=25, out=str(tmp_path)))
    kinds = [c[0] for c in Hooked.calls if c[0] in ("meta", "backward")]
    assert [i for i, k in enumerate(kinds) if k == "meta"] == [3, 8, 13]  # before backward of steps 4, 8, 12 (1-based)
    backward_losses = calls("backward")
    for step, losses in seen:  # step = steps taken so far: the batch of the next backward, at the same parameters
        torch.testing.assert_close(losses, backward_losses[step][1], rtol=0, atol=0)  # same batch, same model: exact


def test_epochs_across_rounds_survive_a_resume(hooked, tmp_path, monkeypatch):
    """Epochs of 4 steps in rounds of 6: the epoch that a round boundary splits is checkpointed with the run, so
    a run stopped after its first round and resumed calls ``end_of_epoch`` with the same means as one without."""
    monkeypatch.setattr(ToyBenchmark, "epoch_steps", lambda self: 4)
    config = dict(method="hooked", main_task="main", lr=1e-2, meta_every=25)
    train(toy(), TrainConfig(**config, out=str(tmp_path / "whole")))
    whole = calls("epoch")
    Hooked.calls = []
    train(toy(), TrainConfig(**config, out=str(tmp_path / "parts"), stop_after=1))
    train(toy(), TrainConfig(**config, out=str(tmp_path / "parts"), resume=True))
    parts = calls("epoch")
    assert [s for s, _ in whole] == [s for s, _ in parts] == [4, 8, 12]
    for (_, a), (_, b) in zip(whole, parts):  # exact: the checkpoint keeps the epoch's float sums as they were
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_method_not_in_the_paper_runs_only_when_asked(hooked):
    def runs(methods_flag):
        args = run_all.parser().parse_args(["--benchmarks", "nyuv2", "--seeds", "0"]
                                           + (["--methods", methods_flag] if methods_flag else []))
        return "\n".join(run_all.build_commands(args, list_only=True)[0])

    assert "--method hooked" not in runs(None)
    assert "--method hooked" in runs("all") and "--method hooked" in runs("hooked")
    assert runs(None) == runs(" ".join(methods.paper_methods()))
    rows = {row.folder: row for row in plan.method_rows()}
    assert rows["hooked"].label == "Hooked (not in the paper)" and rows["hooked"].paper_row is None
    nine = ("stl", "equal", "pcgrad", "cagrad", "nashmtl", "gcs", "olaux", "auxilearn", "auxinash")
    assert all(methods.METHODS[name].in_paper for name in nine)
    for name in methods.METHOD_NAMES:
        in_paper = methods.METHODS[name].in_paper
        assert (rows[name].paper_row is not None) == in_paper and rows[name].label.endswith(plan.NOT_IN_PAPER) != in_paper


def test_the_loop_passes_the_declared_last_shared_layer_only_when_asked(hooked, tmp_path, monkeypatch):
    """``needs_last_shared_parameters``: the loop passes ``model.last_shared_parameters()`` (the very tensors) to
    such a method's ``backward`` and nothing to the others (whose ``backward`` would reject the keyword)."""
    seen = []

    def backward(self, losses, shared_parameters, task_specific_parameters=(), representation=None,
                 last_shared_parameters=None):
        seen.append(last_shared_parameters)
        return Equal.backward(self, losses, shared_parameters, task_specific_parameters, representation)
    monkeypatch.setattr(Hooked, "backward", backward)
    monkeypatch.setattr(Hooked, "needs_last_shared_parameters", True, raising=False)
    declared = []
    last = SharedLinear.last_shared_parameters

    def spy(model):
        declared.append(last(model))
        return declared[-1]
    monkeypatch.setattr(SharedLinear, "last_shared_parameters", spy)
    train(toy(), TrainConfig(method="hooked", main_task="main", lr=1e-2, meta_every=25, out=str(tmp_path / "a")))
    assert len(seen) == len(declared) == 12 and all(s is d for s, d in zip(seen, declared))
    assert all(d[0] is declared[0][0] for d in declared)  # the model's own W on every step
    monkeypatch.setattr(Hooked, "needs_last_shared_parameters", False, raising=False)
    seen.clear()
    train(toy(), TrainConfig(method="hooked", main_task="main", lr=1e-2, meta_every=25, out=str(tmp_path / "b")))
    assert seen == [None] * 12


def test_gradnorm_on_the_last_shared_layer_runs_in_the_loop(tmp_path):
    """``--gradnorm-layer last`` (the paper's form) through the loop: the toy's W is its last shared layer."""
    run_dir = train(toy(), TrainConfig(method="gradnorm", main_task="main", lr=1e-2, meta_every=25,
                                       method_kwargs={"layer": "last"}, out=str(tmp_path)))
    assert json.load(open(os.path.join(run_dir, "status.json")))["finished"]


@pytest.mark.parametrize("case", ["segnet", "wrn-28-2", "multi-lenet", "shared_linear", "speech_cnn"])
def test_every_model_declares_its_last_shared_layer(case):
    """``last_shared_parameters()``: non-empty, members of ``shared_parameters()`` (by identity), each reached by
    every task's loss (a layer between the input and every head)."""
    from experiments.training.benchmarks.speech_commands import WORDS, SpeechCNN
    from tests.test_speed_paths import MODEL_CASES, model_losses
    cases = dict(MODEL_CASES, speech_cnn=lambda: (lambda m: (m, torch.randn(2, 1, 32, 32), m.encode))(
        SpeechCNN(WORDS[:2], width=0.25)))
    model, x, encode = cases[case]()
    last = model.last_shared_parameters()
    shared = {id(p) for p in model.shared_parameters()}
    assert last and all(id(p) in shared for p in last)
    losses, _ = model_losses(model, x, encode)
    for loss in losses:
        grads = torch.autograd.grad(loss, last, retain_graph=True, allow_unused=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
