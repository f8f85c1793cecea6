"""Implicit differentiation with a truncated Neumann series (AuxiLearn, Navon et al., ICLR 2021, Alg. 1;
Lorraine et al., AISTATS 2020).

At a minimiser θ*(φ) of the training loss L_T(θ, φ), the hypergradient of a validation loss L_V is

    dL_V/dφ = −∇_θ L_Vᵀ H⁻¹ ∂²L_T/∂θ∂φ,       H = ∇²_θ L_T.                        (1)

H⁻¹v is approximated by the truncated Neumann series η Σ_{j=0..J} (I − ηH)^j v, which converges to
H⁻¹v for 0 < η < 2/λ_max(H). As in AuxiLearn's and the official AuxiNash code, ``neumann_series`` returns
the sum WITHOUT the leading factor η, so the hypergradients built on it are the estimate of (1) times 1/η:
a constant factor that the meta learning rate and the hypergradient clipping absorb, kept so that the
official defaults (η = 1e-4, J = 3, meta lr 5e-3, clipping) mean what they mean there.

Under torch.distributed every gradient and product here (∇_θ L_V, each H v, the mixed term) is averaged over
the ranks (``distributed.average``): with mean losses and equal shards, the products of the union batch.

Hessian-vector products are exact, by one of two modes (``hvp``):

* ``"reverse"`` (reverse-over-reverse, the official AuxiNash / AuxiLearn code, ``implicit_diff/implicit_diff.py``
  of AvivSham/auxinash): one backward pass with ``create_graph`` builds ∇_θ L_T, then every product H v and the
  mixed term vᵀ ∂²L_T/∂θ∂φ is a backward pass through that gradient (double backward);
* ``"forward"`` (forward-over-reverse, a named deviation): the parameters θ carry the tangent v
  (``torch.autograd.forward_ad``), the training loss is evaluated again and differentiated once in reverse
  mode; the tangent of ∇_θ L_T is H v and the tangent of ∇_φ L_T is the mixed term. It needs the training
  loss as a function (re-evaluated J + 1 times, with the random state and the module buffers of the first
  evaluation: batch-norm running statistics are updated once, as in the reverse mode) and no double backward.

The tangent is put on the parameters in place rather than through ``torch.func.functional_call``, because the
meta-update interface hands over a loss function and the parameter list, not the module; both modes give the
same products (``tests/test_speed_paths.py``: float64, relative difference ≤ 1e-10).

Neither mode runs through a ``torch.compile``'d module (torch 2.x: its backward cannot be differentiated again,
nor carry forward-mode tangents); the hypergradients then raise an error that names the fix: the loss function
calls the uncompiled module (``model._orig_mod``), which shares the compiled one's parameters.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, List, Optional, Sequence, Union

import torch
import torch.autograd.forward_ad as fwAD

from .distributed import average

HVP_MODES = ("reverse", "forward")
DEFAULT_HVP_MODE = "reverse"
"""The mode used when ``hvp`` is None. Reverse: forward-over-reverse gives the same products but was slower on
the CPU, while the public code's GPU numbers point the other way (measurements: ``results/speed/README.md``);
time ``benchmark_speed.py`` on the GPU before switching."""

TrainLoss = Union[torch.Tensor, Callable[[], torch.Tensor]]


def neumann_series(
    vector: Sequence[torch.Tensor],
    train_gradient: Sequence[torch.Tensor],
    parameters: Sequence[torch.Tensor],
    terms: int = 3,
    scale: float = 1e-4,
) -> List[torch.Tensor]:
    """Σ_{j=0..terms} (I − scale·H)^j v, with H v taken from ``train_gradient`` (built with create_graph).

    Multiply by ``scale`` for an estimate of H⁻¹v.
    """
    def hessian_vector(current):
        products = torch.autograd.grad(train_gradient, parameters, grad_outputs=current, retain_graph=True,
                                       allow_unused=True)
        return average([h if h is not None else torch.zeros_like(c) for h, c in zip(products, current)])

    return _neumann(vector, hessian_vector, terms, scale)


def _neumann(vector, hessian_vector, terms: int, scale: float) -> List[torch.Tensor]:
    current = [v.detach() for v in vector]
    total = [v.clone() for v in current]
    for _ in range(terms):
        current = [c - scale * h for c, h in zip(current, hessian_vector(current))]
        total = [t + c for t, c in zip(total, current)]
    return total


@contextlib.contextmanager
def frozen_buffers() -> Iterator[None]:
    """Restore, on exit, every buffer of every module that runs a forward pass inside the block.

    Batch-norm running statistics (and ``num_batches_tracked``) thus keep the values they had on entry.
    """
    saved = {}

    def remember(module, _inputs):
        if id(module) not in saved:
            saved[id(module)] = (module, {name: b.detach().clone() for name, b in module._buffers.items()
                                          if b is not None})

    handle = torch.nn.modules.module.register_module_forward_pre_hook(remember)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for module, buffers in saved.values():
                for name, value in buffers.items():
                    module._buffers[name].copy_(value)


def _rng_states(devices) -> tuple:
    cuda = [d for d in devices if d.type == "cuda"]
    return torch.get_rng_state(), [(d, torch.cuda.get_rng_state(d)) for d in cuda]


def _set_rng_states(states) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    for device, state in cuda:
        torch.cuda.set_rng_state(state, device)


def forward_over_reverse(
    loss_function: Callable[[], torch.Tensor],
    parameters: Sequence[torch.Tensor],
    tangents: Sequence[torch.Tensor],
    wrt: Sequence[torch.Tensor],
) -> List[torch.Tensor]:
    """d/dε ∇_wrt L(θ + ε t) at ε = 0, for θ = ``parameters`` and t = ``tangents``: one forward pass of
    ``loss_function`` with the tangents on θ, one backward pass; with ``wrt`` = θ it is the product H t.

    The parameters must be leaf tensors that ``loss_function`` reads. They are written in place with their own
    values (that is how they get the tangent), so their values are unchanged but their version counters move:
    a graph built before the call that saved them cannot be backpropagated after it (take such gradients first,
    as ``implicit_hypergradient`` does with ∇_θ L_V).
    """
    parameters, wrt = list(parameters), list(wrt)
    with fwAD.dual_level():
        with torch.no_grad():
            for parameter, tangent in zip(parameters, tangents):
                parameter.copy_(fwAD.make_dual(parameter.detach().clone(), tangent.detach().to(parameter.dtype)))
        loss = loss_function()
        gradients = torch.autograd.grad(loss, wrt, allow_unused=True)
        products = []
        for gradient, target in zip(gradients, wrt):
            tangent = None if gradient is None else fwAD.unpack_dual(gradient).tangent
            products.append(torch.zeros_like(target) if tangent is None else tangent.detach().clone())
    return products


COMPILED_FIX = ("let the meta-update's compute_losses call the uncompiled module, model._orig_mod for model = "
                "torch.compile(model): it shares the compiled module's parameters, so backward may keep using the "
                "compiled one")


def _explain_compiled(function):
    """Re-raise the errors torch gives for a second-order pass through a ``torch.compile``'d module (double
    backward, forward-mode tangents) with what to do instead (``COMPILED_FIX``)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except NotImplementedError as error:  # a RuntimeError: caught first
            if "forward mode AD" not in str(error):
                raise
            raise NotImplementedError(f"hvp='forward' pushes forward-mode tangents through the model, which a "
                                      f"torch.compile'd module (or another autograd.Function without a jvp) does not "
                                      f"support ({error}); {COMPILED_FIX}") from error
        except RuntimeError as error:
            if "double backward" not in str(error):
                raise
            raise RuntimeError(f"the meta-update differentiates the training loss twice (Hessian-vector products), "
                               f"which a torch.compile'd module does not support ({error}); {COMPILED_FIX}") from error
    return wrapper


@_explain_compiled
def implicit_hypergradient(
    val_loss: torch.Tensor,
    train_loss: TrainLoss,
    parameters: Sequence[torch.Tensor],
    hyper_parameters: Sequence[torch.Tensor],
    terms: int = 3,
    scale: float = 1e-4,
    hvp: Optional[str] = None,
) -> List[torch.Tensor]:
    """Estimate (1) times 1/scale: −(Neumann series of ∇_θ L_V)ᵀ ∂²L_T/∂θ∂φ for each hyper-parameter φ.

    ``train_loss`` is the training loss L_T(θ, φ), or a function without arguments that computes it (needed
    by ``hvp="forward"``, which evaluates it ``terms`` + 1 times). ``hvp`` None means ``DEFAULT_HVP_MODE``;
    a tensor ``train_loss`` always uses the reverse mode.
    """
    mode = DEFAULT_HVP_MODE if hvp is None else hvp
    if mode not in HVP_MODES:
        raise ValueError(f"unknown Hessian-vector product mode {hvp!r}; choose one of {HVP_MODES}")
    if isinstance(train_loss, torch.Tensor):
        if hvp == "forward":
            raise TypeError("hvp='forward' re-evaluates the training loss: pass it as a function without "
                            "arguments (e.g. lambda: compute_losses(batch).sum()), not as a tensor")
        mode = "reverse"
    if not bool(torch.isfinite(average([val_loss.detach()])[0]).all()):
        raise FloatingPointError(f"the meta-validation loss is NaN or infinite ({val_loss.item()}); check the "
                                 f"meta-validation batch and the model's outputs")
    # frozen parameters (requires_grad False) are no part of θ, as for the optimiser
    parameters = [p for p in parameters if p.requires_grad]
    hyper_parameters = list(hyper_parameters)
    val_gradient = torch.autograd.grad(val_loss, parameters, allow_unused=True)
    val_gradient = average([g if g is not None else torch.zeros_like(p) for g, p in zip(val_gradient, parameters)])
    if mode == "forward":
        return _forward_hypergradient(val_gradient, train_loss, parameters, hyper_parameters, terms, scale)
    if not isinstance(train_loss, torch.Tensor):
        train_loss = train_loss()
    train_gradient = torch.autograd.grad(train_loss, parameters, create_graph=True, allow_unused=True)
    used = [i for i, g in enumerate(train_gradient) if g is not None]
    train_gradient = [train_gradient[i] for i in used]
    used_parameters = [parameters[i] for i in used]
    inverse_hvp = neumann_series([val_gradient[i] for i in used], train_gradient, used_parameters, terms, scale)
    mixed = torch.autograd.grad(train_gradient, hyper_parameters, grad_outputs=inverse_hvp,
                                allow_unused=True)
    return average([-(m if m is not None else torch.zeros_like(h)) for m, h in zip(mixed, hyper_parameters)])


def _forward_hypergradient(val_gradient, train_loss, parameters, hyper_parameters, terms, scale):
    """The reverse mode's estimate with every product forward-over-reverse. The first evaluation of the
    training loss updates the module buffers (as the reverse mode's single evaluation does); the later ones
    replay its random state and leave the buffers as it left them."""
    states = _rng_states({p.device for p in parameters})
    evaluations = 0

    def evaluate():
        nonlocal evaluations
        if evaluations:
            _set_rng_states(states)
        evaluations += 1
        return train_loss()

    with contextlib.ExitStack() as later:
        def product(tangents, wrt):
            if evaluations == 1:  # entered once, just before the second evaluation; restores on exit
                later.enter_context(frozen_buffers())
            return average(forward_over_reverse(evaluate, parameters, tangents, wrt))

        inverse_hvp = _neumann(val_gradient, lambda current: product(current, parameters), terms, scale)
        mixed = product(inverse_hvp, hyper_parameters)
    return [-m for m in mixed]


MIXED_MODES = ("gradients", "double_backward")


@_explain_compiled
def weighted_sum_hypergradient(
    val_loss: torch.Tensor,
    train_losses: Union[torch.Tensor, Callable[[], torch.Tensor]],
    weights: torch.Tensor,
    parameters: Sequence[torch.Tensor],
    terms: int = 3,
    scale: float = 1e-4,
    mixed: str = "gradients",
) -> torch.Tensor:
    """``implicit_hypergradient`` (reverse mode) for L_T = Σ_k w_k L_k(θ) with respect to the weights w.

    ``train_losses``: the K training losses (1-D, with their graph), or a function without arguments that computes
    them (evaluated after ∇_θ L_V is taken, so that the two graphs are not held at once, as in
    ``implicit_hypergradient``); ``weights``: the K weights (constants).
    The mixed term is ∂²L_T/∂θ∂w_k = ∇_θ L_k, so its product with the Neumann vector u is u ᵀ∇_θ L_k:
    ``mixed="gradients"`` (default) takes the K per-task gradients of the training losses, plain backward
    passes through the graph the Hessian products already use, and their dot products with u; it computes
    the same quantity as ``"double_backward"`` (one more reverse-over-reverse pass through ∇_θ L_T, what
    ``implicit_hypergradient`` and the official code do), and is cheaper (timings: ``results/speed/README.md``).
    Returns the K hypergradients (times 1/scale)."""
    if mixed not in MIXED_MODES:
        raise ValueError(f"unknown mixed-term mode {mixed!r}; choose one of {MIXED_MODES}")
    if not bool(torch.isfinite(average([val_loss.detach()])[0]).all()):
        raise FloatingPointError(f"the meta-validation loss is NaN or infinite ({val_loss.item()}); check the "
                                 f"meta-validation batch and the model's outputs")
    # frozen parameters (requires_grad False) are no part of θ, as for the optimiser (implicit_hypergradient)
    parameters = [p for p in parameters if p.requires_grad]
    val_gradient = torch.autograd.grad(val_loss, parameters, allow_unused=True)
    val_gradient = average([g if g is not None else torch.zeros_like(p) for g, p in zip(val_gradient, parameters)])
    if not isinstance(train_losses, torch.Tensor):
        train_losses = train_losses()
    alpha = weights.detach().to(train_losses.device, train_losses.dtype)
    if terms == 0 and mixed == "gradients":  # u = ∇_θ L_V: no Hessian product, so no gradient graph to build
        return -_average_cpu(_dot_task_gradients(train_losses, parameters, val_gradient), train_losses.device)
    if mixed == "double_backward":
        alpha = alpha.clone().requires_grad_(True)
    train_gradient = torch.autograd.grad((alpha * train_losses).sum(), parameters, create_graph=True,
                                         allow_unused=True)
    used = [i for i, g in enumerate(train_gradient) if g is not None]
    train_gradient = [train_gradient[i] for i in used]
    used_parameters = [parameters[i] for i in used]
    inverse_hvp = neumann_series([val_gradient[i] for i in used], train_gradient, used_parameters, terms, scale)
    if mixed == "double_backward":
        (product,) = torch.autograd.grad(train_gradient, [alpha], grad_outputs=inverse_hvp)
        return -average([product.detach()])[0]
    del train_gradient  # frees the double-backward graph before the K passes
    return -_average_cpu(_dot_task_gradients(train_losses, used_parameters, inverse_hvp), train_losses.device)


def _average_cpu(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The mean over the ranks of a CPU tensor, reduced on ``device`` (the backend's), returned on the CPU."""
    return average([values.to(device)])[0].cpu()


def _dot_task_gradients(losses: torch.Tensor, parameters: Sequence[torch.Tensor],
                        vector: Sequence[torch.Tensor]) -> torch.Tensor:
    """(vᵀ∇_θ L_k)_k in float64 on the CPU, from K backward passes (each through its own loss's graph only)."""
    from .gradients import task_outputs  # the gradients module imports nothing from here; keep it that way

    products = torch.zeros(len(losses), dtype=torch.float64)
    for k, target in enumerate(task_outputs(losses)):
        if target is None:
            continue
        output, grad_output = target
        grads = torch.autograd.grad([output], parameters, grad_outputs=[grad_output], retain_graph=True,
                                    allow_unused=True)
        products[k] = sum(float((g.double() * u.double()).sum()) for g, u in zip(grads, vector) if g is not None)
    return products
