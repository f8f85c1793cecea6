"""How a method declares its hyperparameters: a frozen dataclass of ``setting`` fields, once, in its own file.

Each method class names its declaration (``Settings``), its table label (the paper's row name, ``label``),
whether it uses a main task (``uses_main_task``) and whether it learns anything in ``meta_update``
(``has_meta_update``). Everything else reads these: the constructor's defaults are the declaration's
(``tests/test_method_settings.py`` checks that the two agree for every registered method), the training
scripts generate one flag per setting (``--<method>-<setting>``, see ``experiments/training/cli.py``), ``config.json``
records the resolved settings once, and the tables take their row names from ``label``.

    @dataclass(frozen=True)
    class OLAUXSettings:
        lr: float = setting(0.05, "step size β of the auxiliary weights", "ARML SSL/config.py task_weighter_lr")

A setting marked ``run_setting="seed"`` is not a flag of its own: the training loop fills it from the run's
``--seed`` (PCGrad's shuffling, AuxiLearn's network initialisation).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple


def setting(default: Any, help: str, source: str, *, choices: Optional[Sequence[Any]] = None, cli: bool = True,
            run_setting: Optional[str] = None, allow_zero: bool = False) -> Any:
    """A field of a method's settings dataclass.

    Args:
        default: the value the method uses unless told otherwise (a paper's or its official code's setting).
        help: one line for ``--help``: what the setting is, with its unit.
        source: where the default comes from (paper section or peer file).
        choices: the allowed values, for string settings.
        cli: False for settings that have no generated flag (set by a script's own flag, e.g. ``--p``).
        run_setting: the name of the run setting that fills it (e.g. ``"seed"``); implies ``cli=False``.
        allow_zero: numbers: 0 is allowed (otherwise a flag must be > 0); negative values never are.
    """
    return dataclasses.field(default=default, metadata={"help": help, "source": source, "choices": choices,
                                                          "cli": cli and run_setting is None,
                                                          "run_setting": run_setting, "allow_zero": allow_zero})


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """A method without hyperparameters."""


def setting_fields(settings: type) -> Tuple[dataclasses.Field, ...]:
    """The declared settings of a settings dataclass, in declaration order."""
    return dataclasses.fields(settings)


def resolve(settings: type, overrides: Dict[str, Any], method: str) -> Any:
    """The settings instance with ``overrides`` applied; TypeError naming an unknown setting and the valid ones."""
    names = [f.name for f in setting_fields(settings)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"{method} has no setting {', '.join(map(repr, unknown))}; its settings are: "
                        f"{', '.join(names) or '(none)'}")
    return settings(**overrides)


def as_record(instance: Any) -> Dict[str, Any]:
    """A settings instance as a JSON-friendly dict (tuples as lists)."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(instance).items()}
