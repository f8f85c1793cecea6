"""Auto-λ (methods/autolambda.py) against an independent transcription of the official code, lorenmt/auto-lambda
(commit bdba636): ``auto_lambda.py`` ``AutoLambda.virtual_step`` (lines 13-38), ``unrolled_backward`` (40-72),
``compute_hessian`` (74-110), driven as ``trainer_dense.py`` drives it (meta step, then model step, every iteration:
lines 153-184; λ's Adam optimiser, line 74; α = the model optimiser's current learning rate, line 161). The
transcription runs on its own copy of the model with explicit torch autograd and never calls our class."""
import copy

import pytest
import torch
from torch import nn

from methods.autolambda import AutoLambda
from tests.helpers import TinyMultiTask, make_batch

K, MAIN = 3, 1
F32 = 2.0 ** -24  # float32's unit roundoff


class LinearMultiTask(TinyMultiTask):
    """The tiny linear model: ``TinyMultiTask`` with a linear trunk (optionally with BatchNorm) instead of Linear + Tanh,
    mean squared errors."""

    def __init__(self, n_tasks=K, d_in=4, d_hidden=3, batch_norm=False):
        super().__init__(n_tasks, d_in, d_hidden)
        layers = [nn.Linear(d_in, d_hidden)] + ([nn.BatchNorm1d(d_hidden)] if batch_norm else [])
        self.shared = nn.Sequential(*layers)


def double_batch(seed):
    x, ys = make_batch(n_tasks=K, seed=seed)
    return x.double(), [y.double() for y in ys]


# -- the transcription of the official code (explicit autograd; not our class) ----------------------------------
def model_fit(model, batch):
    """``AutoLambda.model_fit`` (auto_lambda.py 112-117): the list of task losses."""
    return list(model.losses(batch))


def official_virtual_step(model, model_, meta_weights, train, alpha, model_optim):
    """auto_lambda.py lines 18-38."""
    train_loss = model_fit(model, train)
    loss = sum([w * train_loss[i] for i, w in enumerate(meta_weights)])
    gradients = torch.autograd.grad(loss, model.parameters())
    with torch.no_grad():
        for weight, weight_, grad in zip(model.parameters(), model_.parameters(), gradients):
            if 'momentum' in model_optim.param_groups[0].keys():
                m = model_optim.state[weight].get('momentum_buffer', 0.) * model_optim.param_groups[0]['momentum']
            else:
                m = 0
            weight_.copy_(weight - alpha * (m + grad + model_optim.param_groups[0]['weight_decay'] * weight))


def official_compute_hessian(model, meta_weights, d_model, train, cast=True):
    """auto_lambda.py lines 74-110; also returns the loss values at θ ± εd and ε (for the tolerances). ``cast``
    False: the derivatives are taken w.r.t. a float64 copy of the float32 meta_weights, so that L(θ ± εd) is not
    rounded to float32 before the difference (the one place where the official arithmetic loses precision)."""
    if not cast:
        meta_weights = meta_weights.detach().double().requires_grad_(True)
    norm = torch.cat([w.view(-1) for w in d_model]).norm()
    eps = 0.01 / norm
    with torch.no_grad():
        for p, d in zip(model.parameters(), d_model):
            p += eps * d
    train_loss = model_fit(model, train)
    loss = sum([w * train_loss[i] for i, w in enumerate(meta_weights)])
    d_weight_p = torch.autograd.grad(loss, meta_weights)
    with torch.no_grad():
        for p, d in zip(model.parameters(), d_model):
            p -= 2 * eps * d
    train_loss_n = model_fit(model, train)
    loss = sum([w * train_loss_n[i] for i, w in enumerate(meta_weights)])
    d_weight_n = torch.autograd.grad(loss, meta_weights)
    with torch.no_grad():
        for p, d in zip(model.parameters(), d_model):
            p += eps * d
    hessian = [((p - n) / (2. * eps)).float() for p, n in zip(d_weight_p, d_weight_n)]  # float32 either way
    values = torch.stack([torch.stack(train_loss), torch.stack(train_loss_n)]).detach()
    return hessian, values, float(eps)


def official_unrolled_backward(model, model_, meta_weights, train, val, alpha, model_optim, pri_tasks, cast=True):
    """auto_lambda.py lines 40-72."""
    official_virtual_step(model, model_, meta_weights, train, alpha, model_optim)
    pri_weights = [1.0 if t in pri_tasks else 0.0 for t in range(len(meta_weights))]
    val_loss = model_fit(model_, val)
    loss = sum([w * val_loss[i] for i, w in enumerate(pri_weights)])
    d_model = torch.autograd.grad(loss, tuple(model_.parameters()), allow_unused=True)
    hessian, values, eps = official_compute_hessian(model, meta_weights, d_model, train, cast)
    with torch.no_grad():
        for mw, h in zip([meta_weights], hessian):
            mw.grad = - alpha * h
    return values, eps


def make_optimizer(kind, parameters):
    """The official trainers' SGD with momentum (trainer_dense.py line 76), or our loop's Adam (its groups have no
    'momentum' key). Weight decay 0.05 rather than 1e-4: large enough that the look-ahead's w_d·θ term (line 38)
    moves the hypergradient far beyond the tolerances below."""
    if kind == "sgd":
        return torch.optim.SGD(parameters, lr=0.1, weight_decay=0.05, momentum=0.9)
    return torch.optim.Adam(parameters, lr=0.1, weight_decay=0.05)


@pytest.mark.parametrize("cast", [True, False], ids=["official", "uncast"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_three_iterations_match_the_official_code(kind, cast):
    """Three iterations in the official order (trainer_dense.py 153-184: meta step, then the model step with the new
    λ) with the learning rate changed between them (as a schedule would; α read at each call): the hypergradient
    −α h, λ after Adam and the parameters after the model step agree with the transcription; the model's .grad is
    Σ λ_k ∇L_k over trunk and heads; our meta_update leaves every parameter bit-identical. SGD's momentum buffer
    enters the look-ahead from the second iteration on; Adam's look-ahead is a plain step with weight decay.
    "official": the transcription as written, which rounds L(θ ± εd) to float32 (tolerances derived from that);
    "uncast": the same code without that one rounding, which ours then equals to float64 rounding; λ's float32
    gradient is then ours rounded once (fl₃₂(−α·h)) against the official twice (fl₃₂(−α·fl₃₂(h)), α cast to float32
    too), up to 2 ulps apart (5 of the 18 here differ by one), which Adam turns into ≤ 2 × that relative error."""
    torch.manual_seed(0)
    ours = LinearMultiTask().double()
    theirs = copy.deepcopy(ours)
    theirs_ = copy.deepcopy(theirs)  # the official look-ahead copy (auto_lambda.py line 8)
    meta_lr = 1e-2  # larger than the default 1e-4 so that λ's trajectory moves the model visibly
    method = AutoLambda(K, main_task=MAIN, meta_lr=meta_lr)
    optimizer = make_optimizer(kind, ours.parameters())
    method.bind_optimizer(optimizer)
    their_optimizer = make_optimizer(kind, theirs.parameters())
    meta_weights = torch.tensor([0.1] * K, requires_grad=True)  # auto_lambda.py line 9 (weight_init 0.1)
    meta_optimizer = torch.optim.Adam([meta_weights], lr=meta_lr)  # trainer_dense.py line 74
    shared, specific = ours.shared_parameters(), ours.task_specific_parameters()
    tolerance_w = tolerance_p = 0.0
    for iteration, lr in enumerate([0.1, 0.07, 0.04]):
        for opt in (optimizer, their_optimizer):
            opt.param_groups[0]["lr"] = lr
        train, val = double_batch(10 + iteration), double_batch(20 + iteration)
        # the official iteration
        meta_optimizer.zero_grad()
        values, eps = official_unrolled_backward(theirs, theirs_, meta_weights, train, val, lr, their_optimizer,
                                                 [MAIN], cast)
        their_hypergradient = meta_weights.grad.clone()
        meta_optimizer.step()
        their_optimizer.zero_grad()
        train_loss = model_fit(theirs, train)
        sum([w * train_loss[i] for i, w in enumerate(meta_weights)]).backward()
        their_optimizer.step()
        # ours
        before = [p.detach().clone() for p in ours.parameters()]
        info = method.meta_update(ours.losses, train, val, shared, task_specific_parameters=specific)
        for p, b in zip(ours.parameters(), before):  # restored exactly, not by ±εd arithmetic
            assert torch.equal(p, b)
        optimizer.zero_grad()
        result = method.backward(ours.losses(train), shared, specific)
        our_grads = [p.grad.clone() for p in ours.parameters()]
        losses = ours.losses(train)
        expected = torch.autograd.grad((result["weights"].double() * losses).sum(), list(ours.parameters()),
                                       retain_graph=True)
        task_gradient_max = max(g.abs().max().item() for k in range(K)
                                for g in torch.autograd.grad(losses[k], list(ours.parameters()), retain_graph=True,
                                                             allow_unused=True) if g is not None)
        optimizer.step()

        if cast:
            # that float32 rounding, |L±|·2⁻²⁴ each, over 2ε and times α, bounds the hypergradients' difference (the
            # earlier iterations' differences in λ, below, move it by ≤ 4e-10 here)
            tolerance_h = lr * 2 * values.abs().max().item() * F32 / (2 * eps)
            torch.testing.assert_close(info["weights_hypergradient"], their_hypergradient.double(), rtol=0,
                                       atol=tolerance_h)
            # a relative error r in Adam's gradient moves its step by at most ~2r·meta_lr (m̂/√v̂ is ratio-like); the
            # differences add up over the iterations, plus λ's float32 rounding
            relative_h = (tolerance_h / their_hypergradient.abs()).max().item()
            tolerance_w += 2 * meta_lr * relative_h + 2 * F32 * meta_weights.abs().max().item()
        else:
            # the same arithmetic up to the rounding of θ ± εd (ours from the saved θ; 2⁻⁵³|θ|·|∇L| ≈ 1e-17) over
            # 2ε ≈ 0.02: ~1e-15 (measured ≤ 4e-16)
            torch.testing.assert_close(info["weights_hypergradient"], -lr * (values[0] - values[1]) / (2 * eps),
                                       rtol=0, atol=1e-14)
            # λ's float32 gradients: ≤ 4 roundings of 2⁻²⁴ apart (ours one, the official's h, α and the product),
            # through Adam as above, plus λ's float32 rounding
            tolerance_w += 2 * meta_lr * 4 * F32 + 2 * F32 * meta_weights.abs().max().item()
        torch.testing.assert_close(result["weights"], meta_weights.detach(), rtol=0, atol=tolerance_w)
        assert torch.equal(result["weights"], info["weights"])
        for a, b in zip(our_grads, expected):  # one backward of Σ λ_k L_k (trainer_dense.py 177-183): the same
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # operations (L·λ = λ·L) on the same λ: exact
        if kind == "sgd":  # (Adam's model step is torch's in both, with no clean bound on its sensitivity to λ)
            # the parameters: the step's difference is Σ_k Δλ_k ∇L_k times lr, and the momentum buffer sums the
            # earlier ones (≤ 1 + 0.9 + 0.81), added over the iterations; the official ±εd restore (three roundings
            # of θ per iteration) and the sum's order add ~10 eps relative: 1e-14
            tolerance_p += lr * (1 + 0.9 + 0.81) * K * task_gradient_max * tolerance_w
            for a, b in zip(ours.parameters(), theirs.parameters()):
                torch.testing.assert_close(a, b, rtol=1e-14, atol=tolerance_p)


def exact_products(model, train, val, alpha, lam):
    """(∇L_k(θ)ᵀd)_k with d = ∇L_main(θ') at θ' = θ − α ∇Σλ_k L_k(θ) (plain SGD, no momentum), by autograd."""
    parameters = list(model.parameters())
    grads = torch.autograd.grad((lam * model.losses(train)).sum(), parameters)
    look = copy.deepcopy(model)
    with torch.no_grad():
        for p, g in zip(look.parameters(), grads):
            p -= alpha * g
    d = torch.autograd.grad(look.losses(val)[MAIN], list(look.parameters()))
    losses = model.losses(train)
    rows = [torch.autograd.grad(losses[k], parameters, retain_graph=True) for k in range(K)]
    products = torch.stack([sum((r * v).sum() for r, v in zip(row, d)) for row in rows])
    return products.detach(), d


def third_directional_derivative(model, train, d):
    """(d³/dt³ L_k(θ + t·u))_k at t = 0 with u = d/‖d‖, by nested autograd: the central difference's leading error
    term is (s²/6)·‖d‖·this, s = ε‖d‖ = 0.01."""
    norm = torch.sqrt(sum((v ** 2).sum() for v in d))
    units = [v / norm for v in d]
    out = []
    for k in range(K):
        t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        shifted = copy.deepcopy(model)
        params = dict(shifted.named_parameters())
        names = [name for name, _ in model.named_parameters()]
        values = {name: params[name].detach() + t * u for name, u in zip(names, units)}
        loss = torch.func.functional_call(shifted, values, (train[0],))
        loss_k = ((loss[k] - train[1][k]) ** 2).mean()
        (g1,) = torch.autograd.grad(loss_k, t, create_graph=True)
        (g2,) = torch.autograd.grad(g1, t, create_graph=True)
        (g3,) = torch.autograd.grad(g2, t)
        out.append(g3.detach())
    return torch.stack(out), norm.item()


@pytest.mark.parametrize("model_kind", ["linear", "tanh"])
def test_finite_difference_against_the_exact_product(model_kind):
    """h_k (auto_lambda.py 74-110) against ∇L_k(θ)ᵀd by autograd. The central difference with step s = ε‖d‖ = 0.01
    (line 76) along u = d/‖d‖ errs by (s²/6)·‖d‖·D³L_k[u,u,u] + O(s⁴): its error must be that leading term, to 0.1%
    (the O(s⁴) rest: relative s² = 1e-4 times the ratio of the fifth to the third derivative) plus float64 rounding of the loss values
    over 2ε. hessian_product='exact' (one forward-mode pass) matches the autograd product to float64 rounding."""
    torch.manual_seed(1)
    model = (LinearMultiTask() if model_kind == "linear" else TinyMultiTask()).double()
    train, val = double_batch(3), double_batch(4)
    alpha = 0.1
    method = AutoLambda(K, main_task=MAIN)
    method.bind_optimizer(torch.optim.SGD(model.parameters(), lr=alpha))
    products, d = exact_products(model, train, val, alpha, method.weights.double())
    third, norm = third_directional_derivative(model, train, d)
    eps = 0.01 / norm
    rounding = 8 * model.losses(train).detach().abs().max().item() * 2.0 ** -53 / (2 * eps)
    leading = (0.01 ** 2 / 6) * norm * third
    info = method.meta_update(model.losses, train, val, model.shared_parameters(), model.task_specific_parameters())
    error = -info["weights_hypergradient"] / alpha - products
    torch.testing.assert_close(error, leading, rtol=1e-3, atol=rounding)
    assert leading.abs().max() > 100 * rounding  # the case has a visible truncation error to compare
    exact = AutoLambda(K, main_task=MAIN, hessian_product="exact")
    exact.bind_optimizer(torch.optim.SGD(model.parameters(), lr=alpha))
    info = exact.meta_update(model.losses, train, val, model.shared_parameters(), model.task_specific_parameters())
    # a forward-mode tangent against a reverse-mode dot product over ≤ 51 parameters: ≤ 51 eps relative to the sum of
    # the terms' sizes (O(1)), ~1e-14; measured 4e-16
    torch.testing.assert_close(-info["weights_hypergradient"] / alpha, products, rtol=1e-13, atol=1e-14)


def test_groups_with_their_own_learning_rates():
    """Heads at another learning rate than the trunk (ours: each parameter's group; the official code reads group 0
    for all): the look-ahead's derivative is −Σ_p α_p ∇_p L_kᵀ d_p, computed exactly (hessian_product='exact')."""
    torch.manual_seed(2)
    model = LinearMultiTask().double()
    train, val = double_batch(5), double_batch(6)
    lrs = {"shared": 0.1, "heads": 0.03}
    method = AutoLambda(K, main_task=MAIN, hessian_product="exact")
    method.bind_optimizer(torch.optim.SGD([{"params": model.shared_parameters(), "lr": lrs["shared"]},
                                           {"params": model.task_specific_parameters(), "lr": lrs["heads"]}]))
    parameters = model.shared_parameters() + model.task_specific_parameters()
    alphas = [lrs["shared"]] * len(model.shared_parameters()) + [lrs["heads"]] * len(model.task_specific_parameters())
    grads = torch.autograd.grad((method.weights.double() * model.losses(train)).sum(), parameters)
    look = copy.deepcopy(model)
    with torch.no_grad():
        for p, g, a in zip(look.shared_parameters() + look.task_specific_parameters(), grads, alphas):
            p -= a * g
    d = torch.autograd.grad(look.losses(val)[MAIN], look.shared_parameters() + look.task_specific_parameters())
    losses = model.losses(train)
    expected = torch.stack([
        -sum(a * (r * v).sum() for a, r, v in zip(alphas, torch.autograd.grad(losses[k], parameters,
                                                                               retain_graph=True), d))
        for k in range(K)]).detach()
    info = method.meta_update(model.losses, train, val, model.shared_parameters(), model.task_specific_parameters())
    # float64 rounding: a forward-mode tangent against 27-term dot products, ~27 eps relative (measured 7e-15 on a
    # component of 0.03, 6e-17 absolute)
    torch.testing.assert_close(info["weights_hypergradient"], expected, rtol=1e-13, atol=1e-15)


def test_batch_norm_statistics_follow_the_official_forward_passes():
    """The official meta step runs three training-batch forward passes on the model (at θ, θ + εd, θ − εd: lines 22,
    85, 98), which move BatchNorm's running statistics, and the look-ahead's validation pass on its copy, which
    does not touch them. Ours: the same statistics; update_buffers=False leaves them as they were."""
    torch.manual_seed(3)
    model = LinearMultiTask(batch_norm=True).double()
    theirs, theirs_ = copy.deepcopy(model), copy.deepcopy(model)
    twin, model_before = copy.deepcopy(model), copy.deepcopy(model)
    train, val = double_batch(7), double_batch(8)
    meta_weights = torch.tensor([0.1] * K, requires_grad=True)
    their_optimizer = make_optimizer("sgd", theirs.parameters())
    official_unrolled_backward(theirs, theirs_, meta_weights, train, val, 0.1, their_optimizer, [MAIN])
    method = AutoLambda(K, main_task=MAIN)
    method.bind_optimizer(make_optimizer("sgd", model.parameters()))
    method.meta_update(model.losses, train, val, model.shared_parameters(), model.task_specific_parameters())
    bn, their_bn = model.shared[1], theirs.shared[1]
    assert int(bn.num_batches_tracked) == int(their_bn.num_batches_tracked) == 3
    # the statistics at θ ± εd: the official perturbation (θ + εd, then − 2εd) and ours (from the saved θ) differ by
    # rounding of θ only (≤ 2 ulps), through one 4-input linear layer and three momentum updates: a few eps
    # absolute on O(1) statistics (measured: 5.5e-17 on a mean of 0.13; the variances equal)
    torch.testing.assert_close(bn.running_mean, their_bn.running_mean, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(bn.running_var, their_bn.running_var, rtol=1e-13, atol=1e-15)
    exact = AutoLambda(K, main_task=MAIN, hessian_product="exact")  # one forward-mode pass in place of θ ± εd
    exact.bind_optimizer(make_optimizer("sgd", twin.parameters()))
    exact.meta_update(twin.losses, train, val, twin.shared_parameters(), twin.task_specific_parameters())
    assert int(twin.shared[1].num_batches_tracked) == 2 and fwAD_free(twin)
    twin = copy.deepcopy(model_before)
    frozen = AutoLambda(K, main_task=MAIN, update_buffers=False)
    frozen.bind_optimizer(make_optimizer("sgd", twin.parameters()))
    buffers = [b.clone() for b in twin.buffers()]
    frozen.meta_update(twin.losses, train, val, twin.shared_parameters(), twin.task_specific_parameters())
    assert all(torch.equal(b, saved) for b, saved in zip(twin.buffers(), buffers))


def fwAD_free(model):
    """No parameter or buffer keeps a forward-mode tangent after the meta step."""
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        return all(fwAD.unpack_dual(t).tangent is None for t in [*model.parameters(), *model.buffers()])


def test_weights_rise_when_the_validation_batch_is_the_training_batch():
    """A sign check by hand: with L_V's batch = the training batch and a small look-ahead step, h_main =
    ∇L_main(θ)ᵀ∇L_main(θ') > 0, so −α h_main < 0 and Adam's first step raises λ_main by meta_lr (its first step is
    meta_lr·sign: m̂/√v̂ = g/|g| up to eps 1e-8)."""
    torch.manual_seed(5)
    model = LinearMultiTask().double()
    method = AutoLambda(K, main_task=MAIN)
    method.bind_optimizer(torch.optim.SGD(model.parameters(), lr=1e-3))
    batch = double_batch(9)
    info = method.meta_update(model.losses, batch, batch, model.shared_parameters(), model.task_specific_parameters())
    assert info["weights_hypergradient"][MAIN] < 0
    # λ is float32: 0.1 + 1e-4 rounded, and Adam's eps changes the step by ~1e-8/|g| relative
    assert info["weights"][MAIN].item() == pytest.approx(0.1 + 1e-4, abs=2e-8)


def test_declarations_and_defaults():
    method = AutoLambda(K, main_task=MAIN)
    assert AutoLambda.meta_interval == 1 and AutoLambda.has_meta_update and AutoLambda.uses_main_task
    assert not AutoLambda.in_paper and AutoLambda.label == "Auto-λ"
    assert method.weights.tolist() == [pytest.approx(0.1, rel=F32, abs=0)] * K  # trainer_dense.py line 20; float32
    assert method.meta_lr == 1e-4  # trainer_dense.py line 21


def test_meta_update_needs_the_optimiser():
    model = LinearMultiTask().double()
    with pytest.raises(RuntimeError, match="bind_optimizer"):
        AutoLambda(K).meta_update(model.losses, double_batch(0), double_batch(1), model.shared_parameters())


def test_nan_validation_loss_leaves_everything_unchanged():
    torch.manual_seed(4)
    model = LinearMultiTask().double()
    method = AutoLambda(K, main_task=MAIN)
    method.bind_optimizer(make_optimizer("sgd", model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(method.state_dict())
    train, val = double_batch(0), double_batch(1)
    val[1][MAIN][0] = float("nan")
    with pytest.raises(FloatingPointError, match="meta-validation"):
        method.meta_update(model.losses, train, val, model.shared_parameters(), model.task_specific_parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    for key, value in method.state_dict().items():
        assert torch.equal(value, state[key]) if isinstance(value, torch.Tensor) else value == state[key]
