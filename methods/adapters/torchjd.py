"""Our Gram-based methods as TorchJD weightings and aggregators (TorchJD: Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", github.com/TorchJD/torchjd; written against torchjd 0.18.0).

TorchJD's contract (``torchjd/aggregation/_weighting_bases.py`` ``Weighting``, ``_aggregator_bases.py``
``GramianWeightedAggregator``): a ``Weighting`` is an ``nn.Module`` whose ``forward(gramian)`` maps the m × m Gramian
J Jᵀ of the Jacobian of the m losses to m weights; a ``GramianWeightedAggregator(weighting)`` maps a Jacobian J to
``weights @ J``. The autogram engine (``torchjd/autogram/_engine.py`` ``Engine.compute_gramian``) computes the
Gramian with respect to the parameters of the modules it hooks, and the step is ``losses.backward(weights)``; the
autojac path (``torchjd.autojac.backward`` / ``mtl_backward`` then ``jac_to_grad(params, aggregator)``) builds the
Jacobian and aggregates it.

``MethodWeighting(method)`` is such a ``Weighting`` for any of our methods with ``gram_based`` set: one call is one
step of the method, ``method.weights_from_gram(gramian)`` (its state, e.g. AuxiNash's α and Gram matrix for
``meta_update``, advances as in ``backward``). Two things that ``backward`` does beside the weights, served here:

* **clipping** (Nash-MTL, AuxiNash: the shared update is clipped to norm ``max_norm`` = 1): ``‖Σ_k w_k g_k‖ =
  √(wᵀ G w)`` is known from the Gramian, so the weights returned are multiplied by ``torch.nn.utils.
  clip_grad_norm_``'s coefficient ``min(1, max_norm / (norm + 1e-6))``: ``weights @ J`` is then the clipped update,
  as TorchJD's own ``NashMTL`` folds its ``max_norm`` into its weights (``fold_max_norm=False``: unclipped);
* **the heads**: ``backward`` gives the task-specific parameters Σ_k v_k ∇L_k with ``v`` =
  ``weighting.task_specific_weights`` (the unclipped α for Nash-MTL / AuxiNash; 1 for PCGrad, CAGrad, GCS). TorchJD's
  ``mtl_backward`` gives each head its own loss's gradient (weight 1), and ``losses.backward(weights)`` gives them
  the (clipped) weights: to match ``backward`` exactly, back-propagate ``v`` into the heads yourself
  (``torch.autograd.backward(losses, v, inputs=heads)``).

**meta_update beside the autogram engine.** The engine counts every forward pass through a module it hooks and
resets its counts only inside ``compute_gramian`` (``_module_hook_manager.py`` ``Hook.__call__`` →
``track_forward_call``; ``_gramian_computer.py`` ``JacobianBasedGramianComputerWithCrossTerms``). AuxiNash's
``meta_update`` runs two forward passes through the model (meta-validation and training batch), so the next
``compute_gramian`` finds each hooked module with three forward passes for one backward and raises ``ValueError:
Some modules had a forward pass without an associated backward pass`` (a new ``Engine`` every step hides it). Run
the meta-update inside ``with paused(engine):``, which makes the hooks pass their outputs through untouched (the
state the engine itself sets while it computes a Gramian), so the meta-update's forward passes are neither counted
nor given the engine's autograd nodes; or call ``meta_update(method, engine, ...)`` here. The autojac path
(``backward`` + ``jac_to_grad``) hooks nothing and needs neither.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch

try:
    from torchjd.aggregation import GramianWeightedAggregator, Weighting
except ImportError as error:  # pragma: no cover - exercised only without torchjd
    raise ImportError("methods.adapters.torchjd needs TorchJD: pip install -e \".[torchjd]\" (or pip install "
                      "torchjd)") from error

from ..base import GradientMethod, WeightMethod

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s: coefficient max_norm / (total_norm + 1e-6), clamped at 1


class MethodWeighting(Weighting):
    """A TorchJD ``Weighting`` [PSD matrix]: ``weighting(gramian)`` is one step of our Gram-based ``method``.

    After each call: ``task_specific_weights`` (the heads' multipliers, see the module docstring), ``info`` (the
    ``BackwardResult`` of ``method.weights_from_gram``: ``weights`` before clipping, ``p`` for AuxiNash, ...).
    ``loss_values``: set it to ``losses.detach()`` before each call for a method with ``needs_loss_values``
    (MGDA's default "loss+" normalisers). The method is held as a plain attribute, not a submodule: its state
    is saved with ``method.state_dict()``."""

    def __init__(self, method: WeightMethod, fold_max_norm: bool = True) -> None:
        super().__init__()
        if not isinstance(method, GradientMethod) or not method.gram_based:
            raise TypeError(f"{type(method).__name__} is not Gram-based (GradientMethod.gram_based): its step needs "
                            f"more than the Gram matrix, so it has no TorchJD weighting; the Gram-based methods are "
                            f"{', '.join(gram_based_names())}")
        self.method = method
        self.fold_max_norm = fold_max_norm
        self.loss_values: Optional[torch.Tensor] = None
        self.task_specific_weights: Optional[torch.Tensor] = None
        self.info: dict = {}

    def forward(self, gramian: torch.Tensor, /) -> torch.Tensor:
        gram = gramian.detach().to(torch.float64)
        info = self.method.weights_from_gram(gram, loss_values=self.loss_values)
        self.loss_values = None  # one step's values
        weights = info["weights"].to(gram.device)
        max_norm = float(info["max_norm"])
        if self.fold_max_norm and max_norm > 0:
            norm = float(torch.clamp(weights @ gram @ weights, min=0).sqrt())
            coefficient = max_norm / (norm + CLIP_EPS)
            if coefficient < 1.0:
                weights = weights * coefficient
        self.info = info
        self.task_specific_weights = info["task_specific_weights"].to(gramian.device, gramian.dtype)
        return weights.to(gramian.device, gramian.dtype)

    def __repr__(self) -> str:
        return f"MethodWeighting({self.method!r})"


def aggregator(method: WeightMethod, fold_max_norm: bool = True) -> GramianWeightedAggregator:
    """A TorchJD ``GramianWeightedAggregator`` over ``MethodWeighting(method)``: for ``torchjd.autojac.jac_to_grad``
    (``aggregator.gramian_weighting`` is the weighting, with ``task_specific_weights`` after each call)."""
    return GramianWeightedAggregator(MethodWeighting(method, fold_max_norm))


def gram_based_names() -> tuple:
    """The registered methods that are Gram-based with their default settings."""
    from .. import METHODS
    return tuple(name for name, cls in METHODS.items() if _gram_based_by_default(cls))


def _gram_based_by_default(cls: type) -> bool:
    if not issubclass(cls, GradientMethod):
        return False
    try:
        return bool(cls(n_tasks=2).gram_based)
    except Exception:  # a constructor that needs more than n_tasks
        return False


@contextlib.contextmanager
def paused(engine: Any) -> Iterator[None]:
    """Within the block, the autogram ``engine``'s module hooks pass outputs through untouched: forward passes are
    neither counted nor tracked (for ``meta_update``'s, see the module docstring). Relies on the engine's hook state
    (``engine._module_hook_manager.gramian_accumulation_phase``, torchjd 0.18; an ``AttributeError`` names the
    workaround where a torchjd version lacks it)."""
    try:
        flag = engine._module_hook_manager.gramian_accumulation_phase
        previous = flag.value
    except AttributeError as error:
        raise AttributeError("methods.adapters.torchjd.paused: this torchjd Engine has no "
                             "_module_hook_manager.gramian_accumulation_phase (written against torchjd 0.18); "
                             "run meta_update through a model the Engine does not hook, or build the Engine again "
                             "after each meta_update") from error
    flag.value = True
    try:
        yield
    finally:
        flag.value = previous


def meta_update(method: WeightMethod, engine: Any, compute_losses, train_batch, val_batch, shared_parameters,
                task_specific_parameters=()) -> dict:
    """``method.meta_update(...)`` with ``engine`` paused (``engine=None``: no engine, e.g. the autojac path)."""
    context = paused(engine) if engine is not None else contextlib.nullcontext()
    with context:
        return method.meta_update(compute_losses, train_batch, val_batch, shared_parameters,
                                  task_specific_parameters=task_specific_parameters)


__all__ = ["MethodWeighting", "aggregator", "paused", "meta_update", "gram_based_names"]
