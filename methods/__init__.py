"""Weighting methods for auxiliary and multi-task learning behind one interface (see ``base.WeightMethod``).

    from methods import get_method, METHOD_NAMES
    method = get_method("auxinash", n_tasks=3, main_task=0)
    info = method.backward(losses, shared_parameters=..., task_specific_parameters=...)
    optimizer.step()
"""
from __future__ import annotations

from typing import Any, Dict, Type

import torch

from .auxilearn import AuxiLearn
from .auxinash import AuxiNash
from .base import FixedWeightMethod, GradientMethod, WeightMethod
from .cagrad import CAGrad
from .equal import Equal
from .gcs import GCS
from .nashmtl import NashMTL
from .olaux import OLAUX
from .pcgrad import PCGrad
from .stl import STL

METHODS: Dict[str, Type[WeightMethod]] = {
    "stl": STL,
    "equal": Equal,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "nashmtl": NashMTL,
    "gcs": GCS,
    "olaux": OLAUX,
    "auxilearn": AuxiLearn,
    "auxinash": AuxiNash,
}
ALIASES = {"ls": "equal", "nash_mtl": "nashmtl", "ol_aux": "olaux"}
METHOD_NAMES = tuple(METHODS)
"""Methods in the paper's table order: multi-task methods, then auxiliary-learning methods."""


def canonical_name(name: str) -> str:
    """The registry name for ``name`` or an alias (case-insensitive); ValueError listing the valid names."""
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(METHOD_NAMES)} "
                         f"(aliases: {', '.join(f'{a}={c}' for a, c in ALIASES.items())})")
    return key


def get_method(name: str, n_tasks: int, main_task: int = 0, device: torch.device | str | None = None,
               **kwargs: Any) -> WeightMethod:
    """Build method ``name`` (see ``METHOD_NAMES``) with its papers' defaults, overridden by ``kwargs``."""
    return METHODS[canonical_name(name)](n_tasks=n_tasks, main_task=main_task, device=device, **kwargs)


__all__ = ["METHOD_NAMES", "METHODS", "get_method", "canonical_name", "WeightMethod", "GradientMethod",
           "FixedWeightMethod", *[cls.__name__ for cls in METHODS.values()]]
