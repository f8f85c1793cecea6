"""The methods in loops that other people wrote (issue 30), registry-wide: every case is parametrised over
``METHOD_NAMES``, so a new method inherits it. The calls are those of the official AuxiNash / Nash-MTL trainers
(``representation=features`` passed to every method, ``loss, extra = method.backward(...)``), of users' loops
(a ``model.parameters()`` generator reused across steps, heads left out of the lists, empty lists, micro-batches
with gradient accumulation, ``torch.compile``) and the README's snippet. Each case either equals the intended
algorithm (the reference is the same method called as intended; where the two runs do the same arithmetic the
comparison is exact, otherwise the tolerance and its reason are beside it) or asserts the warning's or error's text.

Cost: a 4 → 6 → 3 × 1 network in float64 on 16 samples; per method about 40 backward calls and, for the methods
that learn from meta batches, four meta-updates (≤ 0.1 s per method on the 2-core CPU, 6 s for the file), of which
the compile case's one ``torch.compile(backend="aot_eager")`` of the tiny network, 2-3 s, is shared by all methods.
"""
from __future__ import annotations

import copy
import json
import pickle
import re
import warnings

import pytest
import torch

from methods import METHOD_NAMES, METHODS, BackwardResult, GradientMethod, get_method, method_settings
from tests.helpers import TinyMultiTask, make_batch

GRADIENT_SPACE = [n for n in METHOD_NAMES if "gradient_space" in method_settings(n)]

# settings under which a method's step-dependent branches (reused weights, OL-AUX's weight iteration) fall within
# the few steps of the accumulation case; a method not named here is tested with its defaults
BRANCHES = {"olaux": [{"interval": 2}, {"interval": 2, "form": "accumulated"}],
            "nashmtl": [{}, {"update_weights_every": 2}], "auxinash": [{}, {"update_weights_every": 2}],
            "auxilearn": [{}, {"train_on_loss": True}, {"linear": True}]}


def cases(names=METHOD_NAMES):
    return [pytest.param(name, settings, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in settings.items()) or 'default'}")
            for name in names for settings in BRANCHES.get(name, [{}])]


def double_batch(n=16, seed=0):
    x, ys = make_batch(n=n, seed=seed)
    return x.double(), [y.double() for y in ys]


def model_and_batch(seed=0):
    torch.manual_seed(seed)
    return TinyMultiTask().double(), double_batch()


def losses_and_features(model, batch):
    """The official trainers' forward pass: the K losses and the shared features they were computed from."""
    x, ys = batch
    features = model.shared(x)
    return torch.stack([((head(features) - y) ** 2).mean() for head, y in zip(model.heads, ys)]), features


def grads(model):
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def assert_same(a, b, **tolerance):
    assert [x is None for x in a] == [y is None for y in b]
    for x, y in zip(a, b):
        if x is not None:
            torch.testing.assert_close(x, y, **(tolerance or {"rtol": 0, "atol": 0}))


# -- the official trainer's call pattern ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_official_call_pattern_runs_the_method_on_the_shared_parameters(name):
    """``representation=features`` on every step, as the official trainers pass it: ignored, with one warning per
    method instance, by a method that bargains over the shared parameters (the default, as the official code);
    the update is exactly that of the call without it (the same code path). Methods that take one backward pass of
    the whole loss (LS, STL, AuxiLearn) compute the same either way and say nothing."""
    model, batch = model_and_batch()
    twin = copy.deepcopy(model)
    method, reference = get_method(name, 3), get_method(name, 3)
    for step in range(2):
        for net in (model, twin):
            net.zero_grad(set_to_none=True)
        losses, features = losses_and_features(model, batch)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = method.backward(losses=losses, shared_parameters=list(model.shared_parameters()),
                                   task_specific_parameters=list(model.task_specific_parameters()),
                                   representation=features)
        found = [w for w in caught if "representation" in str(w.message)]
        messages = [str(w.message) for w in found]
        if name in GRADIENT_SPACE and step == 0:
            assert len(messages) == 1 and "ignoring representation=" in messages[0], messages
            assert "gradient_space='representation'" in messages[0]
            assert found[0].filename == __file__  # it points at the caller's line
        else:
            assert messages == []
        expected = reference.backward(losses_and_features(twin, batch)[0], twin.shared_parameters(),
                                      twin.task_specific_parameters())
        assert_same(grads(model), grads(twin))
        torch.testing.assert_close(info["weights"], expected["weights"], rtol=0, atol=0)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_official_unpacking_idiom_is_refused(name):
    """``loss, extra_outputs = weight_method.backward(...)`` (official trainers) would bind two key strings."""
    model, batch = model_and_batch()
    info = get_method(name, 3).backward(model.losses(batch), model.shared_parameters(),
                                        model.task_specific_parameters())
    with pytest.raises(TypeError, match=re.escape("`loss, extra = method.backward(...)`")) as error:
        loss, extra = info
    assert "info = method.backward(...)" in str(error.value)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_backward_result_reads_as_a_dict(name):
    """Everything a loop does with the info dict but unpacking it: keys, membership, get, iteration, ``**``,
    ``dict()``, JSON (the loop writes ``weights`` and ``p`` as numbers: ``.tolist()``), copies and pickling."""
    model, batch = model_and_batch()
    info = get_method(name, 3).backward(model.losses(batch), model.shared_parameters(),
                                        model.task_specific_parameters())
    assert isinstance(info, BackwardResult) and isinstance(info, dict)
    assert info["weights"].shape == (3,) and "weights" in info
    assert ("p" in info) == (name == "auxinash") and (info.get("p") is None) == (name != "auxinash")
    as_dict = dict(info)
    assert as_dict == info and {**info} == as_dict
    assert (lambda **kwargs: set(kwargs))(**info) == set(info.keys())
    assert [k for k, _ in info.items()] == list(info.keys())
    text = json.dumps(info, default=torch.Tensor.tolist)
    assert json.loads(text)["weights"] == info["weights"].tolist()
    assert json.dumps({k: v.tolist() for k, v in info.items()}) == text
    for restored in (copy.copy(info), copy.deepcopy(info), pickle.loads(pickle.dumps(info))):
        assert type(restored) is BackwardResult and restored.keys() == info.keys()
    assert list(info) == [key for key in info] == sorted(info, key=list(info.keys()).index)
    with pytest.raises(TypeError, match="info = method.backward"):
        first, *rest = info


# -- gradient space is a declared setting ----------------------------------------------------------------------------
def test_exactly_the_per_task_gradient_methods_declare_their_gradient_space():
    assert set(GRADIENT_SPACE) == {n for n in METHOD_NAMES if issubclass(METHODS[n], GradientMethod)}
    assert all(method_settings(n)["gradient_space"] == "parameters" for n in GRADIENT_SPACE)


@pytest.mark.parametrize("name", GRADIENT_SPACE)
def test_representation_setting_without_a_representation_names_the_fix(name):
    """At the first step that takes per-task gradients (OL-AUX's ARML form reuses its weights until step 20)."""
    model, batch = model_and_batch()
    method = get_method(name, 3, gradient_space="representation")
    with pytest.raises(ValueError, match=r"gradient_space='representation'.*pass backward\(\.\.\., representation="):
        for _ in range(25):
            method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())


@pytest.mark.parametrize("name", [n for n in GRADIENT_SPACE if "fast" in method_settings(n)])
def test_fast_is_the_representation_setting(name):
    """``fast=True`` and ``gradient_space="representation"`` are one computation (exact: one code path)."""
    model, batch = model_and_batch()
    twin = copy.deepcopy(model)
    results = []
    for method, net in ((get_method(name, 3, fast=True), model),
                        (get_method(name, 3, gradient_space="representation"), twin)):
        losses, features = losses_and_features(net, batch)
        results.append(method.backward(losses, net.shared_parameters(), net.task_specific_parameters(),
                                       representation=features)["weights"])
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    assert_same(grads(model), grads(twin))


# -- parameter lists ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_reused_parameter_generator_is_refused_at_its_second_use(name):
    """``shared = model.shared.parameters()`` once, before the loop: step 1 is the method's (exact: the generator
    is read into the same list), step 2 would see an empty generator."""
    model, batch = model_and_batch()
    twin = copy.deepcopy(model)
    method = get_method(name, 3)
    shared, heads = model.shared.parameters(), model.heads.parameters()
    method.backward(model.losses(batch), shared, heads)
    get_method(name, 3).backward(twin.losses(batch), twin.shared_parameters(), twin.task_specific_parameters())
    assert_same(grads(model), grads(twin))
    for argument, (first, second) in {"shared_parameters": (shared, model.task_specific_parameters()),
                                      "task_specific_parameters": (model.shared_parameters(), heads)}.items():
        with pytest.raises(ValueError, match=rf"{argument} is an iterator that yields nothing.*list\(model"):
            method.backward(model.losses(batch), first, second)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_heads_left_out_of_the_lists_are_named(name):
    """A method that takes per-task gradients writes ``.grad`` of the listed parameters only: heads in neither list
    would stay untrained, so every method refuses them at the first call, naming shape and task, writing nothing."""
    model, batch = model_and_batch()
    with pytest.raises(ValueError, match=r"6 trainable tensor\(s\) that are in neither") as error:
        get_method(name, 3).backward(model.losses(batch), model.shared_parameters())
    for part in ("a parameter of shape (1, 6)", "task 0)", "task_specific_parameters", "requires_grad=False"):
        assert part in str(error.value)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match=r"2 trainable tensor\(s\).*task 2\)"):  # one head missing
        get_method(name, 3).backward(model.losses(batch), model.shared_parameters(),
                                     list(model.heads[:2].parameters()))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_empty_lists(name):
    """An empty ``shared_parameters`` is refused; a list whose parameters are all frozen is legal (the frozen ones
    keep ``.grad`` None, as ``torch.optim`` skips them); no heads at all (``()``) is legal for a model without."""
    model, batch = model_and_batch()
    with pytest.raises(ValueError, match=r"shared_parameters is empty.*list\(model"):
        get_method(name, 3).backward(model.losses(batch), [], model.task_specific_parameters())
    model.shared.requires_grad_(False)
    info = get_method(name, 3).backward(model.losses(batch), model.shared_parameters(),
                                        model.task_specific_parameters())
    assert torch.isfinite(info["weights"]).all()
    assert all(p.grad is None for p in model.shared_parameters())
    shared_only = torch.nn.Linear(4, 3).double()
    x, ys = batch
    losses = ((shared_only(x) - torch.cat(ys, dim=1)) ** 2).mean(0)
    get_method(name, 3).backward(losses, list(shared_only.parameters()), ())
    assert all(p.grad is not None for p in shared_only.parameters())


# -- gradient accumulation ------------------------------------------------------------------------------------------
STEPS = 3
ROUND_OFF = dict(rtol=1e-10, atol=1e-12)  # measured ≤ 1e-12 relative: a factor 100 for another machine's rounding
# Nash: Newton stopped anywhere below relative residual 1e-8 (measured here ≤ 1e-12, as it usually ends at round-off);
# CAGrad: the barrier method stops at a duality gap of 1e-10, which bounds w to ~1e-5 (measured 1.2e-9 relative)
SOLVES = {"nashmtl": dict(rtol=1e-7, atol=1e-10), "auxinash": dict(rtol=1e-7, atol=1e-10),
          "cagrad": dict(rtol=1e-6, atol=1e-9)}


@pytest.mark.parametrize("name, settings", cases())
def test_accumulation_equals_one_backward_on_the_union_batch(name, settings):
    """Two micro-batches of 8 (each micro-batch's mean losses / 2, the usual idiom; no BatchNorm), then one
    ``backward_accumulated``, against one ``backward`` on the union's 16, for ``STEPS`` SGD steps with a meta-update
    after step 2: the same ``.grad``, weights, p and learned state. Not exact: the union's gradients are summed over
    16 samples at once, the accumulated ones as two sums of 8, which differ in the last bits (float64), hence
    ``ROUND_OFF``; an iterative solve can turn that into a difference up to its stopping rule (``SOLVES``)."""
    model, union = model_and_batch()
    twin = copy.deepcopy(model)
    whole, micro = get_method(name, 3, **settings), get_method(name, 3, **settings)
    params = {id(m): (m, net) for m, net in ((whole, model), (micro, twin))}
    optimizers = {key: torch.optim.SGD([{"params": list(net.parameters())}, *method.main_optimizer_parameters()],
                                       lr=0.05) for key, (method, net) in params.items()}
    for key, (method, _) in params.items():
        method.bind_optimizer(optimizers[key])
    halves = [(union[0][part], [y[part] for y in union[1]]) for part in (slice(0, 8), slice(8, 16))]
    tolerance = SOLVES.get(name, ROUND_OFF)
    for step in range(1, STEPS + 1):
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        expected = whole.backward(model.losses(union), model.shared_parameters(), model.task_specific_parameters())
        for half in halves:
            micro.accumulate(twin.losses(half) / 2, twin.shared_parameters(), twin.task_specific_parameters())
        got = micro.backward_accumulated()
        assert type(got) is BackwardResult and got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], **tolerance)
        assert_same(grads(twin), grads(model), **tolerance)
        for opt in optimizers.values():
            opt.step()
        if step == 2:  # the meta-update reads the state the accumulated steps left (α, the Gram matrix, p)
            for method, net in params.values():
                method.meta_update(net.losses, union, double_batch(seed=1), net.shared_parameters())
    assert micro.step == whole.step == STEPS  # steps are optimiser steps, not micro-batches
    for key, value in whole.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(micro.state_dict()[key], value, **tolerance)
    for a, b in zip(twin.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_accumulation_misuse_is_named(name):
    model, batch = model_and_batch()
    method = get_method(name, 3)
    with pytest.raises(RuntimeError, match=r"no micro-batch was accumulated.*accumulate\("):
        method.backward_accumulated()
    method.accumulate(model.losses(batch) / 2, model.shared_parameters(), model.task_specific_parameters())
    with pytest.raises(RuntimeError, match=r"1 micro-batch\(es\) were given to accumulate\(\).*backward_accumulated"):
        method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    with pytest.raises(ValueError, match="parameter lists differ"):
        method.accumulate(model.losses(batch) / 2, model.shared_parameters()[:1], model.task_specific_parameters())
    method.backward_accumulated()
    assert method.step == 1


@pytest.mark.parametrize("name", GRADIENT_SPACE)
def test_representation_space_cannot_accumulate(name):
    model, batch = model_and_batch()
    losses, features = losses_and_features(model, batch)
    with pytest.raises(ValueError, match="cannot accumulate micro-batches.*every micro-batch's own encoder graph"):
        get_method(name, 3, gradient_space="representation").accumulate(
            losses, model.shared_parameters(), model.task_specific_parameters(), representation=features)


# -- torch.compile ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled_model():
    """A compiled tiny network, the first time only (the aot_eager backend: torch's autograd compilation without a C++
    compiler, which is what makes a second-order pass fail)."""
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    model = TinyMultiTask().double()
    compiled = torch.compile(model, backend="aot_eager")
    try:  # torch compiles the backward at its first call: one that retains the graph, as per-task gradients must
        # (after a first plain backward, torch would donate the saved buffers and refuse retain_graph=True)
        torch.stack([out.sum() for out in compiled(double_batch()[0])]).sum().backward(retain_graph=True)
    except Exception as error:  # noqa: BLE001 - a platform where compile cannot run at all
        pytest.skip(f"torch.compile cannot run here: {error}")
    return model, compiled


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_compiled_model(name, compiled_model):
    """``backward`` through the compiled module equals the uncompiled one (aot_eager runs the same ATen ops; its
    backward sums some gradients in another order: 1e-12 relative in float64). ``meta_update`` through it cannot
    differentiate twice: an error naming ``model._orig_mod``, or, for a first-order meta-update (Auto-λ's finite
    difference), the uncompiled method's result; through ``_orig_mod`` it is the uncompiled method."""
    model, compiled = compiled_model
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    twin = copy.deepcopy(model)
    batch = double_batch()

    def compiled_losses(b):
        x, ys = b
        return torch.stack([((out - y) ** 2).mean() for out, y in zip(compiled(x), ys)])

    method, reference = get_method(name, 3), get_method(name, 3)
    method.bind_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
    reference.bind_optimizer(torch.optim.SGD(twin.parameters(), lr=0.05))
    model.zero_grad(set_to_none=True)
    info = method.backward(compiled_losses(batch), model.shared_parameters(), model.task_specific_parameters())
    expected = reference.backward(twin.losses(batch), twin.shared_parameters(), twin.task_specific_parameters())
    tolerance = dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(info["weights"], expected["weights"], **tolerance)
    assert_same(grads(model), grads(twin), **tolerance)
    val = double_batch(seed=1)
    if METHODS[name].has_meta_update:
        try:  # either the named error (a double backward), leaving the state as it was, or ...
            method.meta_update(compiled_losses, batch, val, model.shared_parameters())
        except RuntimeError as error:
            assert re.search(r"torch\.compile'd module.*model\._orig_mod", str(error), re.S), error
        else:  # ... a first-order meta-update ran through it: the reference takes the same step (compared below)
            reference.meta_update(twin.losses, batch, val, twin.shared_parameters())
    method.meta_update(compiled._orig_mod.losses, batch, val, model.shared_parameters())
    reference.meta_update(twin.losses, batch, val, twin.shared_parameters())
    for key, value in reference.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(method.state_dict()[key], value, **tolerance)


# -- the README's snippets ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["README.md", "methods/README.md"])
def test_readme_python_snippets_run(path):
    """Every ```python block of the README and methods/README runs as written (issue 30: the README's snippet
    printed info["p"], a KeyError for 8 of 9 methods); a block that needs what this repository cannot have (LibMTL's
    trainer, a path on the reader's machine) opens with a ``# needs: ...`` line saying what, and is compiled only."""
    import os
    text = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), path)).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks or path != "README.md"
    for block in blocks:
        code = compile(block, path, "exec")
        if not block.startswith("# needs:"):
            exec(code, {"__name__": "readme"})
