"""Flags shared by every ``train_*.py`` script, and turning them into a ``TrainConfig``.

Method hyperparameters default to None, meaning "the method's own default" (the papers' settings, see
``methods/``); a flag only reaches the methods whose constructor takes it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional

import torch

from methods import ALIASES, METHOD_NAMES

from data import DatasetNotFoundError, MalformedDatasetError

from .benchmarks import Benchmark
from .benchmarks.base import META_BATCHES
from .loop import TrainConfig, method_kwargs_from_flags, train
from .results_io import RunError

# flag name → constructor argument, where they differ
FLAG_ALIASES = {"olaux_lr": "lr", "cagrad_c": "c", "gcs_weighted": "weighted", "auxilearn_linear": "linear",
                "olaux_interval": "interval", "olaux_form": "form", "auxilearn_train_on_loss": "train_on_loss"}


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


def base_parser(description: str, lr: float, meta_every: int = 25) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--method", default="auxinash", choices=list(METHOD_NAMES) + list(ALIASES),
                     help="weighting method (see methods/)")
    run.add_argument("--main-task", default=None, help="the main task (default: the benchmark's first task)")
    run.add_argument("--seed", type=non_negative_int, default=0)
    run.add_argument("--lr", type=positive_float, default=lr, help="Adam learning rate")
    run.add_argument("--meta-every", type=positive_int, default=meta_every,
                     help="steps between meta-updates (AuxiNash p, AuxiLearn network, OL-AUX weights)")
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
                          "parameters (cheaper; Nash-MTL's variant)")
    run.add_argument("--width", type=positive_float, default=1.0, help="channel width multiplier of the model")
    run.add_argument("--out", default="results", help="results root")
    run.add_argument("--tag", default="", help="suffix of the method's results folder (ablations)")
    run.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    run.add_argument("--force", action="store_true",
                     help="start this run again from scratch, whatever else is passed (the old run folder is moved "
                          "aside to <run>.old-<time>)")
    run.add_argument("--stop-after", type=positive_int, default=None,
                     help="stop after this many rounds (epochs / evaluation blocks); continue with --resume")
    run.add_argument("--log-level", default="INFO", type=str.upper,
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    method = parser.add_argument_group("method hyperparameters (default: the method's paper setting)")
    method.add_argument("--p", type=positive_float, nargs="+", default=None,
                        help="AuxiNash fixed bargaining powers (not learned): one value = the main task's share, "
                             "the auxiliaries splitting the rest equally; or one value per task")
    method.add_argument("--meta-lr", type=positive_float, default=None, help="AuxiNash / AuxiLearn meta learning rate")
    method.add_argument("--neumann-terms", type=non_negative_int, default=None, help="AuxiNash / AuxiLearn Neumann terms")
    method.add_argument("--neumann-scale", type=positive_float, default=None, help="AuxiNash / AuxiLearn Neumann scale")
    method.add_argument("--hypergrad-clip", type=positive_float, default=None, help="AuxiNash / AuxiLearn clipping")
    method.add_argument("--max-norm", type=non_negative_float, default=None, help="Nash-MTL / AuxiNash max update norm")
    method.add_argument("--update-weights-every", type=positive_int, default=None, help="Nash-MTL / AuxiNash solve period")
    method.add_argument("--fast", action="store_true", default=None,
                        help="Nash-MTL / AuxiNash fast mode: per-task gradients with respect to the shared "
                             "representation + one backward of the weighted loss (about linear scalarisation's cost; "
                             "an approximation, see methods/auxinash.py); combine with --update-weights-every N")
    method.add_argument("--solver", default=None, choices=["newton", "cvxpy"], help="Nash-MTL / AuxiNash solver")
    method.add_argument("--gcs-weighted", action="store_true", default=None, help="GCS: scale by the cosine")
    method.add_argument("--olaux-lr", type=positive_float, default=None, help="OL-AUX step size β (default 0.05, ARML)")
    method.add_argument("--olaux-interval", type=positive_int, default=None,
                        help="OL-AUX iterations between weight updates (default 20, ARML; independent of --meta-every)")
    method.add_argument("--olaux-form", default=None, choices=["arml", "accumulated"],
                        help="OL-AUX update: 'arml' (default) = one SGD step on that iteration's batch, the model not "
                             "stepping then (ARML's code); 'accumulated' = dot products summed over the interval "
                             "(Lin et al.'s Alg. 1)")
    method.add_argument("--auxilearn-linear", action="store_true", default=None, help="AuxiLearn: linear network")
    method.add_argument("--auxilearn-train-on-loss", action="store_true", default=None,
                        help="AuxiLearn: the main optimiser also trains the auxiliary network on the training loss "
                             "(lr 5e-3), as the official AuxiNash trainer does (most likely what the paper's AuxiLearn "
                             "rows ran); default: the AuxiLearn paper's method (hypergradient only)")
    method.add_argument("--cagrad-c", type=non_negative_float, default=None, help="CAGrad c")
    return parser


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
    flags: Dict[str, Any] = dict(vars(args))
    if args.p is not None:
        flags["p"] = expand_p(args.p, len(task_names), task_names.index(main_task) if main_task in task_names else 0)
        flags["learn_p"] = False
    kwargs = method_kwargs_from_flags(args.method, flags, FLAG_ALIASES)
    if getattr(args, "fast", None) and "fast" not in kwargs:
        raise ValueError(f"--fast is a mode of Nash-MTL and AuxiNash, not of {args.method}")
    return TrainConfig(method=args.method, main_task=main_task, seed=args.seed, lr=args.lr, lr_step=lr_step,
                       meta_every=args.meta_every, amp=args.amp, representation=args.representation, out=args.out,
                       meta_batches=args.meta_batches,
                       tag=args.tag, resume=args.resume, force=args.force, stop_after=args.stop_after,
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
    group.add_argument("--workers", type=non_negative_int, default=4, help="DataLoader worker processes")
    return parser
