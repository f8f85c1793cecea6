"""Where a run's rows go besides ``metrics.csv``, the record of truth (written by the loop, atomically).

A sink mirrors each round's rows (one dict per split, columns as ``results_io`` names them) somewhere else. The
loop opens the sinks that ``TrainConfig.sinks`` names, hands them every round's rows, and closes them. Adding an
output = one class here and one entry in ``SINKS`` (and in ``SINK_PACKAGES`` / ``SINK_HELP``): the training scripts'
flag ``--<name>`` follows from them, kept out of runs' identities.

- ``tensorboard``: event files in ``<run>/tensorboard/``, one scalar per numeric column, tagged ``<split>/<column>``,
  at the row's step (``pip install tensorboard``; read with ``tensorboard --logdir RESULTS``).
- ``wandb``: a Weights & Biases run in offline mode in ``<run>/wandb/`` (no network; ``wandb sync`` uploads it
  later), the run's config.json as its config, the same ``<split>/<column>`` keys (``pip install wandb``).
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Sequence

from .results_io import SPLIT, STEP


class MissingDependencyError(RuntimeError):
    """An optional output was asked for without its package."""


class Sink:
    """Receives every round's rows of one run."""

    def __init__(self, run_dir: str, config: Dict[str, Any]) -> None:
        self.run_dir = run_dir

    def write(self, rows: Sequence[Dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def scalars(row: Dict[str, Any]) -> Dict[str, float]:
    """``<split>/<column>`` → value for the finite numeric columns of a row (not the step and split)."""
    out = {}
    for key, value in row.items():
        if key in (SPLIT, STEP) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{row[SPLIT]}/{key}"] = float(value)
    return out


def _require(module: str, flag: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise MissingDependencyError(f"--{flag} needs the {flag} package: pip install {flag} (or drop --{flag}; "
                                     f"metrics.csv is written either way)") from None


class TensorBoardSink(Sink):
    def __init__(self, run_dir: str, config: Dict[str, Any]) -> None:
        super().__init__(run_dir, config)
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))

    def write(self, rows: Sequence[Dict[str, Any]]) -> None:
        for row in rows:
            for tag, value in scalars(row).items():
                self.writer.add_scalar(tag, value, global_step=int(row[STEP]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink(Sink):
    def __init__(self, run_dir: str, config: Dict[str, Any]) -> None:
        super().__init__(run_dir, config)
        wandb = _require("wandb", "wandb")
        os.makedirs(os.path.join(run_dir, "wandb"), exist_ok=True)
        self.run = wandb.init(mode="offline", dir=run_dir, config=config, reinit=True,
                              name=os.path.relpath(run_dir, config.get("out", ".")))

    def write(self, rows: Sequence[Dict[str, Any]]) -> None:
        for row in rows:
            self.run.log(scalars(row), step=int(row[STEP]))

    def close(self) -> None:
        self.run.finish()


SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink}
# the optional package each sink needs (None: none); the training scripts get one flag --<name> per sink, which is
# launch-only (experiments/training/cli.py keeps it out of the run's identity: mirroring metrics.csv changes no result)
SINK_PACKAGES: Dict[str, Any] = {"tensorboard": "tensorboard", "wandb": "wandb"}
SINK_HELP = {"tensorboard": "also write TensorBoard event files to <run>/tensorboard (needs: pip install tensorboard)",
             "wandb": "also log to an offline Weights & Biases run in <run>/wandb (needs: pip install wandb)"}


def check_available(names: Sequence[str]) -> None:
    """``MissingDependencyError`` naming the flag and the install command when a sink's package is missing
    (called before a run writes anything)."""
    for name in names:
        if SINK_PACKAGES.get(name):
            _require(SINK_PACKAGES[name], name)


def open_sinks(names: Sequence[str], run_dir: str, config: Dict[str, Any]) -> List[Sink]:
    """The sinks ``names`` (keys of ``SINKS``) for one run; ValueError for an unknown name,
    ``MissingDependencyError`` when a sink's package is not installed."""
    unknown = sorted(set(names) - set(SINKS))
    if unknown:
        raise ValueError(f"unknown output(s) {unknown}; known: {sorted(SINKS)}")
    return [SINKS[name](run_dir, config) for name in names]
