"""Flags shared by every ``train_*.py`` script, and turning them into a ``TrainConfig``.

Method flags are generated from the methods' declarations (``methods/settings.py``): one flag
``--<method>-<setting>`` per declared setting (e.g. ``--olaux-lr``, ``--auxilearn-meta-lr``), in its own
namespace, so that no trainer flag can reach a method (the trainer's ``--lr`` once filled OL-AUX's step size).
The flags in ``SHARED_SETTING_FLAGS`` (``--meta-lr``, ``--max-norm``, …, kept from before the per-method flags)
set the same-named setting of whichever method runs, where that method declares it; a per-method flag wins over a
shared one. Every method flag defaults to None, meaning "the method's declared default".
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from typing import Any, Callable, Dict, List, Optional

import torch

from methods import ALIASES, METHOD_NAMES, METHODS, canonical_name, method_settings
from methods.settings import setting_fields

from data import DatasetNotFoundError, MalformedDatasetError

from .benchmarks import Benchmark
from .benchmarks.base import META_BATCHES
from .loop import TrainConfig, train
from experiments.storage.results_io import RunError
from experiments.storage.sinks import SINK_HELP, SINKS, MissingDependencyError, check_available

# flags that set the same-named setting of the method that runs, where it declares one (kept from before the
# per-method flags; their destinations are part of existing runs' identities, so they keep their names)
SHARED_SETTING_FLAGS = ("meta_lr", "neumann_terms", "neumann_scale", "hypergrad_clip", "max_norm",
                        "update_weights_every", "solver", "fast")
# destinations that scripts fill for declared settings without a flag of their own: --p (AuxiNash's p and
# learn_p, see make_config) and train_multimnist.py's --weights (linear scalarisation's weights)
SCRIPT_SETTINGS = ("p", "learn_p", "weights")


def _number(kind: type, low: float, inclusive: bool) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number ≥ ``low`` (or > ``low``), with a message that says so."""
    bound = f"{'≥' if inclusive else '>'} {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} "
                                             f"{bound}, got {text!r}") from None
        if not (value >= low if inclusive else value > low) or value != value:
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


positive_int = _number(int, 0, inclusive=False)
non_negative_int = _number(int, 0, inclusive=True)
positive_float = _number(float, 0, inclusive=False)
non_negative_float = _number(float, 0, inclusive=True)

# ranges of numeric flags that the train_*.py scripts define themselves, checked after parsing
SCRIPT_FLAG_RANGES = {"iterations": positive_int, "eval_every": positive_int, "labeled_batch": positive_int,
                      "unlabeled_batch": positive_int, "n_labeled": positive_int, "val_size": positive_int,
                      "mtan_classes": positive_int}


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop with a usage error when a script-defined numeric flag is out of range (before any file is written)."""
    for name, check in SCRIPT_FLAG_RANGES.items():
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                check(str(value))
            except argparse.ArgumentTypeError as error:
                parser.error(f"argument --{name.replace('_', '-')}: {error}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The description as written (a script's docstring, its example commands on their own lines); each option's
    default, except None (an option whose help says what it falls back to, e.g. a method flag left to the method's
    declared default) and False (a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


def base_parser(description: str, lr: float, meta_every: int = 25) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--method", default="auxinash", choices=list(METHOD_NAMES) + list(ALIASES),
                     help="weighting method (see methods/)")
    run.add_argument("--main-task", default=None, help="the main task (default: the benchmark's first task)")
    run.add_argument("--seed", type=non_negative_int, default=0)
    run.add_argument("--lr", type=positive_float, default=lr, help="Adam learning rate")
    run.add_argument("--meta-every", type=positive_int, default=meta_every,
                     help="optimiser steps between meta-updates of the methods that learn from meta batches (AuxiNash's "
                          "p, AuxiLearn's network; OL-AUX follows --olaux-interval). Part of every run's identity; a "
                          "method that declares its own interval (meta_interval; none of the paper's nine) updates "
                          "on that instead, and config.json records both"),
    run.add_argument("--meta-batches", default="step", choices=META_BATCHES,
                     help="batches of a meta-update: 'step' = the step's own training batch for L_T and an "
                          "un-augmented meta-validation batch for L_V; 'official' = a fresh augmented training batch "
                          "for L_T and a fresh augmented meta-validation batch for L_V, as the official AuxiNash "
                          "hyperstep draws them")
    run.add_argument("--meta-val-size", type=non_negative_float, default=0,
                     help="training data held out for meta-updates: a fraction (<1) or a count; 0 draws the "
                          "meta-validation batches from the training set itself (the paper's default)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="torch device, e.g. cpu, cuda, cuda:1")
    run.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    run.add_argument("--representation", action="store_true",
                     help="per-task gradients with respect to the shared representation instead of the shared "
                          "parameters (cheaper, an approximation; in neither paper's code, which bargain over the "
                          "shared parameters): builds the method with gradient_space='representation'. For AuxiNash "
                          "and Nash-MTL the same computation as --fast; LS, STL and AuxiLearn take one backward pass "
                          "either way"),
    run.add_argument("--width", type=positive_float, default=1.0, help="channel width multiplier of the model")
    run.add_argument("--out", default="results", help="results root")
    run.add_argument("--tag", default="", help="suffix of the method's results folder (ablations)")
    run.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    run.add_argument("--force", action="store_true",
                     help="start this run again from scratch, whatever else is passed (the old run folder is moved "
                          "aside to <run>.old-<time>)")
    run.add_argument("--stop-after", type=positive_int, default=None,
                     help="stop after this many rounds (epochs / evaluation blocks); continue with --resume")
    for name in SINKS:  # outputs mirroring metrics.csv (experiments/storage/sinks.py)
        run.add_argument(f"--{name}", action="store_true", help=SINK_HELP.get(name, f"also write the {name} output"))
    run.add_argument("--log-level", default="INFO", type=str.upper,
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_method_flags(parser)
    return parser


def _setting_type(method: type, field) -> Dict[str, Any]:
    """argparse keywords for a declared setting: type, nargs, choices and range from its declaration."""
    hint = typing.get_type_hints(method.Settings)[field.name]
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    choices = field.metadata.get("choices")
    if choices is not None:
        return {"choices": list(choices)}
    zero = field.metadata.get("allow_zero", False)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint is int:
        return {"type": non_negative_int if zero else positive_int}
    if hint is float:
        return {"type": non_negative_float if zero else positive_float}
    if typing.get_origin(hint) is tuple and args and args[0] is int:
        return {"type": positive_int, "nargs": "+"}
    if typing.get_origin(hint) is tuple and args and args[0] is float:
        return {"type": float, "nargs": "+"}
    return {"type": str}


def _default_text(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per declared method setting (``--<method>-<setting>``), the shared flags and ``--p``."""
    shared = parser.add_argument_group(
        "settings shared by methods (set the same-named setting of the method that runs; default: its own)")
    for name in SHARED_SETTING_FLAGS:
        owners = [(key, cls) for key, cls in METHODS.items()
                  for f in setting_fields(cls.Settings) if f.name == name and f.metadata["cli"]]
        if not owners:
            raise AssertionError(f"shared method flag --{name} names no method's setting")
        field = next(f for f in setting_fields(owners[0][1].Settings) if f.name == name)
        defaults = ", ".join(f"{cls.label} {_default_text(getattr(cls.Settings, name))}" for _, cls in owners)
        flags = " / ".join(f"--{key}-{name.replace('_', '-')}" for key, _ in owners)
        shared.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                            help=f"{flags} of the method that runs (default: {defaults})",
                            **_setting_type(owners[0][1], field))
    shared.add_argument("--p", type=positive_float, nargs="+", default=None,
                        help="AuxiNash fixed bargaining powers (not learned): one value = the main task's share, "
                             "the auxiliaries splitting the rest equally; or one value per task")
    for key, cls in METHODS.items():
        fields = [f for f in setting_fields(cls.Settings) if f.metadata["cli"]]
        if not fields:
            continue
        group = parser.add_argument_group(f"{cls.label} settings (default: the declared setting, source in brackets)")
        for field in fields:
            group.add_argument(f"--{key}-{field.name.replace('_', '-')}", dest=f"{key}_{field.name}", default=None,
                               help=(f"{field.metadata['help']} (default {_default_text(field.default)}; "
                                     f"[{field.metadata['source']}])").replace("%", "%%"),
                               **_setting_type(cls, field))


def method_kwargs_from_flags(method: str, flags: Dict[str, Any]) -> Dict[str, Any]:
    """The settings of ``method`` that the flags set (None means "the declared default"): per declared setting,
    the per-method flag ``<method>_<setting>``, else a shared flag or a script's destination of the same name;
    a setting with ``run_setting`` takes that run setting (e.g. the run's seed). Nothing else reaches the
    method: the trainer's own flags (``lr``, ``seed``, …) never fill a setting of the same name."""
    key = canonical_name(method)
    kwargs: Dict[str, Any] = {}
    for field in setting_fields(METHODS[key].Settings):
        run_setting = field.metadata.get("run_setting")
        if run_setting is not None:
            value = flags.get(run_setting)
        else:
            value = flags.get(f"{key}_{field.name}")
            if value is None and field.name in SHARED_SETTING_FLAGS + SCRIPT_SETTINGS:
                value = flags.get(field.name)
        if value is not None:
            kwargs[field.name] = tuple(value) if isinstance(value, list) else value
    return kwargs


def expand_p(values: Optional[List[float]], n_tasks: int, main_index: int) -> Optional[List[float]]:
    """``--p`` as one bargaining power per task (see its help)."""
    if values is None:
        return None
    if len(values) == n_tasks:
        return list(values)
    if len(values) == 1 and 0 < values[0] < 1 and n_tasks > 1:
        rest = (1 - values[0]) / (n_tasks - 1)
        return [values[0] if k == main_index else rest for k in range(n_tasks)]
    raise ValueError(f"--p takes one share in (0, 1) for the main task or {n_tasks} values, got {values}")


def make_config(args: argparse.Namespace, task_names: List[str], lr_step: Optional[int]) -> TrainConfig:
    main_task = args.main_task or task_names[0]
    if main_task not in task_names:
        raise ValueError(f"--main-task must be one of {task_names}, got {main_task!r}")
    flags: Dict[str, Any] = {key: value for key, value in vars(args).items() if key not in SINKS}  # launch-only
    if args.p is not None:
        flags["p"] = expand_p(args.p, len(task_names), task_names.index(main_task) if main_task in task_names else 0)
        flags["learn_p"] = False
    kwargs = method_kwargs_from_flags(args.method, flags)
    if flags.get("fast") and "fast" not in kwargs:
        raise ValueError(f"--fast is a mode of Nash-MTL and AuxiNash, not of {args.method}")
    if args.representation and "gradient_space" in method_settings(args.method):
        kwargs["gradient_space"] = "representation"  # not a flag: the run's identity keeps --representation
    return TrainConfig(method=args.method, main_task=main_task, seed=args.seed, lr=args.lr, lr_step=lr_step,
                       meta_every=args.meta_every, amp=args.amp, representation=args.representation, out=args.out,
                       meta_batches=args.meta_batches,
                       tag=args.tag, resume=args.resume, force=args.force, stop_after=args.stop_after,
                       sinks=tuple(name for name in SINKS if getattr(args, name, False)),  # not in the identity
                       method_kwargs=kwargs, flags=flags)


def run(parser: argparse.ArgumentParser, build_benchmark: Callable[[argparse.Namespace], Benchmark],
        lr_step: Callable[[argparse.Namespace], Optional[int]], argv=None) -> str:
    """Parse and check the flags, build the benchmark and train. A dataset problem exits with its message
    (status 2); a run that cannot start as asked (another settings' run in the folder, a damaged checkpoint or
    metrics.csv) with status 3, and one that another process is training with status 75."""
    args = parser.parse_args(argv)
    check_ranges(parser, args)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        benchmark = build_benchmark(args)
    except (DatasetNotFoundError, MalformedDatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        config = make_config(args, list(benchmark.task_names), lr_step(args))
    except ValueError as error:
        parser.error(str(error))
    try:
        check_available(config.sinks)
    except MissingDependencyError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return train(benchmark, config)
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None


def dense_flags(parser: argparse.ArgumentParser, env: str, default_root: str, batch_size: int
                ) -> argparse.ArgumentParser:
    """Flags of the SegNet benchmarks (NYUv2, Cityscapes), with the paper's defaults."""
    group = parser.add_argument_group("data and schedule")
    group.add_argument("--data-root", default=os.environ.get(env, default_root), help=f"dataset root (env {env})")
    group.add_argument("--epochs", type=positive_int, default=200)
    group.add_argument("--lr-step", type=positive_int, default=100, help="epochs between halvings of the learning rate")
    group.add_argument("--batch-size", type=positive_int, default=batch_size)
    group.add_argument("--no-augment", action="store_true", help="turn off the random scale-crop and flip")
    group.add_argument("--workers", type=non_negative_int, default=default_workers(),
                       help="DataLoader worker processes (default: the CPUs this process may use, at most 8; here "
                            "%(default)s). Not part of a run's identity: the batches are the same for any number "
                            "(each item's augmentation is seeded by seed, epoch and item, data/common.py set_epoch)")
    return parser


def default_workers() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity`` where the OS has it), at most 8: DataLoader's own
    suggestion of the most workers worth starting, without its warning on a small machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cpus)
