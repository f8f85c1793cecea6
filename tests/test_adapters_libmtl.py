"""Our methods as LibMTL weightings (``methods/adapters/libmtl.py``), against a stand-in of LibMTL's contract.

LibMTL cannot be installed here (its PyPI release, 1.1.5, predates Nash-MTL and needs an old torchvision; its current
code imports torch_geometric and puts the model on ``cuda:0``), so this file reproduces what the adapter relies on,
from median-research-group/LibMTL at commit 4336804 (2025-05-14):

- ``AbsWeighting`` (``LibMTL/weighting/abstract_weighting.py`` lines 6-15: an ``nn.Module`` with ``init_param``);
- ``AbsArchitecture`` / ``HPS`` (``LibMTL/architecture/abstract_arch.py`` lines 20-65, ``HPS.py`` lines 15-17:
  ``task_name``, ``task_num``, ``rep_grad``, ``device``, ``decoders``, ``encoder``, ``get_share_params`` returning
  the encoder's parameters as a generator, ``forward`` returning ``{task: decoder(rep)}``);
- the trainer (``LibMTL/trainer.py``): the model class ``MTLmodel(architecture, weighting)`` built then
  ``init_param()`` (lines 111-114), one optimiser over ``model.parameters()`` (line 144), the loss tensor written in
  place (``_compute_loss`` lines 178-185, through ``AbsLoss._update_loss`` of ``LibMTL/loss.py`` lines 25-29, which
  records every value), ``forward4loss`` (lines 199-218), the epoch loop (lines 250-290: ``model.epoch``,
  ``zero_grad(set_to_none=False)``, ``w = model.backward(train_losses, **weight_args)``, ``batch_weight``,
  ``optimizer.step()``, ``train_loss_buffer[:, epoch]`` from the recorded losses).

The run against LibMTL's own code (its trainer with its Nash_MTL beside ours) was done once during development and
is reported in methods/README.md. Float64. The stand-in trainer and our loop run the same method code on the same
numbers in the same order (the adapter's ``backward`` calls ours on the trainer's loss tensor, whose values and
gradients are those of our stacked losses; one Adam over the same parameters; LibMTL's epoch means
Σ_b L_b·16 / Σ_b 16 equal our Σ_b L_b / 2 exactly, the batch sizes being powers of 2), so they agree bit for bit:
no solver tolerance enters, since both take the same solver path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from methods import METHOD_NAMES, get_method
from methods.adapters.libmtl import attach, weighting_class

TASKS = ["a", "b", "c"]


# -- the stand-in ---------------------------------------------------------------------------------------------------
class AbsWeighting(nn.Module):  # abstract_weighting.py lines 6-15
    def __init__(self):
        super().__init__()

    def init_param(self):
        pass


class HPS(nn.Module):  # abstract_arch.py lines 20-65 with HPS.py lines 15-17
    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs):
        super().__init__()
        self.task_name, self.task_num = task_name, len(task_name)
        self.encoder_class, self.decoders = encoder_class, decoders
        self.rep_grad, self.multi_input, self.device, self.kwargs = rep_grad, multi_input, device, kwargs
        self.encoder = self.encoder_class()

    def forward(self, inputs, task_name=None):
        rep = self.encoder(inputs)
        return {task: self.decoders[task](rep) for task in self.task_name}

    def get_share_params(self):
        return self.encoder.parameters()

    def zero_grad_share_params(self):
        self.encoder.zero_grad(set_to_none=False)


class MSELoss:  # loss.py lines 6-38 (AbsLoss: record, bs, _update_loss)
    def __init__(self):
        self.record, self.bs = [], []

    def compute_loss(self, pred, gt):
        return ((pred - gt) ** 2).mean()

    def _update_loss(self, pred, gt):
        loss = self.compute_loss(pred, gt)
        self.record.append(loss.item())
        self.bs.append(pred.size()[0])
        return loss

    def _average_loss(self):
        return (np.array(self.record) * np.array(self.bs)).sum() / np.array(self.bs).sum()


class Meter:
    def __init__(self):
        self.losses = {task: MSELoss() for task in TASKS}


class Trainer(nn.Module):  # trainer.py lines 79-218 and 229-290, single input, no meter display / test
    def __init__(self, weighting, encoder_class, decoders, rep_grad=False, lr=1e-2, weight_args=None):
        super().__init__()
        self.device = torch.device("cpu")  # LibMTL: cuda:0 (line 84)
        self.task_name, self.task_num = list(TASKS), len(TASKS)
        self.multi_input, self.rep_grad = False, rep_grad
        self.kwargs = {"weight_args": weight_args or {}}
        self.meter = Meter()

        class MTLmodel(HPS, weighting):
            def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, kwargs):
                super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
                self.init_param()

        self.model = MTLmodel(self.task_name, encoder_class, decoders, rep_grad, False, self.device, {})
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def process_preds(self, preds, task_name=None):
        return preds

    def _compute_loss(self, preds, gts, task_name=None):
        train_losses = torch.zeros(self.task_num, dtype=torch.float64).to(self.device)
        for tn, task in enumerate(self.task_name):
            train_losses[tn] = self.meter.losses[task]._update_loss(preds[task], gts[task])
        return train_losses

    def forward4loss(self, model, inputs, gts, return_preds=False):
        preds = self.process_preds(model(inputs))
        losses = self._compute_loss(preds, gts)
        return (losses, preds) if return_preds else losses

    def train_singlelevel(self, batches, epochs):
        self.batch_weight = np.zeros([self.task_num, epochs, len(batches)])
        self.model.train_loss_buffer = np.zeros([self.task_num, epochs])
        self.model.epochs = epochs
        for epoch in range(epochs):
            self.model.epoch = epoch
            self.model.train()
            for batch_index, (train_inputs, train_gts) in enumerate(batches):
                train_losses, train_preds = self.forward4loss(self.model, train_inputs, train_gts, return_preds=True)
                self.optimizer.zero_grad(set_to_none=False)
                w = self.model.backward(train_losses, **self.kwargs["weight_args"])
                if w is not None:
                    self.batch_weight[:, epoch, batch_index] = w
                self.optimizer.step()
            self.model.train_loss_buffer[:, epoch] = [self.meter.losses[t]._average_loss() for t in TASKS]
            for loss in self.meter.losses.values():
                loss.record, loss.bs = [], []


# -- the model and data ---------------------------------------------------------------------------------------------
def encoder_class():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6))


def decoders():
    return nn.ModuleDict({task: nn.Linear(6, 1) for task in TASKS})


def batches(n, seed):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 4, generator=generator, dtype=torch.float64)
        out.append((x, {t: torch.sin(x[:, :1] * s) + 0.1 * torch.randn(16, 1, generator=generator, dtype=torch.float64)
                        for t, s in zip(TASKS, (1.0, 2.0, -1.0))}))
    return out


def make_trainer(name, seed=0, **settings):
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return Trainer(weighting_class(name, abs_weighting=AbsWeighting, **settings), encoder_class, decoders())
    finally:
        torch.set_default_dtype(previous)


def same(a, b):
    """Equal bit for bit (the module docstring says why), compared in float64 (exact for float32 state)."""
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return a.shape == b.shape and torch.equal(a, b)


# -- tests ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_trains_through_the_libmtl_trainer_and_saves_its_state(name):
    trainer = make_trainer(name)
    method = trainer.model.ours_method
    if method.meta_before_step:
        with pytest.raises(ValueError, match="meta_before_step"):
            attach(trainer, batches(2, seed=9), meta_every=2)
        return
    attach(trainer, batches(2, seed=9), meta_every=2)
    before = [p.detach().clone() for p in trainer.model.get_share_params()]
    trainer.train_singlelevel(batches(2, seed=1), epochs=2)
    assert np.all(np.isfinite(trainer.batch_weight))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.get_share_params()))
    assert method.step == 4
    state = trainer.model.state_dict()
    assert state["_extra_state"]["method"] == name
    other = make_trainer(name, seed=1)
    other.model.load_state_dict(state)
    assert same_state(other.model.ours_method.state_dict(), method.state_dict())


def same_state(a, b) -> bool:
    if isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and torch.equal(a.to(b.device, b.dtype), b)
    if isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in b)
    if isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name,settings", [("nashmtl", {}), ("auxinash", {"meta_lr": 0.5}), ("cagrad", {}),
                                           ("dwa", {})])
def test_libmtl_trainer_equals_our_loop(name, settings):
    """Two epochs of two Adam steps, a meta-update every 2 steps: the stand-in trainer with the adapter against our
    own loop (``backward``, ``end_of_epoch`` from the epoch's mean losses, ``meta_update``) on the same start."""
    data, meta = batches(2, seed=1), batches(4, seed=9)
    trainer = make_trainer(name, **settings)
    attach(trainer, meta, meta_every=2)
    trainer.train_singlelevel(data, epochs=2)

    reference = make_trainer(name, **settings)  # the same initial model; our loop drives it directly
    model = reference.model
    method = get_method(name, n_tasks=3, **settings)
    optimizer = torch.optim.Adam(list(model.parameters()), lr=1e-2)
    shared = list(model.encoder.parameters())
    specific = list(model.decoders.parameters())
    method.bind_optimizer(optimizer)

    def compute_losses(batch):
        x, gts = batch
        preds = model(x)
        return torch.stack([((preds[t] - gts[t]) ** 2).mean() for t in TASKS])

    metas = iter(meta * 2)
    epoch_means = None
    for epoch in range(2):
        sums = torch.zeros(3, dtype=torch.float64)
        if epoch_means is not None:  # the previous epoch's end, served at this epoch's first step
            method.end_of_epoch(epoch_means)
        for batch in data:
            losses = compute_losses(batch)
            sums += losses.detach()
            optimizer.zero_grad()
            method.backward(losses, shared, specific)
            optimizer.step()
            if method.needs_after_step:
                method.after_step(compute_losses, batch)
            if method.has_meta_update and method.step % 2 == 0:
                method.meta_update(compute_losses, batch, next(metas), shared, task_specific_parameters=specific)
        epoch_means = sums / len(data)
    for a, b in zip(trainer.model.parameters(), model.parameters()):
        assert same(a, b), name
    for key, value in method.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert same(trainer.model.ours_method.state_dict()[key], value), key
    if name == "auxinash":
        assert not torch.allclose(method.p, torch.ones(3, dtype=torch.float64), atol=1e-3)


def test_rep_grad_is_refused():
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        trainer = Trainer(weighting_class("nashmtl", abs_weighting=AbsWeighting), encoder_class, decoders(),
                          rep_grad=True)
    finally:
        torch.set_default_dtype(previous)
    with pytest.raises(ValueError, match="rep_grad"):
        trainer.train_singlelevel(batches(1, seed=1), epochs=1)


def test_unknown_setting_is_named_at_class_creation():
    with pytest.raises(TypeError):
        weighting_class("nashmtl", abs_weighting=AbsWeighting, no_such_setting=1)
