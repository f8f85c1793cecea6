"""IMTL (methods/imtl.py) against LibMTL's implementation (median-research-group/LibMTL ``LibMTL/weighting/
IMTL.py``; there is no official code), transcribed below in a few lines on explicit vectors, and against IMTL-G's
defining property (Liu et al., ICLR 2021, Sec. 3.1): the combined gradient has equal projections onto every u_k."""
import copy

import numpy as np
import pytest
import torch

from methods.imtl import IMTL, imtl_g_weights
from tests.helpers import TinyMultiTask, make_batch

EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps


def libmtl_alpha(grads):
    """IMTL.py lines 28-34 on the K × P matrix of (scaled) per-task gradients."""
    unit = grads / torch.norm(grads, p=2, dim=-1, keepdim=True)
    d = grads[0:1].repeat(len(grads) - 1, 1) - grads[1:]
    u = unit[0:1].repeat(len(grads) - 1, 1) - unit[1:]
    alpha = torch.matmul(torch.matmul(grads[0], u.t()), torch.inverse(torch.matmul(d, u.t())))
    return torch.cat((1 - alpha.sum().unsqueeze(0), alpha), dim=0)


def test_two_tasks_by_hand():
    """g_1 = (3, 0), g_2 = (0, 1): u_1 − u_2 = (1, −1), g_1ᵀ(u_1 − u_2) = 3, (g_1 − g_2)ᵀ(u_1 − u_2) = 4, so α_2 = ¾,
    α_1 = ¼ and g = (¾, ¾): projection ¾ onto u_1 and onto u_2."""
    alpha = imtl_g_weights(torch.tensor([[9.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    # exact: every intermediate is exact in binary (9·fl(1/3) rounds to 3, then 3 − 0, 4, ¾, 1 − ¾)
    torch.testing.assert_close(alpha, torch.tensor([0.25, 0.75], dtype=torch.float64), rtol=0, atol=0)


def test_imtl_g_has_equal_projections():
    """The property IMTL-G is defined by (Sec. 3.1): Σ α_k = 1 and gᵀu_k equal for every k, g = Σ α_k g_k. Exact
    in exact arithmetic; in float64 a (K − 1)-square solve of condition number κ = cond(D Uᵀ) (up to 1.1e3 in these
    draws) and P-term dot products: α to ~(P + κ)·eps·Σ|α_k|, the projections to that times max ‖g_k‖ (measured:
    within 1.1× of κ·eps·Σ|α_k|·max‖g_k‖); a factor 16 above that."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        k, p = int(rng.integers(2, 7)), int(rng.integers(6, 20))
        g = torch.as_tensor(rng.normal(size=(k, p)) * rng.uniform(0.5, 5.0, size=(k, 1)))
        alpha = imtl_g_weights(g @ g.T)
        combined = alpha @ g
        projections = (g / g.norm(dim=1, keepdim=True)) @ combined
        unit = g / g.norm(dim=1, keepdim=True)
        kappa = torch.linalg.cond((g[0:1] - g[1:]) @ (unit[0:1] - unit[1:]).T).item()
        size = alpha.abs().sum().item()
        bound = 16 * (p + kappa) * EPS64 * size  # on α; times max ‖g_k‖ on the projections
        # 1 − Σ_{k>1} α_k, then the K-term sum: ≤ 2K roundings of numbers ≤ 1 + Σ|α_k|
        assert abs(float(alpha.sum()) - 1) <= 2 * k * EPS64 * (1 + size)
        torch.testing.assert_close(projections, projections[0].expand(k), rtol=0,
                                   atol=bound * g.norm(dim=1).max().item())
        torch.testing.assert_close(alpha, libmtl_alpha(g), rtol=0, atol=bound)  # LibMTL's formula


def libmtl_reference_step(model, batch, loss_scale):
    """One LibMTL IMTL backward (IMTL.py lines 23-39 with abstract_weighting.py _compute_grad / _reset_grad): the
    scaled losses' per-task backward passes fill the heads' and the scales' .grad; the shared .grad is replaced by
    Σ α_k (scaled gradient)_k. Returns α."""
    losses = model.losses(batch)
    scaled = loss_scale.exp() * losses - loss_scale  # line 23
    shared = model.shared_parameters()
    rows = []
    for k in range(len(scaled)):  # abstract_weighting.py lines 43-55: backward, read, zero the shared grads
        scaled[k].backward(retain_graph=True)
        rows.append(torch.cat([p.grad.reshape(-1).clone() for p in shared]))
        for p in shared:
            p.grad.zero_()
    grads = torch.stack(rows)
    alpha = libmtl_alpha(grads)
    new = alpha @ grads  # abstract_weighting.py lines 120-122, 67-74
    start = 0
    for p in shared:
        p.grad.copy_(new[start:start + p.numel()].view_as(p))
        start += p.numel()
    return alpha


def test_hybrid_one_step_matches_libmtl():
    """At scales s ≠ 0: shared .grad, heads' .grad (e^{s_k}∇L_k, unweighted by α), the scales' .grad
    (e^{s_k}L_k − 1) and α equal LibMTL's. Same float64 numbers in another order (Gram matrix and solve against
    vectors and torch.inverse): κ = cond(D Uᵀ) = 5 here and P = 30, so α to ~(P + κ)·eps ≈ 1e-14 and the gradients
    (O(1)) alike: 1e-12 relative, 1e-13 absolute (measured ≤ 4e-16)."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    x, ys = make_batch()
    batch = (x.double(), [y.double() for y in ys])
    s = torch.tensor([0.3, -0.2, 0.1]).double()  # float32 values: the scales are float32 Parameters
    method = IMTL(3)
    assert method.mode == "hybrid"
    with torch.no_grad():
        method.loss_scale.copy_(s)
    model.zero_grad(set_to_none=True)
    info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    loss_scale = torch.nn.Parameter(s.clone())
    alpha = libmtl_reference_step(reference, batch, loss_scale)
    torch.testing.assert_close(info["alpha"], alpha, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(info["weights"].double(), alpha * s.exp(), rtol=1e-12, atol=1e-13)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-13)
    # ours is float32 (the scales' dtype): one rounding, ≤ 2⁻²⁴ relative, of e^{s_k}L_k − 1 formed in float64 as
    # the transcription's (float64 here; its cancellation: ~eps·e^{s}L ≤ 1e-15)
    torch.testing.assert_close(method.loss_scale.grad.double(), loss_scale.grad, rtol=EPS32, atol=1e-14)


def test_hybrid_three_steps_with_adam_match_libmtl():
    """LibMTL steps the scales with the model's optimiser (trainer.py line 144): three Adam steps (lr 0.05) of the
    model and s, ours through main_optimizer_parameters() (a group without its own lr), against the transcription.
    The scales are float32 in both: ours rounds e^{s}L − 1 once from float64, LibMTL's autograd in float32 (the cast of
    L, the exp's product, the − 1: ≤ 2.5 ulps of e^{s}L ≤ 1.5, ≈ 3e-7), on gradients ≥ 0.047 here: a relative
    difference r ≤ 6e-6, which moves Adam's step by ≤ 2r (one sign; 3r where a task's gradient changes sign, there
    ≥ 0.098) times lr 0.05 on its second and third steps (the first, g/|g|, not at all): ≤ 1.2e-6 on s, 2e-6. The
    model's gradients (α and e^{s}) move by the same relative ~1e-6, so its Adam steps by ≤ 2 × 2·lr·2e-6: 1e-6."""
    torch.manual_seed(1)
    model = TinyMultiTask().double()
    reference = copy.deepcopy(model)
    x, ys = make_batch(seed=3)
    batch = (x.double(), [y.double() for y in ys])
    method = IMTL(3)
    groups = method.main_optimizer_parameters()
    assert groups == [{"params": [method.loss_scale]}]
    optimizer = torch.optim.Adam([{"params": model.parameters()}, *groups], lr=0.05)
    loss_scale = torch.nn.Parameter(torch.zeros(3))  # IMTL.py line 20
    reference_optimizer = torch.optim.Adam(list(reference.parameters()) + [loss_scale], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
        optimizer.step()
        reference_optimizer.zero_grad(set_to_none=False)
        libmtl_reference_step(reference, batch, loss_scale)
        reference_optimizer.step()
        torch.testing.assert_close(method.loss_scale.detach(), loss_scale.detach(), rtol=0, atol=2e-6)
    assert not torch.equal(method.loss_scale.detach(), torch.zeros(3))  # the scales moved
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # docstring


def linear_problem(rows):
    theta = torch.nn.Parameter(torch.zeros(len(rows[0]), dtype=torch.float64))
    phis = [torch.nn.Parameter(torch.ones(2, dtype=torch.float64)) for _ in rows]

    def losses():  # ∇_θ L_k = rows_k; ∇_φk L_k = (k+1)·1; L_k(θ = 0) = k + 1
        return torch.stack([torch.tensor(r, dtype=torch.float64) @ theta + 0.5 * (k + 1) * (phis[k] ** 2).sum()
                            for k, r in enumerate(rows)])
    return theta, phis, losses


def test_gradient_mode_is_imtl_g_alone_heads_unweighted():
    """``mode="gradient"`` (the paper's Algorithm 1): shared update Σ α_k g_k on the raw gradients (by hand:
    (¾, ¾) for g = (3, 0), (0, 1)), heads their own ∇L_k, nothing to learn."""
    theta, phis, losses = linear_problem([(3.0, 0.0), (0.0, 1.0)])
    method = IMTL(2, mode="gradient")
    assert method.main_optimizer_parameters() == []
    info = method.backward(losses(), [theta], phis)
    # exact: small dyadic numbers throughout (as in test_two_tasks_by_hand)
    torch.testing.assert_close(info["weights"], torch.tensor([0.25, 0.75], dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(theta.grad, torch.tensor([0.75, 0.75], dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(phis[1].grad, torch.full((2,), 2.0, dtype=torch.float64), rtol=0, atol=0)
    assert method.loss_scale.grad is None


def test_loss_mode_is_imtl_l_alone():
    """``mode="loss"`` (Algorithm 2): one backward of Σ e^{s_k} L_k; s's gradient e^{s_k} L_k − 1 (by hand at s = 0,
    L = (1, 2): (0, 1))."""
    theta, phis, losses = linear_problem([(3.0, 0.0), (0.0, 1.0)])
    method = IMTL(2, mode="loss")
    info = method.backward(losses(), [theta], phis)
    # exact: e^0 = 1, so integers throughout
    torch.testing.assert_close(info["weights"], torch.ones(2), rtol=0, atol=0)
    torch.testing.assert_close(theta.grad, torch.tensor([3.0, 1.0], dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(method.loss_scale.grad, torch.tensor([0.0, 1.0]), rtol=0, atol=0)


def test_parallel_and_zero_gradients_stay_finite():
    """D Uᵀ singular (two parallel gradients: LibMTL's torch.inverse raises) and a zero gradient (LibMTL: NaN)."""
    shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = torch.stack([shared.sum() * 0.0 + 1.0, (shared ** 2).sum(), (shared ** 2).sum()])
    info = IMTL(3).backward(losses, [shared])
    assert torch.isfinite(info["weights"]).all() and torch.isfinite(shared.grad).all()
    # 1 − Σ_{k>1} α_k and the sum again: two roundings of numbers ≤ Σ|α_k|
    size = info["alpha"].abs().sum().item()
    torch.testing.assert_close(info["alpha"].sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0,
                               atol=4 * EPS64 * size)


def test_state_round_trip_keeps_the_optimised_parameter():
    """load_state_dict copies into the Parameter the optimiser holds (not a new tensor)."""
    method = IMTL(3)
    held = method.main_optimizer_parameters()[0]["params"][0]
    state = {"step": 4, "loss_scale": torch.tensor([0.1, 0.2, 0.3])}
    method.load_state_dict(state)
    assert method.loss_scale is held and method.step == 4
    torch.testing.assert_close(held.detach(), torch.tensor([0.1, 0.2, 0.3]), rtol=0, atol=0)  # a copy
    with pytest.raises(ValueError, match="mode"):
        IMTL(3, mode="hybrid-g")
