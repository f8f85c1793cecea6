"""FAMO (methods/famo.py) against hand-computed values and an independent transcription of the official code,
Cranial-XIX/FAMO ``methods/weight_methods.py`` class ``FAMO`` (lines 106-144) as its trainers call it
(``experiments/nyuv2/trainer.py`` lines 133-155: backward, ``optimizer.step()``, the same batch's losses under
``torch.no_grad()``, ``update``)."""
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.famo import FAMO
from tests.helpers import TinyMultiTask, make_batch

F64 = dict(dtype=torch.float64)
# D = L + 1e-8 (weight_methods.py line 130): m_k ∝ z_k / D_k, so against hand values computed without the 1e-8, m_k
# moves by −ε/L_k + Σ_j m_j ε/L_j: ≤ 1e-8 relative for losses ≥ 1 (measured 6e-9), and m @ rows (terms of one sign)
# alike
HAND = dict(rtol=2e-8, atol=0)
# float64 against float64 by another route (a backward of Σ z log D / c against one of Σ m L; torch's Adam against
# the written-out step; a union batch against two halves): a few roundings per quantity, carried over five steps:
# measured ≤ 1.2e-16 absolute on values ≤ 0.6; atol 1e-14
ROUND_OFF = dict(rtol=1e-13, atol=1e-14)


def linear_problem(rows, values):
    """θ = 0 and L_k = g_kᵀθ + b_k: ∇_θ L_k = g_k and L_k = b_k exactly."""
    theta = nn.Parameter(torch.zeros(rows.shape[1], **F64))
    return theta, lambda: torch.stack([(row * theta).sum() + b for row, b in zip(rows, values)])


def test_one_step_and_update_by_hand():
    """ξ = 0: z = (½, ½); L = (1, 4): c = ½/1 + ½/4 = 0.625, m = (0.5, 0.125)/0.625 = (0.8, 0.2) (lines 129-132).
    After the step the same batch's losses are (0.5, 4/e): δ = (ln 2, 1), the gradient z ⊙ (δ − zᵀδ) =
    ((ln 2 − 1)/4, (1 − ln 2)/4) (lines 136-141) and Adam's first step (lr 0.025, ξ = 0 so no decay) moves ξ by
    −0.025 · g / (|g| + 1e-8)."""
    rows = torch.tensor([[3.0, 4.0], [0.0, 1.0]], **F64)
    theta, losses = linear_problem(rows, [1.0, 4.0])
    method = FAMO(2)
    info = method.backward(losses(), [theta])
    m = torch.tensor([0.8, 0.2], **F64)
    torch.testing.assert_close(info["weights"], m, **HAND)
    torch.testing.assert_close(theta.grad, m @ rows, **HAND)
    torch.testing.assert_close(info["z"], torch.tensor([0.5, 0.5], **F64), rtol=0, atol=0)  # softmax(0, 0): exact
    method.update(torch.tensor([0.5, 4.0 / math.e], **F64))
    g = (1 - math.log(2)) / 4
    step = 0.025 * g / (g + 1e-8)
    # the hand g omits D's 1e-8 (g off by 1.4e-9, which the first step g/(|g| + 1e-8) damps to 2.4e-15 relative), and
    # ~10 float64 roundings in the written-out Adam step: ≤ 5e-15, 1e-13
    torch.testing.assert_close(method.logits, torch.tensor([step, -step], **F64), rtol=1e-13, atol=0)
    assert method.previous_losses is None


class OfficialFAMO:
    """A transcription of weight_methods.py lines 109-144 (float64 here; the official ξ is float32)."""

    def __init__(self, n_tasks, gamma=0.001, w_lr=0.025):
        self.min_losses = torch.zeros(n_tasks, **F64)
        self.w = torch.tensor([0.0] * n_tasks, requires_grad=True, **F64)
        self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)

    def get_weighted_loss(self, losses):
        self.prev_loss = losses
        z = F.softmax(self.w, -1)
        D = losses - self.min_losses + 1e-8
        c = (z / D).sum().detach()
        return (D.log() * z / c).sum(), z

    def update(self, curr_loss):
        delta = (self.prev_loss - self.min_losses + 1e-8).log() - (curr_loss - self.min_losses + 1e-8).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta.detach())[0]
        self.w_opt.zero_grad()
        self.w.grad = d
        self.w_opt.step()


@pytest.mark.parametrize("gamma", [0.001, 0.01])
def test_five_steps_match_the_official_transcription(gamma):
    """Five SGD steps on fresh batches, each followed by the same batch's losses after the step (``after_step``):
    every parameter's gradient, the weights m, z and ξ equal the transcription's; m and z sum to 1 at every step."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    method, official = FAMO(3, gamma=gamma), OfficialFAMO(3, gamma=gamma)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, reference))
    for step in range(5):
        x, ys = make_batch(seed=step)
        batch = (x.double(), [y.double() for y in ys])
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        losses = reference.losses(batch)
        loss, z = official.get_weighted_loss(losses)
        loss.backward()
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, **ROUND_OFF)
        gaps = losses.detach() + 1e-8
        torch.testing.assert_close(info["weights"], z.detach() / gaps / (z.detach() / gaps).sum(), **ROUND_OFF)
        torch.testing.assert_close(info["z"], z.detach(), **ROUND_OFF)
        for key in ("weights", "z"):
            # on the simplex: K = 3 quotients (½ ulp each) and 2 additions: ≤ 2.5 eps, 1e-15 + 1e-15 ≈ 9 eps
            torch.testing.assert_close(info[key].sum().item(), 1.0, rtol=1e-15, atol=1e-15)
        opt.step()
        ref_opt.step()
        method.after_step(model.losses, batch)
        with torch.no_grad():
            official.update(reference.losses(batch))
        torch.testing.assert_close(method.logits, official.w.detach(), **ROUND_OFF)
    assert not torch.allclose(method.logits, torch.zeros(3, **F64))  # it learned


def test_max_norm_clips_the_shared_gradient_as_famo_py():
    """max_norm=1 (famo.py lines 67-69: clip_grad_norm_(shared_parameters, 1.0) after the backward); the default
    (0) leaves it, as the experiments' clip before the backward does (weight_methods.py lines 77-80)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [50 * y.double() for y in ys])  # large losses, a shared gradient of norm ≫ 1
    grads = {}
    for max_norm in (0.0, 1.0):
        net = copy.deepcopy(model)
        FAMO(3, max_norm=max_norm).backward(net.losses(batch), net.shared_parameters(), net.task_specific_parameters())
        grads[max_norm] = [p.grad.clone() for p in net.shared_parameters()]
    norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads[0.0]]))
    assert norm > 1
    for clipped, raw in zip(grads[1.0], grads[0.0]):
        torch.testing.assert_close(clipped, raw / (norm + 1e-6), **ROUND_OFF)  # torch's clip coefficient


def test_accumulated_micro_batches_equal_one_backward():
    """Two halves (each mean loss / 2): the multipliers of the union's summed losses, the same update and after-step
    learning as one backward on the union (float64 summation order only)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    twin = copy.deepcopy(model)
    x, ys = make_batch(n=16)
    x, ys = x.double(), [y.double() for y in ys]
    whole, parts = FAMO(3), FAMO(3)
    expected = whole.backward(model.losses((x, ys)), model.shared_parameters(), model.task_specific_parameters())
    for half in (slice(0, 8), slice(8, 16)):
        parts.accumulate(twin.losses((x[half], [y[half] for y in ys])) / 2, twin.shared_parameters(),
                         twin.task_specific_parameters())
    got = parts.backward_accumulated()
    assert got.keys() == expected.keys()
    torch.testing.assert_close(got["weights"], expected["weights"], **ROUND_OFF)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **ROUND_OFF)
    after = torch.tensor([0.5, 0.6, 0.7], **F64)
    whole.update(after)
    parts.update(after)
    torch.testing.assert_close(parts.logits, whole.logits, **ROUND_OFF)


def test_resume_between_the_step_and_the_update_is_bit_exact():
    """ξ, Adam's moments and step count, and the losses awaiting ``after_step`` are the state: restored through
    torch.save between backward and after_step, the update and the next step are equal bit for bit."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = FAMO(3)
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        method.after_step(model.losses, batch)
    model.zero_grad(set_to_none=True)
    method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = FAMO(3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    twin = copy.deepcopy(model)
    results = []
    for m, net in ((method, model), (restored, twin)):
        m.after_step(net.losses, batch)
        net.zero_grad(set_to_none=True)
        info = m.backward(net.losses(batch), net.shared_parameters(), net.task_specific_parameters())
        results.append(torch.cat([m.logits, info["weights"]] + [p.grad.reshape(-1) for p in net.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)  # same state, same operations


def test_declarations_and_refusals():
    assert FAMO.needs_after_step and not FAMO.has_meta_update and FAMO.in_paper is False
    assert FAMO.uses_main_task is False
    rows = torch.tensor([[3.0, 4.0], [0.0, 1.0]], **F64)
    method = FAMO(2)
    with pytest.raises(RuntimeError, match="call backward"):
        method.update(torch.tensor([1.0, 1.0], **F64))
    theta, losses = linear_problem(rows, [1.0, -0.5])
    with pytest.raises(ValueError, match="task 1"):
        method.backward(losses(), [theta])
    theta, losses = linear_problem(rows, [1.0, 0.5])
    method.backward(losses(), [theta])
    with pytest.raises(FloatingPointError, match="after the step"):
        method.update(torch.tensor([1.0, float("nan")], **F64))
    with pytest.raises(ValueError, match="gamma"):
        FAMO(2, gamma=-1.0)
