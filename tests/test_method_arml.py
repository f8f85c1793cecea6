"""ARML (methods/arml.py) against hand-computed values and an independent transcription of the official code,
bfshi/ARML_Auxiliary_Task_Reweighting ``SSL/lib/task_weighter.py`` (``forward`` lines 18-21, ``arml_weight_loss``
44-52, ``inject_grad_noise`` 28-32) and ``SSL/train.py`` (the iteration, lines 180-214)."""
import copy
import io

import pytest
import torch
from torch import nn

from methods.arml import ARML
from tests.helpers import TinyMultiTask, make_batch

# by hand: float64, a handful of operations on O(1) numbers (2·0.05 and the decimals are not exact in binary):
# ≤ ~10 roundings, 1e-14 relative (measured: equal or 1 ulp)
EXACT = dict(rtol=1e-14, atol=1e-15)
# another route (α's step from the Gram matrix against autograd's ‖·‖² gradient; a union batch against two halves):
# α moves by 2η·Gr, O(0.1), on α ≈ 1, so its rounding difference is ≤ 1-2 ulps; the model's gradients inherit it
# (and later steps' parameters): ~10 eps relative, and ~eps·Σ|terms| absolute on small components. Measured: equal
# bit for bit against the transcription, ≤ 1.1e-16 absolute for the halves
ROUND_OFF = dict(rtol=1e-13, atol=1e-14)


def linear_losses(theta, rows):
    """L_k = g_kᵀθ: ∇_θ L_k = g_k exactly."""
    return torch.stack([(row * theta).sum() for row in rows])


ROWS = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)


@pytest.mark.parametrize("lr, expected", [
    # residual g₀ − g₁ − g₂ = (0, −3); ∂/∂α₁ = −2 g₁ᵀ(0, −3) = 6, ∂/∂α₂ = 12 (task_weighter.py:48-51)
    (0.05, [1.0, 1.0 - 0.3 + 0.45, 1.0 - 0.6 + 0.45]),  # SGD: (0.7, 0.4); sum 1.1 → + (2 − 1.1)/2 (train.py:209)
    (0.5, [1.0, 2.5, 0.0]),  # SGD: (−2, −5); + (2 + 7)/2 → (2.5, −0.5); clamp at 0 (train.py:212)
])
def test_one_weight_step_by_hand(lr, expected):
    """interval 1: the first iteration is a weight iteration; the model takes no step (no .grad, train.py:193)."""
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    info = ARML(3, lr=lr, interval=1).backward(linear_losses(theta, ROWS), [theta])
    assert theta.grad is None
    torch.testing.assert_close(info["weights"], torch.tensor(expected, dtype=torch.float64), **EXACT)


def test_model_step_uses_the_weights_by_hand():
    """Off the weight iterations the update is g_main + Σ α_k g_k, heads included (task_weighter.py:18-21): with
    α = (1.15, 0.85) after the step above, main task 0."""
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    heads = [nn.Parameter(torch.ones(1, dtype=torch.float64)) for _ in range(3)]
    method = ARML(3, interval=2)

    def losses():
        return torch.stack([(row * theta).sum() + 0.5 * (h**2).sum() for row, h in zip(ROWS, heads)])
    info = method.backward(losses(), [theta], heads)  # iteration 1: α = 1
    torch.testing.assert_close(theta.grad, ROWS.sum(0), **EXACT)
    torch.testing.assert_close(info["weights"], torch.ones(3, dtype=torch.float64), **EXACT)
    theta.grad = None
    for h in heads:
        h.grad = None
    method.backward(losses(), [theta], heads)  # iteration 2: the weight step of test_one_weight_step_by_hand
    assert theta.grad is None and all(h.grad is None for h in heads)
    info = method.backward(losses(), [theta], heads)  # iteration 3
    alpha = torch.tensor([1.0, 1.15, 0.85], dtype=torch.float64)
    torch.testing.assert_close(info["weights"], alpha, **EXACT)
    torch.testing.assert_close(theta.grad, alpha @ ROWS, **EXACT)
    for h, a in zip(heads, alpha):
        torch.testing.assert_close(h.grad, a.reshape(1), **EXACT)


def official_run(model, batches, main_task, interval, lr=0.05):
    """A transcription of train.py:180-214 with task_weighter.py: per iteration, the loss L_main + Σ α L_aux and a
    model step (SGD here) unless iteration % interval == 0; then instead one SGD step of α on
    Σ_p ‖∇_p(L_main − Σ α L_aux)‖² over the shared parameters, α += (n − Σα)/n, clamp at 0. α is float64 here
    (a float32 nn.Parameter in the official code) to match the float64 model. Returns per iteration the model's
    gradients (None on weight iterations) and α."""
    shared, heads = model.shared_parameters(), model.task_specific_parameters()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    alpha = nn.Parameter(torch.ones(2, dtype=torch.float64))
    alpha_optimizer = torch.optim.SGD([alpha], lr=lr)
    aux = [k for k in range(3) if k != main_task]
    records = []
    for iteration, batch in enumerate(batches, start=1):
        losses = model.losses(batch)
        main_loss, aux_loss = losses[main_task], losses[aux]
        if iteration % interval != 0:
            optimizer.zero_grad()
            (main_loss + (aux_loss * alpha.detach()).sum()).backward()
            records.append(([p.grad.clone() for p in shared + heads], alpha.detach().clone()))
            optimizer.step()
        else:
            gap = torch.autograd.grad(main_loss - (aux_loss * alpha).sum(), shared, create_graph=True)
            weight_loss = sum(g.norm() ** 2 for g in gap)
            alpha_optimizer.zero_grad()
            alpha.grad = torch.autograd.grad(weight_loss, alpha)[0]
            alpha_optimizer.step()
            alpha.data = alpha.data + (len(aux) - alpha.data.sum()) / len(aux)
            alpha.data = torch.clamp(alpha.data, 0)
            records.append((None, alpha.detach().clone()))
    return records


@pytest.mark.parametrize("main_task", [0, 1])
def test_seven_iterations_match_the_official_transcription(main_task):
    """Seven iterations on fresh batches with interval 3 (two weight iterations): every model gradient and every
    α equal the transcription's (float64; autograd's ‖·‖² gradient vs our Gram-matrix form: rounding only)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    batches = []
    for seed in range(7):
        x, ys = make_batch(seed=seed)
        batches.append((x.double(), [y.double() for y in ys]))
    expected = official_run(reference, batches, main_task, interval=3)
    method = ARML(3, main_task=main_task, interval=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    aux = [k for k in range(3) if k != main_task]
    for batch, (grads, alpha) in zip(batches, expected):
        optimizer.zero_grad(set_to_none=True)
        info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        torch.testing.assert_close(info["weights"][aux], alpha, **ROUND_OFF)
        assert info["weights"][main_task] == 1.0
        params = model.shared_parameters() + model.task_specific_parameters()
        if grads is None:
            assert all(p.grad is None for p in params)
        else:
            for p, g in zip(params, grads):
                torch.testing.assert_close(p.grad, g, **ROUND_OFF)
        optimizer.step()
    assert expected[2][1].ne(1.0).all() and expected[5][1].ne(expected[2][1]).all()  # α moved at both updates


def official_noise(grad, generator, lr, n, momentum=0.9):
    """task_weighter.py:28-32 with train.py:197-198's arguments: noise_var = 2·lr·(1 − 0.9)/N, then
    grad + randn · noise_var^½ · (1 − momentum)^½ / lr · (grad²)^¼ (ξ drawn in float32 on the CPU: our convention)."""
    noise_var = 2 * lr * (1 - 0.9) / n
    xi = torch.randn(grad.shape, generator=generator, dtype=torch.float32).to(grad.dtype)
    return grad + xi * noise_var**0.5 * (1 - momentum) ** 0.5 / lr * (grad**2) ** 0.25


def test_langevin_noise_matches_the_official_formula():
    """With langevin: noise on the model's steps of iterations < langevin_iterations (train.py:196), none on the
    weight iterations (there is no model step) nor after; η read from the bound optimiser (lr 0.01 here)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = ARML(3, interval=3, langevin=True, langevin_iterations=5, langevin_dataset_size=100, seed=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    method.bind_optimizer(optimizer)
    generator = torch.Generator().manual_seed(4)
    params = model.shared_parameters() + model.task_specific_parameters()
    for iteration in range(1, 8):
        model.zero_grad(set_to_none=True)
        losses = model.losses(batch)
        clean = torch.autograd.grad((losses * method.weights).sum(), params, retain_graph=True)
        method.backward(losses, model.shared_parameters(), model.task_specific_parameters())
        if iteration % 3 == 0:
            assert all(p.grad is None for p in params)
            continue
        for p, g in zip(params, clean):
            expected = official_noise(g, generator, 0.01, 100) if iteration < 5 else g
            # the same float32 ξ (the same generator, shapes and order) and the same clean gradient (one backward of
            # Σ α_k L_k, bit for bit), so only the noise term's arithmetic differs: ξ·√(2η(1−μ)/N)·√(1−μ)/η·(∇²)^¼
            # against ours (∇² taken as |∇|, the constants multiplied first): ≤ 8 roundings of terms ≤ 1
            torch.testing.assert_close(p.grad, expected, **ROUND_OFF)
        optimizer.step()


def test_langevin_needs_the_dataset_size_and_the_optimiser():
    with pytest.raises(ValueError, match="dataset-size"):
        ARML(3, langevin=True)
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="bind_optimizer"):
        ARML(3, langevin=True, langevin_dataset_size=10).backward(linear_losses(theta, ROWS), [theta])


def test_resume_is_bit_exact_with_noise():
    """α and the noise generator's state are the learned state: a method restored from state_dict (through
    torch.save; built with another seed) takes the same next steps, noise included, bit for bit."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])

    def build(seed, net):
        method = ARML(3, main_task=2, interval=2, langevin=True, langevin_dataset_size=50, seed=seed)
        method.bind_optimizer(torch.optim.SGD(net.parameters(), lr=0.01))
        return method
    method = build(0, model)
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    twin = copy.deepcopy(model)
    restored = build(123, twin)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(2):  # a weight iteration, then a noisy model step
        grads = []
        for m, net in ((method, model), (restored, twin)):
            net.zero_grad(set_to_none=True)
            info = m.backward(net.losses(batch), net.shared_parameters(), net.task_specific_parameters())
            grads.append((info["weights"], [p.grad for p in net.parameters()]))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)  # same state, same operations
        for a, b in zip(grads[0][1], grads[1][1]):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_accumulated_weight_iteration_equals_one_backward():
    """A weight iteration from two accumulated halves (each mean loss / 2) gives the union batch's α (float64
    summation order only); the model steps in between are plain weighted backwards."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    twin = copy.deepcopy(model)
    x, ys = make_batch(n=16)
    x, ys = x.double(), [y.double() for y in ys]
    whole, parts = ARML(3, interval=2), ARML(3, interval=2)
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        twin.zero_grad(set_to_none=True)
        info = whole.backward(model.losses((x, ys)), model.shared_parameters(), model.task_specific_parameters())
        for half in (slice(0, 8), slice(8, 16)):
            parts.accumulate(twin.losses((x[half], [y[half] for y in ys])) / 2, twin.shared_parameters(),
                             twin.task_specific_parameters())
        info_parts = parts.backward_accumulated()
        torch.testing.assert_close(info["weights"], info_parts["weights"], **ROUND_OFF)
        for a, b in zip(model.parameters(), twin.parameters()):
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                torch.testing.assert_close(a.grad, b.grad, **ROUND_OFF)
    assert whole.weights.ne(1.0).any()


@pytest.mark.parametrize("bad", [dict(interval=0), dict(interval=2.5), dict(langevin_momentum=1.0)])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        ARML(3, **bad)
