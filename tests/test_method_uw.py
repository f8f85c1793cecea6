"""Uncertainty weighting (methods/uw.py) against LibMTL's ``LibMTL/weighting/UW.py`` (the loss of the MTAN code's
``uncert``, lorenmt/mtan ``im2im_pred/utils.py`` line 168), transcribed below in one line and differentiated by
autograd: ``loss = (losses / (2 * loss_scale.exp()) + loss_scale / 2).sum()``, ``loss_scale`` starting at −0.5
(``UW.py`` line 19) and stepped with the model by one optimiser (``LibMTL/trainer.py`` line 144)."""
import copy
import math

import torch

from methods.uw import UW
from tests.helpers import TinyMultiTask, make_batch

EPS32 = torch.finfo(torch.float32).eps  # 2⁻²³: one float32 ulp, relative, at most


def libmtl_uw_backward(losses, loss_scale):
    """UW.py lines 22-24: the backward of the whole loss; returns the reported weights 1 / (2 exp(s))."""
    (losses / (2 * loss_scale.exp()) + loss_scale / 2).sum().backward()
    return (1 / (2 * torch.exp(loss_scale))).detach()


def double_batch(seed=0):
    x, ys = make_batch(seed=seed)
    return x.double(), [y.double() for y in ys]


def test_one_step_matches_libmtl():
    """Weights, the model's .grad (shared and heads: every ∇L_k times 1/(2e^{s_k})) and s's .grad
    (1/2 − L_k/(2e^{s_k})) at s = −0.5. s is float32 in both, so the multiplier 1/(2e^{s_k}) is a float32 number,
    rounded in another order (ours 0.5·e^{−s}: float32 exp, ≤ 1 ulp; LibMTL's 1/(2e^{s}): exp and a division, ≤ 1.5
    ulp): the two differ by ≤ 2.5 float32 ulps (the tolerances below, derived from that, sit beside each check)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    batch = double_batch()
    method = UW(3)
    info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    loss_scale = torch.nn.Parameter(torch.tensor([-0.5] * 3))  # UW.py line 19
    expected = libmtl_uw_backward(reference.losses(batch), loss_scale)
    torch.testing.assert_close(info["weights"], expected, rtol=3 * EPS32, atol=0)  # ≤ 1 + 1.5 ulps (docstring)
    # by hand (0.824): ours ≤ 1 ulp, the float64 value rounded to float32 ≤ ½ ulp
    torch.testing.assert_close(info["weights"], torch.full((3,), 0.5 * math.exp(0.5)), rtol=2 * EPS32, atol=0)
    # Σ_k w_k ∇L_k (float64) with the two float32 multipliers (≤ 2.5 ulps apart): |Δ| ≤ 3·2⁻²³·Σ_k w_k|∇L_k|, and
    # Σ_k w_k|∇L_k| ≤ 0.9 on this model and batch (heads: no sum, so relative 3·2⁻²³)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=3 * EPS32, atol=3 * EPS32)
    # ½ − L_k/(2e^{s_k}), terms ≤ 1.3 here: ours one float32 rounding of the float64 value; LibMTL's autograd rounds in
    # float32 the cast of ∂/∂(2e^s) (½ ulp), the exp (1), the product (½) and the sum (½): ≤ 2.5 ulps of [1, 2)
    # (2⁻²³ each) ≈ 3e-7
    torch.testing.assert_close(method.log_variance.grad, loss_scale.grad, rtol=0, atol=5e-7)


def test_three_adam_steps_learn_s_as_libmtl():
    """Three steps of one Adam (lr 0.05) over the model and s: ours through main_optimizer_parameters() (a group
    without its own lr, so the model's), LibMTL's with loss_scale among the model's parameters. The two s.grad differ
    by ≤ 3e-7 (test_one_step_matches_libmtl; terms ≤ 1.2 here) on gradients of one sign per task, |g| ≥ 0.054: a
    relative difference r ≤ 5e-6, which moves Adam's step m̂/√v̂ by ≤ 2r (its first step, g/|g|, not at all) times lr
    0.05: ≤ 2 × 5e-7 on s, plus its float32 rounding; the weights e^{−s}/2 ≤ 0.9 follow (2e-6 for both). The
    model's gradients move by the same relative 1e-6, so its Adam steps by ≤ 2 × 2·lr·1e-6: 1e-6 on the parameters."""
    torch.manual_seed(1)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    batch = double_batch(3)
    method = UW(3)
    groups = method.main_optimizer_parameters()
    assert groups == [{"params": [method.log_variance]}]
    optimizer = torch.optim.Adam([{"params": model.parameters()}, *groups], lr=0.05)
    loss_scale = torch.nn.Parameter(torch.tensor([-0.5] * 3))
    reference_optimizer = torch.optim.Adam(list(reference.parameters()) + [loss_scale], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        optimizer.step()
        reference_optimizer.zero_grad(set_to_none=False)
        expected = libmtl_uw_backward(reference.losses(batch), loss_scale)
        reference_optimizer.step()
        torch.testing.assert_close(info["weights"], expected, rtol=0, atol=2e-6)  # docstring
        torch.testing.assert_close(method.log_variance.detach(), loss_scale.detach(), rtol=0, atol=2e-6)
    assert not torch.allclose(method.log_variance.detach(), torch.full((3,), -0.5))  # s moved
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # docstring


def test_initial_variance_and_own_learning_rate():
    """``initial_variance=1`` is Nash-MTL's s₀ = 0 (weights ½); ``lr`` > 0 gives s its own group (Nash-MTL: 0.025)."""
    method = UW(2, initial_variance=1.0, lr=0.025)
    torch.testing.assert_close(method.task_weights(), torch.full((2,), 0.5), rtol=0, atol=0)  # ½·e^{−log 1} = ½·1
    assert method.main_optimizer_parameters()[0]["lr"] == 0.025


def test_micro_batches_equal_one_backward_on_the_union():
    """accumulate × 2 (each micro-batch's mean loss halved) + backward_accumulated = one backward on the union's
    mean losses: the model's .grad and s's .grad (one ½ per optimiser step). Not exact: the union's gradients sum
    16 samples at once, the micro-batches' two sums of 8 (float64 round-off, ~1e-16 here, hence 1e-12 / 1e-14); s's
    .grad is one float32 rounding of two float64 values that differ by round-off: ≤ 1 float32 ulp apart."""
    torch.manual_seed(2)
    model = TinyMultiTask().double()
    twin = copy.deepcopy(model)
    x, ys = double_batch(4)
    method, union = UW(3), UW(3)
    for half in (slice(0, 8), slice(8, 16)):
        method.accumulate(model.losses((x[half], [y[half] for y in ys])) / 2, model.shared_parameters(),
                          model.task_specific_parameters())
    method.backward_accumulated()
    union.backward(twin.losses((x, ys)), twin.shared_parameters(), twin.task_specific_parameters())
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(method.log_variance.grad, union.log_variance.grad, rtol=EPS32, atol=1e-15)


def test_state_round_trip_keeps_the_optimised_parameter():
    method = UW(3)
    held = method.main_optimizer_parameters()[0]["params"][0]
    state = UW(3, initial_variance=2.0).state_dict()
    method.load_state_dict(state)
    assert method.log_variance is held
    torch.testing.assert_close(held.detach(), torch.full((3,), math.log(2.0)), rtol=0, atol=0)  # the same full()
    assert UW.in_paper is False and UW.uses_main_task is False and UW.label == "UW"
