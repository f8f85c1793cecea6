"""MetaBalance (methods/metabalance.py) against hand-computed values and an independent transcription of the official
optimiser, facebookresearch/MetaBalance ``metabalance.py`` ``balance_GradMagnitudes`` (lines 60-101) as called by
``example_main_metabalance.py`` (lines 114-162)."""
import copy
import io

import pytest
import torch
from torch import nn

from methods.metabalance import MetaBalance
from tests.helpers import TinyMultiTask, make_batch

# by hand: not exact, as 1 − β = 0.09999999999999998 ≠ 0.1, so the averages carry rounding, which the ratios
# m_main / m_k mostly cancel: ≤ ~10 roundings of numbers ≤ 10 (measured: equal or 1 ulp): 1e-14 relative
EXACT = dict(rtol=1e-14, atol=1e-15)
# another route: per-tensor norms by torch.linalg.vector_norm against torch.norm, and Σ_k mult_k g_k by a matmul
# against the transcription's elementwise sums (P ≤ 24 terms per norm, ≤ P eps each): measured ≤ 4e-15 relative,
# 4.4e-16 absolute
ROUND_OFF = dict(rtol=1e-13, atol=1e-14)


def linear_losses(theta, rows):
    """L_k = g_kᵀθ: ∇_θ L_k = g_k exactly."""
    return torch.stack([(row * theta).sum() for row in rows])


def test_one_step_by_hand():
    """‖g_0‖ = 5, ‖g_1‖ = 10, ‖g_2‖ = 1; after one step the averages are 0.1·‖g_k‖ (metabalance.py:75-82, from 0,
    no bias correction), so the multipliers are 0.7·5/10 + 0.3 = 0.65 and 0.7·5/1 + 0.3 = 3.8 (:86)."""
    rows = torch.tensor([[3.0, 4.0], [0.0, 10.0], [1.0, 0.0]], dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    info = MetaBalance(3).backward(linear_losses(theta, rows), [theta])
    torch.testing.assert_close(theta.grad, torch.tensor([3.0 + 3.8, 4.0 + 6.5], dtype=torch.float64), **EXACT)
    torch.testing.assert_close(info["weights"], torch.tensor([1.0, 0.65, 3.8], dtype=torch.float64), **EXACT)


def test_moving_average_over_two_steps_by_hand():
    """Step 2 with ‖g_1‖ changed from 10 to 20: m_1 = 0.9·1 + 0.1·20 = 2.9, m_0 = 0.9·0.5 + 0.1·5 = 0.95, so the
    multiplier is 0.7·0.95/2.9 + 0.3 (metabalance.py:82, :86)."""
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    method = MetaBalance(2)
    for scale in (1.0, 2.0):
        rows = torch.tensor([[3.0, 4.0], [0.0, 10.0 * scale]], dtype=torch.float64)
        theta.grad = None
        info = method.backward(linear_losses(theta, rows), [theta])
    multiplier = 0.7 * 0.95 / 2.9 + 0.3
    torch.testing.assert_close(theta.grad, torch.tensor([3.0, 4.0 + 20.0 * multiplier], dtype=torch.float64), **EXACT)
    torch.testing.assert_close(info["weights"][1].item(), multiplier, **EXACT)


@pytest.mark.parametrize("strategy, expected", [("both", [1.0, 0.65, 3.8]), ("reduce", [1.0, 0.65, 1.0]),
                                                ("enlarge", [1.0, 1.0, 3.8])])
def test_strategies_by_hand(strategy, expected):
    """The paper's strategies: only auxiliaries larger (reduce) / smaller (enlarge) than the main task's moving
    average are rescaled; 'both' is the official code's (metabalance.py:86)."""
    rows = torch.tensor([[3.0, 4.0], [0.0, 10.0], [1.0, 0.0]], dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    info = MetaBalance(3, strategy=strategy).backward(linear_losses(theta, rows), [theta])
    torch.testing.assert_close(info["weights"], torch.tensor(expected, dtype=torch.float64), **EXACT)
    torch.testing.assert_close(theta.grad, torch.tensor(expected, dtype=torch.float64) @ rows, **EXACT)


def test_tensors_a_task_does_not_reach_by_hand():
    """θ₂ reached by auxiliary 1 only: the main average there is 0, so the formula gives 1 − r = 0.3
    (metabalance.py:86 with m_main = 0); auxiliary 2 never reaches θ₁ (average 0): a zero contribution, not the
    official 0·0/0 = NaN. Effective weight of 1: ‖(0.7·5/5 + 0.3)·g₁ on θ₁, 0.3·h₁ on θ₂‖ / ‖(g₁, h₁)‖."""
    theta1 = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    theta2 = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    g0, g1 = torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 5.0], dtype=torch.float64)
    h1, h2 = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    losses = torch.stack([(g0 * theta1).sum(), (g1 * theta1).sum() + (h1 * theta2).sum(), (h2 * theta2).sum()])
    info = MetaBalance(3).backward(losses, [theta1, theta2])
    # on θ₂ the main average is 0 for both auxiliaries: multiplier 1 − r = 0.3 for each
    torch.testing.assert_close(theta1.grad, g0 + g1, **EXACT)
    torch.testing.assert_close(theta2.grad, 0.3 * h1 + 0.3 * h2, **EXACT)
    weight1 = ((25.0 + 0.09 * 4.0) / (25.0 + 4.0)) ** 0.5
    torch.testing.assert_close(info["weights"], torch.tensor([1.0, weight1, 0.3], dtype=torch.float64), **EXACT)
    assert torch.isfinite(info["multipliers"]).all()


def official_step(model, batch, state, main_task, relax=0.7, beta=0.9):
    """A transcription of metabalance.py:60-101 and example_main_metabalance.py:156-162 (main loss first):
    per shared tensor p, per loss in order, the moving average of ‖∇_p L‖ and the rescaled gradient, summed; the
    heads get ∇ of the plain sum of the losses. Returns the shared and head gradients and, per task, the norm of
    its rescaled shared gradient over that of its raw one (our definition of the reported weight)."""
    shared, heads = model.shared_parameters(), model.task_specific_parameters()
    losses = model.losses(batch)
    order = [main_task] + [k for k in range(len(losses)) if k != main_task]
    total = [torch.zeros_like(p) for p in shared]
    ratios = {}
    for k in order:
        grads = torch.autograd.grad(losses[k], shared, retain_graph=True)
        rescaled_sq, raw_sq = 0.0, 0.0
        for i, (p, g) in enumerate(zip(shared, grads)):
            norms = state.setdefault(i, [0.0] * len(losses))
            norms[k] = norms[k] * beta + (1 - beta) * torch.norm(g)
            new = (norms[main_task] * g / norms[k]) * relax + g * (1.0 - relax)
            total[i] += new
            rescaled_sq, raw_sq = rescaled_sq + (new**2).sum(), raw_sq + (g**2).sum()
        ratios[k] = (rescaled_sq / raw_sq).sqrt()
    head_grads = torch.autograd.grad(losses.sum(), heads)
    return total, list(head_grads), torch.stack([ratios[k] for k in range(len(losses))])


@pytest.mark.parametrize("main_task", [0, 2])
def test_three_steps_match_the_official_transcription(main_task):
    """Three SGD steps on fresh batches: the shared and head gradients and the weights equal the transcription's
    at every step (float64; the two sum the same terms in different orders: rounding only)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    method = MetaBalance(3, main_task=main_task)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, reference))
    state = {}
    for step in range(3):
        x, ys = make_batch(seed=step)
        batch = (x.double(), [y.double() for y in ys])
        opt.zero_grad(set_to_none=True)
        info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        shared, heads, weights = official_step(reference, batch, state, main_task)
        for p, g in zip(model.shared_parameters() + model.task_specific_parameters(), shared + heads):
            torch.testing.assert_close(p.grad, g, **ROUND_OFF)
        torch.testing.assert_close(info["weights"], weights, **ROUND_OFF)
        for p, g in zip(reference.shared_parameters() + reference.task_specific_parameters(), shared + heads):
            p.grad = g
        opt.step()
        ref_opt.step()


def test_representation_is_one_tensor():
    """gradient_space='representation': the multipliers come from the norms of ∇_h L_k (h the representation),
    and the combination Σ_k mult_k ∇_h L_k is back-propagated through the encoder."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    x, ys = x.double(), [y.double() for y in ys]
    h = model.shared(x)
    losses = torch.stack([((head(h) - y) ** 2).mean() for head, y in zip(model.heads, ys)])
    rows = torch.stack([torch.autograd.grad(losses[k], h, retain_graph=True)[0] for k in range(3)])
    norms = rows.flatten(1).norm(dim=1)
    mult = 0.7 * norms[0] / norms + 0.3
    expected = torch.autograd.grad(h, model.shared_parameters(), (mult[:, None, None] * rows).sum(0),
                                   retain_graph=True)
    info = MetaBalance(3, gradient_space="representation").backward(losses, model.shared_parameters(),
                                                                   model.task_specific_parameters(), representation=h)
    for p, e in zip(model.shared_parameters(), expected):
        torch.testing.assert_close(p.grad, e, **ROUND_OFF)
    # the norms over B·D = 96 terms (Gram diagonal against torch.norm): ≤ 96 eps ≈ 2e-14 relative each
    torch.testing.assert_close(info["weights"][1:], mult[1:], rtol=1e-13, atol=0)


def test_accumulated_micro_batches_equal_one_backward():
    """Two halves of a batch accumulated (each mean loss / 2) give the union batch's step (no BatchNorm in the
    tiny model; float64 summation order only)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    twin = copy.deepcopy(model)
    x, ys = make_batch(n=16)
    x, ys = x.double(), [y.double() for y in ys]
    whole, parts = MetaBalance(3), MetaBalance(3)
    whole.backward(model.losses((x, ys)), model.shared_parameters(), model.task_specific_parameters())
    for half in (slice(0, 8), slice(8, 16)):
        parts.accumulate(twin.losses((x[half], [y[half] for y in ys])) / 2, twin.shared_parameters(),
                         twin.task_specific_parameters())
    parts.backward_accumulated()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **ROUND_OFF)
    torch.testing.assert_close(whole.norm_averages, parts.norm_averages, rtol=1e-13, atol=0)  # norms of those


def test_resume_is_bit_exact():
    """The moving averages are the whole learned state: a method restored from state_dict (through torch.save)
    takes the same next step bit for bit."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = MetaBalance(3, main_task=1)
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = MetaBalance(3, main_task=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    twin = copy.deepcopy(model)
    grads = []
    for m, net in ((method, model), (restored, twin)):
        net.zero_grad(set_to_none=True)
        m.backward(net.losses(batch), net.shared_parameters(), net.task_specific_parameters())
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)  # same state, same operations


def test_changing_the_parameter_list_is_refused():
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = MetaBalance(3)
    method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    with pytest.raises(ValueError, match="same shared_parameters"):
        method.backward(model.losses(batch), model.shared_parameters()[:1], model.task_specific_parameters())


@pytest.mark.parametrize("bad", [dict(relax_factor=1.0), dict(beta=1.0), dict(relax_factor=-0.1),
                                 dict(strategy="all")])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        MetaBalance(3, **bad)
