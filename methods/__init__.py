"""Weighting methods for auxiliary and multi-task learning behind one interface (see ``base.WeightMethod``).

    from methods import get_method, METHOD_NAMES
    method = get_method("auxinash", n_tasks=3, main_task=0)
    info = method.backward(losses, shared_parameters=..., task_specific_parameters=...)
    optimizer.step()

``METHODS`` is the one registry: every list of methods in the repository (training scripts' flags, run_all's
grid, tables, figures, the speed benchmark) reads it and each class's declarations (``Settings``, ``label``,
``uses_main_task``, ``has_meta_update``, ``in_paper``, the hooks' ``meta_interval`` and ``needs_after_step``; see
``base.py`` and ``settings.py``). Adding a method = its file + one line below.
"""
from __future__ import annotations

from typing import Any, Dict, Type

import torch

from .arml import ARML
from .auxilearn import AuxiLearn
from .auxinash import AuxiNash
from .autolambda import AutoLambda
from .base import BackwardResult, FixedWeightMethod, GradientMethod, WeightMethod
from .cagrad import CAGrad
from .dwa import DWA
from .equal import Equal
from .famo import FAMO
from .gcs import GCS
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtl import IMTL
from .metabalance import MetaBalance
from .mgda import MGDA
from .nashmtl import NashMTL
from .olaux import OLAUX
from .pcgrad import PCGrad
from .settings import as_record, resolve
from .stl import STL
from .uw import UW

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
    # the field's comparison set, not in the AuxiNash paper (in_paper=False): multi-task, then auxiliary-learning
    "uw": UW,
    "dwa": DWA,
    "imtl": IMTL,
    "mgda": MGDA,
    "gradvac": GradVac,
    "gradnorm": GradNorm,
    "famo": FAMO,
    "autolambda": AutoLambda,
    "metabalance": MetaBalance,
    "arml": ARML,
}
ALIASES = {"ls": "equal", "nash_mtl": "nashmtl", "ol_aux": "olaux"}
METHOD_NAMES = tuple(METHODS)
"""The paper's nine methods in its table order (multi-task, then auxiliary-learning), then the comparison set that
is not in the paper (``in_paper=False``; multi-task, then auxiliary-learning)."""


def paper_methods() -> tuple:
    """The registered methods that are in the paper (``in_paper``): ``./run_all.sh``'s default ``--methods``."""
    return tuple(name for name, cls in METHODS.items() if cls.in_paper)


def canonical_name(name: str) -> str:
    """The registry name for ``name`` or an alias (case-insensitive); ValueError listing the valid names."""
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(METHOD_NAMES)} "
                         f"(aliases: {', '.join(f'{a}={c}' for a, c in ALIASES.items())})")
    return key


def method_settings(name: str, **overrides: Any) -> Dict[str, Any]:
    """Every setting of method ``name`` with ``overrides`` applied, as a dict (what config.json records);
    TypeError naming an unknown setting and listing the method's settings."""
    key = canonical_name(name)
    return as_record(resolve(METHODS[key].Settings, overrides, key))


def get_method(name: str, n_tasks: int, main_task: int = 0, device: torch.device | str | None = None,
               **kwargs: Any) -> WeightMethod:
    """Build method ``name`` (see ``METHOD_NAMES``) with its papers' defaults (its ``Settings``), overridden by
    ``kwargs``; TypeError for a keyword that the method does not declare."""
    key = canonical_name(name)
    resolve(METHODS[key].Settings, kwargs, key)  # names an unknown setting before the constructor sees it
    return METHODS[key](n_tasks=n_tasks, main_task=main_task, device=device, **kwargs)


__all__ = ["METHOD_NAMES", "METHODS", "get_method", "method_settings", "canonical_name", "paper_methods", "WeightMethod",
           "GradientMethod", "FixedWeightMethod", "BackwardResult", *[cls.__name__ for cls in METHODS.values()]]
