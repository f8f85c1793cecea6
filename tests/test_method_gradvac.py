"""GradVac (methods/gradvac.py) against hand-computed values and an independent transcription of LibMTL's
implementation, median-research-group/LibMTL ``LibMTL/weighting/GradVac.py`` ``backward`` (lines 57-74), applied
to the gradient vectors themselves (the method works on Gram matrices)."""
import copy
import io
import math

import pytest
import torch
from torch import nn

from methods.gradvac import GradVac
from tests.helpers import TinyMultiTask, make_batch, task_gradients

F64 = dict(dtype=torch.float64)
EPS64 = torch.finfo(torch.float64).eps
# The official adds 1e-8 to both denominators (GradVac.py lines 68, 70), which the hand values omit: on these O(1)
# gradients (denominators ≥ 0.7) each moves a coefficient by ≤ 1.5e-8 relative, and θ's gradient, a difference of
# coefficients, by ≤ 3e-8 absolute (measured 1.7e-8 absolute, 2.5e-8 relative)
HAND = dict(rtol=1e-7, atol=1e-7)
# Gram route vs vectors: the same float64 terms summed in another order (P = 30 terms per product, ≤ 30 eps each),
# through the vaccine's coefficients and four steps: measured ≤ 2.2e-16 absolute on O(1) values; atol 1e-14
ROUND_OFF = dict(rtol=1e-13, atol=1e-14)


def linear_losses(theta, rows):
    """L_k = g_kᵀθ: ∇_θ L_k = g_k exactly."""
    return torch.stack([(row * theta).sum() for row in rows])


def test_first_step_by_hand():
    """g₀ = (1, 0), g₁ = (−1, 1): cos = −1/√2 < φ̂ = 0 (the initial target, GradVac.py line 42), so (line 70 with
    φ̂ = 0) g₀ += g₁ · ‖g₀‖ (−φ) / ‖g₁‖ = 0.5 g₁ → (0.5, 0.5), and g₁ += g₀ · √2 (1/√2) / 1 = g₀ → (0, 1) (task 1
    meets the original g₀). The update is (0.5, 1.5) = 2 g₀ + 1.5 g₁: weights (2, 1.5). Targets after the step
    (line 73, β = 0.5): 0.5 · 0 + 0.5 · (−1/√2) for both pairs."""
    rows = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], **F64)
    theta = nn.Parameter(torch.zeros(2, **F64))
    method = GradVac(2)
    info = method.backward(linear_losses(theta, rows), [theta])
    torch.testing.assert_close(theta.grad, torch.tensor([0.5, 1.5], **F64), **HAND)
    torch.testing.assert_close(info["weights"], torch.tensor([2.0, 1.5], **F64), **HAND)
    target = -0.5 / math.sqrt(2)
    torch.testing.assert_close(method.targets[0], torch.tensor([[0.0, target], [target, 0.0]], **F64), **HAND)


def test_second_step_by_hand_uses_the_moving_target():
    """Step 2 on the same gradients: φ = −1/√2 < φ̂ = −1/(2√2), so g₀ += g₁ · ‖g₀‖ (φ̂ √(1 − φ²) − φ √(1 − φ̂²)) /
    (‖g₁‖ √(1 − φ̂²)) (line 70), the coefficient written out here; and symmetrically for g₁ with ‖g₁‖/‖g₀‖ = √2."""
    rows = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], **F64)
    theta = nn.Parameter(torch.zeros(2, **F64))
    method = GradVac(2)
    for _ in range(2):
        theta.grad = None
        info = method.backward(linear_losses(theta, rows), [theta])
    phi, target = -1 / math.sqrt(2), -0.5 / math.sqrt(2)
    core = (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2)) / math.sqrt(1 - target**2)
    w0, w1 = core / math.sqrt(2), core * math.sqrt(2)  # ‖g₀‖/‖g₁‖ = 1/√2, ‖g₁‖/‖g₀‖ = √2
    expected = torch.tensor([1.0 + w1, 1.0 + w0], **F64)
    torch.testing.assert_close(info["weights"], expected, **HAND)
    torch.testing.assert_close(theta.grad, expected @ rows, **HAND)
    new_target = 0.5 * target + 0.5 * phi
    torch.testing.assert_close(method.targets[0, 0, 1].item(), new_target, **HAND)


def test_agreeing_gradients_are_left_alone():
    """cos > φ̂ = 0 for every pair: no vaccine, the update is the plain sum, weights 1 (line 69)."""
    rows = torch.tensor([[1.0, 0.2], [0.5, 1.0], [1.0, 1.0]], **F64)
    theta = nn.Parameter(torch.zeros(2, **F64))
    info = GradVac(3).backward(linear_losses(theta, rows), [theta])
    # weights exactly 1 (no vaccine: the coefficient matrix stays the identity), so Σ_k 1·g_k: two additions of
    # positive terms, in the matmul's order against sum(0)'s: ≤ 2 half-ulps, 1e-15 ≈ 4.5 eps
    torch.testing.assert_close(theta.grad, rows.sum(0), rtol=1e-15, atol=0)
    torch.testing.assert_close(info["weights"], torch.ones(3, **F64), rtol=0, atol=0)  # ‖g‖²·1 / ‖g‖²


def libmtl_orders(generator, k):
    """The orders the method draws: per task i, a permutation of the other tasks (our stand-in for LibMTL's
    ``random.shuffle``, GradVac.py lines 60-62)."""
    orders = []
    for i in range(k):
        others = [j for j in range(k) if j != i]
        orders.append([others[p] for p in torch.randperm(len(others), generator=generator).tolist()])
    return orders


def libmtl_step(grads, rho, beta, orders, sizes):
    """A transcription of GradVac.py lines 57-74 on the K × P gradients (``sizes``: the groups' column counts,
    ``k_idx``); ``rho`` (K × K × groups) is updated in place. Returns the new shared gradient."""
    pc = grads.clone()
    bounds = [(sum(sizes[:g]), sum(sizes[:g + 1])) for g in range(len(sizes))]
    for i in range(len(grads)):
        for j in orders[i]:
            for g, (beg, end) in enumerate(bounds):
                r = torch.dot(pc[i, beg:end], grads[j, beg:end]) / (pc[i, beg:end].norm() * grads[j, beg:end].norm()
                                                                     + 1e-8)
                if r < rho[i, j, g]:
                    w = pc[i, beg:end].norm() * (rho[i, j, g] * (1 - r**2).sqrt() - r * (1 - rho[i, j, g]**2).sqrt()) \
                        / (grads[j, beg:end].norm() * (1 - rho[i, j, g]**2).sqrt() + 1e-8)
                    pc[i, beg:end] += grads[j, beg:end] * w
                rho[i, j, g] = (1 - beta) * rho[i, j, g] + beta * r
    return pc.sum(0)


@pytest.mark.parametrize("group", ["model", "tensor"])
def test_four_steps_match_the_libmtl_transcription(group):
    """Four SGD steps on fresh batches (K = 3, random orders from the same seed): the shared gradient, the heads'
    (each its own loss, weight 1: abstract_weighting.py line 48) and the targets equal the transcription's at every
    step; with group='tensor' the groups are the two shared tensors (LibMTL's all_matrix, ``grad_index``)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    method = GradVac(3, group=group, seed=5)
    generator = torch.Generator().manual_seed(5)
    sizes = [p.numel() for p in model.shared_parameters()] if group == "tensor" else \
        [sum(p.numel() for p in model.shared_parameters())]
    rho = torch.zeros(3, 3, len(sizes), **F64)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.2) for m in (model, reference))
    for step in range(4):
        x, ys = make_batch(seed=step)
        batch = (x.double(), [y.double() for y in ys])
        opt.zero_grad(set_to_none=True)
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        shared, specific = task_gradients(reference, batch)
        expected = libmtl_step(shared, rho, 0.5, libmtl_orders(generator, 3), sizes)
        got = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
        torch.testing.assert_close(got, expected, **ROUND_OFF)
        heads = torch.cat([p.grad.reshape(-1) for p in model.task_specific_parameters()])
        torch.testing.assert_close(heads, specific.sum(0), **ROUND_OFF)
        torch.testing.assert_close(method.targets.permute(1, 2, 0), rho, **ROUND_OFF)
        offset = 0
        for p in reference.parameters():
            p.grad = torch.cat([expected, specific.sum(0)])[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        opt.step()
        ref_opt.step()
    assert (rho != 0).any()  # the targets moved


def test_reported_weights_are_the_effective_coefficients():
    """group='model': the update is exactly Σ_k w_k g_k. group='tensor': w_k = Σ_t λ_{t,k} ‖g_{k,t}‖² / ‖g_k‖² with
    λ = ``multipliers`` (K × T), and the update of tensor t is Σ_k λ_{t,k} g_{k,t}."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch(seed=3)
    batch = (x.double(), [y.double() for y in ys])
    shared, _ = task_gradients(model, batch)
    sizes = [p.numel() for p in model.shared_parameters()]
    for group in ("model", "tensor"):
        method = GradVac(3, group=group)
        for _ in range(2):  # the second step has non-zero targets
            model.zero_grad(set_to_none=True)
            info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        got = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
        if group == "model":
            torch.testing.assert_close(got, info["weights"] @ shared, **ROUND_OFF)
            # one group: w = (λ·‖g‖²) / ‖g‖², which is λ only up to two roundings ((a·b)/b ≠ a for ~8 % of doubles)
            torch.testing.assert_close(info["multipliers"][:, 0], info["weights"], rtol=2 * EPS64, atol=0)
            continue
        blocks = torch.split(shared, sizes, dim=1)
        lam = info["multipliers"]  # K × T
        torch.testing.assert_close(got, torch.cat([lam[:, t] @ b for t, b in enumerate(blocks)]), **ROUND_OFF)
        squared = torch.stack([(b**2).sum(1) for b in blocks], dim=1)  # K × T
        torch.testing.assert_close(info["weights"], (lam * squared).sum(1) / squared.sum(1), **ROUND_OFF)
        assert not torch.allclose(lam[:, 0], lam[:, 1])  # the two tensors were vaccinated differently


def test_tensor_no_loss_reaches_keeps_grad_none_and_its_targets():
    """group='tensor' with an unused tensor in the list: its .grad stays None, its targets stay 0 (LibMTL's zero
    slice would move them, without effect on any update), its multipliers are 1."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    unused = nn.Parameter(torch.ones(3, **F64))
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = GradVac(3, group="tensor")
    info = method.backward(model.losses(batch), model.shared_parameters() + [unused], model.task_specific_parameters())
    assert unused.grad is None
    assert method.targets.shape == (3, 3, 3) and (method.targets[2] == 0).all()
    torch.testing.assert_close(info["multipliers"][:, 2], torch.ones(3, **F64), rtol=0, atol=0)  # left at 1


def test_resume_is_bit_exact_with_the_random_order():
    """Targets and the generator's state are the learned state: a method restored (through torch.save, built with
    another seed) takes the same next step bit for bit."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = GradVac(3, group="tensor", seed=1)
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = GradVac(3, group="tensor", seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    twin = copy.deepcopy(model)
    grads = []
    for m, net in ((method, model), (restored, twin)):
        net.zero_grad(set_to_none=True)
        m.backward(net.losses(batch), net.shared_parameters(), net.task_specific_parameters())
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)  # same state, same operations
    torch.testing.assert_close(restored.targets, method.targets, rtol=0, atol=0)


def test_declarations_and_bad_settings():
    assert GradVac.in_paper is False and GradVac.uses_main_task is False and GradVac.has_meta_update is False
    assert GradVac.Settings.__dataclass_fields__["seed"].metadata["run_setting"] == "seed"
    with pytest.raises(ValueError, match="beta"):
        GradVac(3, beta=0.0)
    with pytest.raises(ValueError, match="group"):
        GradVac(3, group="layer")
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = GradVac(3, group="tensor")
    method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    with pytest.raises(ValueError, match="same shared_parameters"):
        method.backward(model.losses(batch), model.shared_parameters()[:1], model.task_specific_parameters())
