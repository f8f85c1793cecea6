"""Our Gram-based methods through TorchJD (``methods/adapters/torchjd.py``), tested against torchjd itself.

Float64 throughout. Tolerances (``TOL``, relative to max(1, max|b|)): TorchJD forms the Gramian by its own passes
(autogram: per-module Jacobians summed; autojac: the stacked Jacobian), so it equals ours to round-off (94 parameters:
≤ 94 eps ≈ 2e-14 relative). The closed forms (PCGrad, GCS, IMTL-G) and MGDA's solver on the same path carry that
over: 1e-12 (measured ≤ 4e-16 for every method here). The iterative solvers may turn a round-off difference into one
of their stopping tolerance (as in tests/test_foreign_loop.py's ``SOLVES``): Nash-MTL's and AuxiNash's Newton solve
stops anywhere below a relative residual of 1e-8 (1e-7 on w), CAGrad's barrier at a duality gap of 1e-10 (1e-6).
MGDA's official solver would move by up to its 1e-5 stopping step if rounding changed its iteration count, which
needs a step within ~1e-16 relative of 1e-5 (not covered: no tolerance short of 1e-5 would).
"""
from __future__ import annotations

import pytest
import torch

from methods import METHOD_NAMES, get_method
from methods.gradients import per_task_gradients

torchjd = pytest.importorskip("torchjd")
from torchjd.autogram import Engine  # noqa: E402
from torchjd.autojac import backward as jd_backward, jac_to_grad  # noqa: E402

from methods.adapters.torchjd import MethodWeighting, aggregator, gram_based_names, meta_update, paused  # noqa: E402

K = 3
ROUND_OFF = 1e-12
TOL = {"nashmtl": 1e-7, "auxinash": 1e-7, "cagrad": 1e-6}  # the solvers' stopping rules (docstring); else ROUND_OFF


def build(seed: int = 0):
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6)).double()
    heads = torch.nn.ModuleList([torch.nn.Linear(6, 1) for _ in range(K)]).double()
    return trunk, heads


def compute_losses_for(trunk, heads):
    def compute_losses(batch):
        x, ys = batch
        features = trunk(x)
        return torch.stack([((head(features) - y) ** 2).mean() for head, y in zip(heads, ys)])
    return compute_losses


def batches(n: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 4, generator=generator, dtype=torch.float64)
        ys = [torch.sin(x[:, :1] * scale) + 0.1 * torch.randn(16, 1, generator=generator, dtype=torch.float64)
              for scale in (1.0, 2.0, -1.0)]
        out.append((x, ys))
    return out


def close(a, b, tol):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(b.abs().max())))


def test_gram_based_methods_are_the_expected_ones():
    names = gram_based_names()
    assert {"pcgrad", "cagrad", "nashmtl", "gcs", "auxinash", "mgda"} <= set(names)
    for name in METHOD_NAMES:
        method = get_method(name, n_tasks=K)
        if name not in names:
            with pytest.raises(TypeError, match="Gram-based"):
                MethodWeighting(method)
    assert get_method("imtl", n_tasks=K, mode="gradient").gram_based


@pytest.mark.parametrize("name,settings", [(name, {}) for name in ("pcgrad", "cagrad", "nashmtl", "gcs", "auxinash",
                                                                    "mgda")] + [("imtl", {"mode": "gradient"})])
def test_weights_from_gram_and_torchjd_aggregator_equal_backward(name, settings):
    """Three steps: our ``backward`` on one copy, ``torchjd.autojac.backward`` + ``jac_to_grad`` with our aggregator
    on the shared parameters (and the heads given ``task_specific_weights``) on another: same weights, same .grad."""
    ours_model, theirs_model = build(), build()
    ours = get_method(name, n_tasks=K, **settings)
    theirs = get_method(name, n_tasks=K, **settings)
    agg = aggregator(theirs)
    weighting = agg.gramian_weighting
    for batch in batches(3):
        for model in (ours_model, theirs_model):
            for p in list(model[0].parameters()) + list(model[1].parameters()):
                p.grad = None
        shared, specific = list(ours_model[0].parameters()), list(ours_model[1].parameters())
        info = ours.backward(compute_losses_for(*ours_model)(batch), shared, specific)

        shared_t, specific_t = list(theirs_model[0].parameters()), list(theirs_model[1].parameters())
        losses = compute_losses_for(*theirs_model)(batch)
        weighting.loss_values = losses.detach()
        jd_backward(losses, inputs=shared_t, retain_graph=True)
        jac_to_grad(shared_t, agg)
        torch.autograd.backward(losses, weighting.task_specific_weights, inputs=specific_t)

        tol = TOL.get(name, ROUND_OFF)
        assert close(weighting.info["weights"], info["weights"], tol)
        for a, b in zip(shared_t + specific_t, shared + specific):
            assert close(a.grad, b.grad, tol), name
        for a, b in zip(theirs_model[0].parameters(), ours_model[0].parameters()):  # same SGD step on both
            with torch.no_grad():
                a -= 0.1 * a.grad
                b -= 0.1 * b.grad


def test_auxinash_through_torchjd_engine_equals_our_loop_with_meta_updates():
    """AuxiNash for 8 Adam steps, a meta-update every 2: our loop (``backward``) against TorchJD's autogram engine
    (``Engine.compute_gramian`` → ``MethodWeighting`` → ``losses.backward``), the meta-update under ``paused``."""
    data, meta = batches(8, seed=1), batches(8, seed=2)
    runs = {}
    for mode in ("ours", "torchjd"):
        trunk, heads = build()
        shared, specific = list(trunk.parameters()), list(heads.parameters())
        method = get_method("auxinash", n_tasks=K, meta_lr=0.5)  # a larger p step, so that p visibly moves
        optimizer = torch.optim.Adam(shared + specific, lr=1e-2)
        compute_losses = compute_losses_for(trunk, heads)
        engine = Engine(trunk, batch_dim=None) if mode == "torchjd" else None
        weighting = MethodWeighting(method) if mode == "torchjd" else None
        weights = []
        for step, batch in enumerate(data):
            optimizer.zero_grad()
            losses = compute_losses(batch)
            if mode == "ours":
                weights.append(method.backward(losses, shared, specific)["weights"])
            else:
                gramian = engine.compute_gramian(losses)
                w = weighting(gramian)
                torch.autograd.backward(losses, w, inputs=shared, retain_graph=True)
                torch.autograd.backward(losses, weighting.task_specific_weights, inputs=specific)
                weights.append(weighting.info["weights"])
            optimizer.step()
            if step % 2 == 1:
                meta_update(method, engine, compute_losses, batch, meta[step], shared, specific)
        runs[mode] = (method, weights, [p.detach().clone() for p in shared + specific])
    (ours, ours_w, ours_p), (theirs, theirs_w, theirs_p) = runs["ours"], runs["torchjd"]
    assert not torch.allclose(ours.p, torch.ones(K, dtype=torch.float64), atol=1e-3)  # p was learned
    tol = TOL["auxinash"]  # its Newton solve at every step (measured ≤ 4e-16 apart after 8 Adam steps)
    assert close(theirs.p, ours.p, tol) and close(theirs.alpha, ours.alpha, tol)
    for a, b in zip(theirs_w, ours_w):
        assert close(a, b, tol)
    for a, b in zip(theirs_p, ours_p):
        assert close(a, b, tol)


def test_meta_update_without_paused_breaks_the_engine_and_paused_fixes_it():
    """Why ``paused`` exists: the engine counts the meta-update's forward passes and then refuses the next Gramian."""
    trunk, heads = build()
    shared, specific = list(trunk.parameters()), list(heads.parameters())
    compute_losses = compute_losses_for(trunk, heads)
    method = get_method("auxinash", n_tasks=K)
    weighting = MethodWeighting(method)
    engine = Engine(trunk, batch_dim=None)
    data, meta = batches(3), batches(3, seed=5)
    losses = compute_losses(data[0])
    losses.backward(weighting(engine.compute_gramian(losses)))
    method.meta_update(compute_losses, data[0], meta[0], shared, specific)  # not paused
    with pytest.raises(ValueError, match="forward pass without an associated backward"):
        engine.compute_gramian(compute_losses(data[1]))
    engine = Engine(trunk, batch_dim=None)  # (an Engine built again is the other way out)
    losses = compute_losses(data[1])
    losses.backward(weighting(engine.compute_gramian(losses)))
    with paused(engine):
        method.meta_update(compute_losses, data[1], meta[1], shared, specific)
    losses = compute_losses(data[2])
    assert engine.compute_gramian(losses).shape == (K, K)


def test_mgda_needs_its_loss_values():
    method = get_method("mgda", n_tasks=K)
    with pytest.raises(ValueError, match="loss_values"):
        method.weights_from_gram(torch.eye(K, dtype=torch.float64))
    assert get_method("mgda", n_tasks=K, normalization="none").weights_from_gram(torch.eye(K)).get("weights") is not None


def test_weights_from_gram_equals_combine_on_per_task_gradients():
    trunk, heads = build()
    shared = list(trunk.parameters())
    losses = compute_losses_for(trunk, heads)(batches(1)[0])
    grads = per_task_gradients(losses, shared, [])
    a, b = get_method("auxinash", n_tasks=K), get_method("auxinash", n_tasks=K)
    w, _, _ = a.combine(grads)
    info = b.weights_from_gram(grads.gram())  # exact: combine computes this same Gram matrix from the same grads
    assert torch.equal(info["weights"], w) and torch.equal(a.gram, b.gram) and b.step == 1
    assert torch.equal(info["p"], b.p.float())
