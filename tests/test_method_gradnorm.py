"""GradNorm (methods/gradnorm.py) against hand-computed values and independent transcriptions of LibMTL's
implementation, median-research-group/LibMTL ``LibMTL/weighting/GradNorm.py`` ``backward`` (lines 24-49) with
``abstract_weighting.py`` (``_compute_grad`` line 48, ``_get_grads`` lines 87-100, ``_backward_new_grads`` lines
110-122), and of the paper's Alg. 1 (Chen et al., ICML 2018) for ``layer="last"`` and ``weighting="sum"``."""
import copy
import io

import pytest
import torch
from torch import nn

from methods.gradnorm import GradNorm
from tests.helpers import TinyMultiTask, make_batch

F64 = dict(dtype=torch.float64)
# float64 against float64 by another route: Σ_k w_k g_k by a matmul against an elementwise product and sum (K = 3
# products summed in another order, maybe fused): ≤ 3 eps·Σ_k w_k|g_k| ≈ 2e-15 on these O(1) gradients (with a
# representation, then back-propagated through the encoder alike); bit-equal on this machine, not by construction
ROUND_OFF = dict(rtol=1e-13, atol=1e-14)
# ξ is a float32 parameter (as LibMTL's ``loss_scale``), the transcription's a float64 copy of it at each step's start:
# ξ.grad is our float64 closed form rounded once to float32 (≤ 2⁻²⁴ relative) against autograd in float64 (its
# cancellation in slope − Σ z·slope: ~eps·K·max n_k ≈ 3e-15); after the SGD step ξ + (−0.1)·ξ.grad, float32 adds the
# step's rounding and lr's float32 cast: ≤ 2⁻²⁴·(|ξ| + 0.25|ξ.grad|) ≤ 2⁻²³ relative here
FLOAT32 = dict(rtol=2 * 2.0 ** -23, atol=1e-14)
# by hand: small dyadic numbers, every intermediate exact in binary (softmax of equal ξ is exactly ½; ‖(3, 4)‖ = 5; ξ's
# float32 SGD step and renormalisation land on 0.625 and 1.375 with ≥ ¼ ulp to spare)
EXACT = dict(rtol=0, atol=0)


def linear_problem(rows, values):
    """θ = 0 and L_k = g_kᵀθ + b_k: ∇_θ L_k = g_k and L_k = b_k exactly."""
    theta = nn.Parameter(torch.zeros(rows.shape[1], **F64))
    return theta, lambda: torch.stack([(row * theta).sum() + b for row, b in zip(rows, values)])


def test_one_learning_step_by_hand():
    """LibMTL's form after its warm-up epoch: L(0) = (2, 4) (the epoch's mean, GradNorm.py line 34), this step's
    L = (1, 4), so L̃ = (0.5, 1) and r = (2/3, 4/3) (line 35); w = K softmax(ξ = 1) = (1, 1) (lines 22, 27);
    G = (‖g₀‖, ‖g₁‖) = (5, 1), Ḡ = 3 (lines 32-33); G − Ḡ r^1.5 = (5 − 1.63, 1 − 4.62): signs (+, −), so
    ∂L_grad/∂w = (5, −1) and through w = 2 softmax(ξ) at z = (½, ½): ∂/∂ξ = 2 · ½ · ((5, −1) − 2) = (3, −3). The
    shared update is Σ w_k g_k = (3, 5)."""
    rows = torch.tensor([[3.0, 4.0], [0.0, 1.0]], **F64)
    theta, losses = linear_problem(rows, [1.0, 4.0])
    method = GradNorm(2)
    method.end_of_epoch(torch.tensor([2.0, 4.0], **F64))
    info = method.backward(losses(), [theta])
    torch.testing.assert_close(theta.grad, torch.tensor([3.0, 5.0], **F64), **EXACT)
    torch.testing.assert_close(info["weights"], torch.ones(2, **F64), **EXACT)
    torch.testing.assert_close(method.loss_scale.grad, torch.tensor([3.0, -3.0]), **EXACT)


def test_warm_up_epoch_is_the_plain_sum():
    """Before the first epoch's end (LibMTL ``self.epoch >= 1``, line 26): Σ L_k backward, weights 1 (lines 46-49),
    nothing for the weights to learn (their .grad stays None)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = GradNorm(3)
    info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    expected = torch.autograd.grad(model.losses(batch).sum(), list(model.parameters()))
    # exact: w = 3·fl(1/3) = 1 exactly, so the backward of Σ w_k L_k is that of Σ L_k, operation for operation
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=0, atol=0)
    torch.testing.assert_close(info["weights"], torch.ones(3, **F64), rtol=0, atol=0)
    assert method.loss_scale.grad is None


def test_paper_form_two_steps_by_hand():
    """weighting='sum', initial_loss='step' (Alg. 1): L(0) = the first step's losses, so r = (1, 1) and the target is
    Ḡ = 3: ∂L_grad/∂w = (+5, −1). One SGD step (lr 0.1) of w alone: (0.5, 1.1), renormalised to sum 2 before step 2:
    (0.625, 1.375); step 2 (same losses, r = 1): G = (3.125, 1.375), Ḡ = 2.25, the same signs: ∂/∂w = (5, −1)."""
    rows = torch.tensor([[3.0, 4.0], [0.0, 1.0]], **F64)
    theta, losses = linear_problem(rows, [1.0, 4.0])
    method = GradNorm(2, weighting="sum", initial_loss="step")
    optimizer = torch.optim.SGD(method.main_optimizer_parameters(), lr=0.1)
    info = method.backward(losses(), [theta])
    torch.testing.assert_close(method.loss_scale.grad, torch.tensor([5.0, -1.0]), **EXACT)
    torch.testing.assert_close(info["weights"], torch.ones(2, **F64), **EXACT)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    theta.grad = None
    info = method.backward(losses(), [theta])
    weights = torch.tensor([0.625, 1.375], **F64)
    torch.testing.assert_close(info["weights"], weights, **EXACT)
    torch.testing.assert_close(method.loss_scale.detach().double(), weights, **EXACT)  # float32, but 0.625 and 1.375
    torch.testing.assert_close(theta.grad, weights @ rows, **EXACT)
    torch.testing.assert_close(method.loss_scale.grad, torch.tensor([5.0, -1.0]), **EXACT)


def libmtl_step(model, batch, xi, initial, alpha=1.5):
    """GradNorm.py lines 27-45 after the warm-up: ξ.grad from L_grad.backward() through torch.norm, the shared
    gradient Σ w_k g_k, the heads Σ_k ∇L_k (each loss's own backward, abstract_weighting.py line 48). Returns the
    gradients of model.parameters() and the weights."""
    losses = model.losses(batch)
    shared, heads = model.shared_parameters(), model.task_specific_parameters()
    k = len(losses)
    loss_scale = k * torch.softmax(xi, dim=-1)
    grads = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
                         for t in range(k)])
    g_per_loss = torch.norm(loss_scale.unsqueeze(1) * grads, p=2, dim=-1)
    g_mean = g_per_loss.mean(0)
    ratios = torch.tensor([losses[t].item() / initial[t] for t in range(k)], **F64)
    r = ratios / ratios.mean()
    constant = (g_mean * (r**alpha)).detach()
    (g_per_loss - constant).abs().sum(0).backward()
    weights = loss_scale.detach()
    new_shared = (weights[:, None] * grads).sum(0)
    head_grads = torch.autograd.grad(losses.sum(), heads)
    out, offset = [], 0
    for p in shared:
        out.append(new_shared[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return out + list(head_grads), weights


def test_two_epochs_match_the_libmtl_transcription():
    """Epoch 0 (two steps): the plain sum; L(0) = its mean losses (``train_loss_buffer[:, 0]``, LibMTL/trainer.py
    line 288). Epoch 1 (two steps): learning. One SGD optimiser (lr 0.1) over the model and ξ, as LibMTL's one
    optimiser (trainer.py line 144): every parameter, ξ and the weights equal the transcription's at every step."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    method = GradNorm(3)
    xi = nn.Parameter(torch.ones(3, **F64))
    opt = torch.optim.SGD([{"params": list(model.parameters())}, *method.main_optimizer_parameters()], lr=0.1)
    ref_opt = torch.optim.SGD(list(reference.parameters()) + [xi], lr=0.1)
    epoch_losses, initial = [], None
    for step in range(4):
        x, ys = make_batch(seed=step)
        batch = (x.double(), [y.double() for y in ys])
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # the transcription starts each step from our (float32) ξ: a comparison to round-off
            xi.copy_(method.loss_scale)
        losses = model.losses(batch)
        info = method.backward(losses, model.shared_parameters(), model.task_specific_parameters())
        if step < 2:
            epoch_losses.append(losses.detach())
            reference.losses(batch).sum().backward()
            expected_weights = torch.ones(3, **F64)
        else:
            grads, expected_weights = libmtl_step(reference, batch, xi, initial)
            for p, g in zip(reference.parameters(), grads):
                p.grad = g
            torch.testing.assert_close(method.loss_scale.grad.double(), xi.grad, **FLOAT32)  # a float32 .grad
        # exact: K·softmax of the same float64 values (ours from ξ.double(), the transcription's ξ copied from it)
        torch.testing.assert_close(info["weights"], expected_weights, rtol=0, atol=0)
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, **ROUND_OFF)
        opt.step()
        ref_opt.step()
        torch.testing.assert_close(method.loss_scale.detach().double(), xi.detach(), **FLOAT32)
        if step == 1:
            initial = torch.stack(epoch_losses).mean(0)
            method.end_of_epoch(initial)
    assert not torch.allclose(xi, torch.ones(3, **F64))  # the weights learned


def test_last_shared_layer_matches_the_papers_algorithm():
    """layer='last' (Alg. 1): G_k = ‖∇_W w_k L_k‖ over the declared last shared layer W (here the trunk's weight
    matrix), the model (heads included) trained on Σ w_k L_k; L(0) from the first step. Two SGD steps against an
    autograd transcription."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    method = GradNorm(3, layer="last", initial_loss="step")
    assert method.needs_last_shared_parameters
    xi = nn.Parameter(torch.ones(3, **F64))
    opt = torch.optim.SGD([{"params": list(model.parameters())}, *method.main_optimizer_parameters()], lr=0.1)
    ref_opt = torch.optim.SGD(list(reference.parameters()) + [xi], lr=0.1)
    initial = None
    for step in range(2):
        x, ys = make_batch(seed=step)
        batch = (x.double(), [y.double() for y in ys])
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # the transcription starts each step from our (float32) ξ: a comparison to round-off
            xi.copy_(method.loss_scale)
        info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters(),
                               last_shared_parameters=[model.shared[0].weight])
        losses = reference.losses(batch)
        initial = losses.detach() if initial is None else initial
        weights = 3 * torch.softmax(xi, dim=-1)
        norms = torch.stack([torch.autograd.grad(losses[t], reference.shared[0].weight, retain_graph=True)[0].norm()
                             for t in range(3)])
        g = weights * norms
        r = (losses.detach() / initial) / (losses.detach() / initial).mean()
        (g - (g.mean() * r**1.5).detach()).abs().sum().backward(inputs=[xi])
        (weights.detach() * losses).sum().backward()
        # exact: the same K·softmax of the same float64 ξ, and the same backward of Σ w_k L_k (w·L = L·w)
        torch.testing.assert_close(info["weights"], weights.detach(), rtol=0, atol=0)
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
        torch.testing.assert_close(method.loss_scale.grad.double(), xi.grad, **FLOAT32)  # a float32 .grad
        opt.step()
        ref_opt.step()


def test_representation_gradients_summed_over_the_batch():
    """gradient_space='representation' (LibMTL rep_grad=True): the norms are of the per-task representation gradients
    summed over the batch (abstract_weighting.py line 90), the encoder receives Σ w_k ∇_h L_k (lines 111-114), the
    heads Σ_k ∇L_k. One learning step (initial_loss='step')."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    x, ys = x.double(), [y.double() for y in ys]
    h = model.shared(x)
    losses = torch.stack([((head(h) - y) ** 2).mean() for head, y in zip(model.heads, ys)])
    rows = torch.stack([torch.autograd.grad(losses[k], h, retain_graph=True)[0] for k in range(3)])  # K × B × D
    xi = nn.Parameter(torch.ones(3, **F64))
    weights = 3 * torch.softmax(xi, dim=-1)
    g = torch.norm(weights.unsqueeze(1) * rows.sum(1), dim=-1)
    (g - g.mean().detach()).abs().sum().backward()  # r = 1 at the first step
    encoder = torch.autograd.grad(h, model.shared_parameters(), (weights.detach()[:, None, None] * rows).sum(0),
                                  retain_graph=True)
    heads = torch.autograd.grad(losses.sum(), model.task_specific_parameters(), retain_graph=True)
    method = GradNorm(3, gradient_space="representation", initial_loss="step")
    method.backward(losses, model.shared_parameters(), model.task_specific_parameters(), representation=h)
    for p, e in zip(model.shared_parameters() + model.task_specific_parameters(), list(encoder) + list(heads)):
        torch.testing.assert_close(p.grad, e, **ROUND_OFF)
    torch.testing.assert_close(method.loss_scale.grad.double(), xi.grad, **FLOAT32)  # a float32 .grad


def test_weights_stay_positive_and_sum_to_k():
    """w = K softmax(ξ) (GradNorm.py line 27): positive and summing to K whatever ξ becomes."""
    method = GradNorm(4)
    with torch.no_grad():
        method.loss_scale.copy_(torch.tensor([3.0, -2.0, 0.5, 10.0]))
    w = method.weights()
    assert (w > 0).all()
    # Σ_k 4·e_k / S with S the computed Σ e_k is 4 whatever the exps' errors; S's 3 additions, the 4 divisions and
    # the sum's 3 additions round (≤ ½ eps relative each, the divisions' errors averaging): ≤ 3.5 eps, 1e-15 ≈ 4.5 eps
    torch.testing.assert_close(w.sum().item(), 4.0, rtol=1e-15, atol=0)


def test_resume_is_bit_exact():
    """ξ and L(0) are the learned state: restored through torch.save, the next step (and ξ's gradient) are equal
    bit for bit."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = GradNorm(3)
    opt = torch.optim.SGD([{"params": list(model.parameters())}, *method.main_optimizer_parameters()], lr=0.1)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        opt.step()
        if step == 0:
            method.end_of_epoch(model.losses(batch).detach())
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = GradNorm(3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    twin = copy.deepcopy(model)
    grads = []
    for m, net in ((method, model), (restored, twin)):
        net.zero_grad(set_to_none=True)
        m.loss_scale.grad = None
        m.backward(net.losses(batch), net.shared_parameters(), net.task_specific_parameters())
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()] + [m.loss_scale.grad.double()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)  # same state, same operations


def test_last_layer_is_a_declaration():
    model = TinyMultiTask().double()
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    method = GradNorm(3, layer="last")
    with pytest.raises(ValueError, match="last_shared_parameters="):
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    with pytest.raises(ValueError, match="members of shared_parameters"):
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters(),
                        last_shared_parameters=[model.heads[0].weight])
    with pytest.raises(ValueError, match="representation"):
        GradNorm(3, layer="last", gradient_space="representation")
    assert not GradNorm(3).needs_last_shared_parameters
    assert GradNorm.in_paper is False and GradNorm.uses_main_task is False


def test_negative_loss_is_refused_when_learning():
    rows = torch.tensor([[3.0, 4.0], [0.0, 1.0]], **F64)
    method = GradNorm(2, initial_loss="step")
    theta, losses = linear_problem(rows, [1.0, 4.0])
    method.backward(losses(), [theta])  # L(0) = (1, 4)
    theta, losses = linear_problem(rows, [1.0, -4.0])
    with pytest.raises(ValueError, match="task 1 is negative"):
        method.backward(losses(), [theta])
