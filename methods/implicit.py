"""Implicit differentiation with a truncated Neumann series (AuxiLearn, Navon et al., ICLR 2021, Alg. 1;
Lorraine et al., AISTATS 2020).

At a minimiser θ*(φ) of the training loss L_T(θ, φ), the hypergradient of a validation loss L_V is

    dL_V/dφ = −∇_θ L_Vᵀ H⁻¹ ∂²L_T/∂θ∂φ,       H = ∇²_θ L_T.                        (1)

H⁻¹v is approximated by the truncated Neumann series η Σ_{j=0..J} (I − ηH)^j v, which converges to
H⁻¹v for 0 < η < 2/λ_max(H). As in AuxiLearn's and the official AuxiNash code, ``neumann_series`` returns
the sum WITHOUT the leading factor η, so the hypergradients built on it are the estimate of (1) times 1/η:
a constant factor that the meta learning rate and the hypergradient clipping absorb, kept so that the
official defaults (η = 1e-4, J = 3, meta lr 5e-3, clipping) mean what they mean there.

Hessian-vector products are exact: reverse-over-reverse through a gradient built with ``create_graph``.
"""
from __future__ import annotations

from typing import List, Sequence

import torch


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
    current = [v.detach() for v in vector]
    total = [v.clone() for v in current]
    for _ in range(terms):
        hessian_vector = torch.autograd.grad(train_gradient, parameters, grad_outputs=current,
                                             retain_graph=True, allow_unused=True)
        current = [c - scale * (h if h is not None else torch.zeros_like(c))
                   for c, h in zip(current, hessian_vector)]
        total = [t + c for t, c in zip(total, current)]
    return total


def implicit_hypergradient(
    val_loss: torch.Tensor,
    train_loss: torch.Tensor,
    parameters: Sequence[torch.Tensor],
    hyper_parameters: Sequence[torch.Tensor],
    terms: int = 3,
    scale: float = 1e-4,
) -> List[torch.Tensor]:
    """Estimate (1) times 1/scale: −(Neumann series of ∇_θ L_V)ᵀ ∂²L_T/∂θ∂φ for each hyper-parameter φ."""
    parameters = list(parameters)
    val_gradient = torch.autograd.grad(val_loss, parameters, allow_unused=True)
    val_gradient = [g if g is not None else torch.zeros_like(p) for g, p in zip(val_gradient, parameters)]
    train_gradient = torch.autograd.grad(train_loss, parameters, create_graph=True, allow_unused=True)
    used = [i for i, g in enumerate(train_gradient) if g is not None]
    train_gradient = [train_gradient[i] for i in used]
    used_parameters = [parameters[i] for i in used]
    inverse_hvp = neumann_series([val_gradient[i] for i in used], train_gradient, used_parameters, terms, scale)
    mixed = torch.autograd.grad(train_gradient, list(hyper_parameters), grad_outputs=inverse_hvp,
                                allow_unused=True)
    return [-(m if m is not None else torch.zeros_like(h)) for m, h in zip(mixed, hyper_parameters)]
