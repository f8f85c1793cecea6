"""The one training loop every benchmark script shares.

Per step: the benchmark's K losses → ``method.backward`` (the method writes the update into ``.grad``) →
``optimizer.step()``; every ``meta_every`` steps ``method.meta_update`` with ``Benchmark.meta_batches``'s
(L_T, L_V) batches. After each round (an epoch, or a block of iterations) the model is evaluated, one row
per split goes to ``metrics.csv`` (with the mean training losses, the mean task weights α and the bargaining
powers p), and a checkpoint is written; both atomically. ``--resume`` continues from the last checkpoint with
the same batches, so an interrupted run ends exactly where an uninterrupted one would.

Results: ``<out>/<benchmark>/<method>[_<tag>]/main-<task or all>/seed<k>/`` with ``metrics.csv``,
``config.json``, ``checkpoint.pt`` and, once every round is done, ``status.json`` saying so. A run's identity
is the digest of the settings that change its results (``results_io.run_identity``), kept in config.json and
status.json; one process at a time trains a run folder (``results_io.RunLock``).
"""
from __future__ import annotations

import inspect
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch
from tqdm import tqdm

from methods import METHODS, canonical_name, get_method

from .benchmarks import Benchmark
from .results_io import (RUN_RECORD_ENV, RunError, RunLock, check_metrics, environment, identity_difference,
                         identity_digest, load_checkpoint, move_aside, read_json, remove_stale_temporaries,
                         run_identity, save_checkpoint, write_json, write_rows)

log = logging.getLogger("auxinash")


@dataclass
class TrainConfig:
    method: str
    main_task: Optional[str] = None
    seed: int = 0
    lr: float = 1e-4
    lr_step: Optional[int] = None  # rounds between learning-rate decays (None: constant)
    lr_gamma: float = 0.5
    meta_every: int = 25
    meta_batches: str = "step"  # "official": fresh augmented batches for L_T and L_V (Benchmark.meta_batches)
    amp: bool = False
    representation: bool = False
    out: str = "results"
    tag: str = ""
    resume: bool = False
    force: bool = False
    stop_after: Optional[int] = None
    method_kwargs: Dict[str, Any] = field(default_factory=dict)
    flags: Dict[str, Any] = field(default_factory=dict)


def method_kwargs_from_flags(method: str, flags: Dict[str, Any], aliases: Dict[str, str]) -> Dict[str, Any]:
    """The flags that ``method``'s constructor accepts, where the user set them (None means 'paper default').

    ``aliases`` maps flag names to constructor argument names (e.g. olaux_lr → lr)."""
    accepted = inspect.signature(METHODS[canonical_name(method)].__init__).parameters
    kwargs = {}
    for flag, value in flags.items():
        name = aliases.get(flag, flag)
        if value is not None and name in accepted and name not in ("n_tasks", "main_task", "device"):
            kwargs[name] = value
    return kwargs


def run_directory(benchmark: Benchmark, config: TrainConfig) -> str:
    name = canonical_name(config.method)
    method_dir = f"{name}_{config.tag}" if config.tag else name
    main = f"main-{config.main_task}" if METHODS[name].uses_main_task else "main-all"
    return os.path.join(config.out, benchmark.name, method_dir, main, f"seed{config.seed}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_identity_of(benchmark: Benchmark, config: TrainConfig) -> Dict[str, Any]:
    """The settings that define a run (see ``results_io.run_identity``): its flags and loop settings, the
    benchmark, the method by its canonical name, and the main task only for methods that have one."""
    settings = {**config.flags, **asdict(config)}
    name = canonical_name(config.method)
    described = benchmark.describe()  # which data: the same flags on synthetic or other source data differ
    settings.update(method=name, benchmark=benchmark.name,
                    main_task=config.main_task if METHODS[name].uses_main_task else None,
                    synthetic_data=described.get("synthetic_data"), data_source=described.get("data_source"))
    return run_identity(settings)


def train(benchmark: Benchmark, config: TrainConfig) -> str:
    """Train one run (or resume it); return its results folder.

    Under the run's lock: ``--force`` first moves an existing run aside; a finished run with the same identity
    is left as it is; a run folder holding another identity stops with the differing settings; ``--resume``
    checks the checkpoint and metrics.csv before continuing."""
    run_dir = run_directory(benchmark, config)
    task_names = benchmark.task_names
    if config.main_task is None:
        config.main_task = task_names[0]
    if config.main_task not in task_names:
        raise ValueError(f"--main-task must be one of {task_names}, got {config.main_task!r}")
    benchmark.check_meta_batches(config.meta_batches)
    if benchmark.rounds < 1:
        raise ValueError(f"{benchmark.name} has no {benchmark.round_unit} to train; ask for at least one")
    record_run_directory(run_dir)
    with RunLock(run_dir):
        return _train_locked(benchmark, config, run_dir)




def record_run_directory(run_dir: str) -> None:
    """Add ``run_dir`` to the file named by ``$AUXINASH_RUN_RECORD``, if set: how ``experiments/sweep.py`` learns
    which run folders a command line trains, without changing the command line."""
    record = os.environ.get(RUN_RECORD_ENV)
    if not record:
        return
    run_dir = os.path.abspath(run_dir)
    known = open(record).read().split("\n") if os.path.exists(record) else []
    if run_dir not in known:
        with open(record, "a") as f:
            f.write(run_dir + "\n")


def _train_locked(benchmark: Benchmark, config: TrainConfig, run_dir: str) -> str:
    paths = {name: os.path.join(run_dir, file) for name, file in
             (("metrics", "metrics.csv"), ("config", "config.json"), ("checkpoint", "checkpoint.pt"),
              ("status", "status.json"))}
    identity = run_identity_of(benchmark, config)
    digest = identity_digest(identity)
    removed = remove_stale_temporaries(run_dir)
    if removed:
        log.info("removed temporary files left by interrupted writers: %s", ", ".join(removed))
    if config.force:
        aside = move_aside(run_dir)
        if aside:
            log.warning("--force: moved the earlier run in %s aside to %s; training from scratch", run_dir, aside)
    trained = os.path.exists(paths["status"]) or os.path.exists(paths["checkpoint"])
    if os.path.exists(paths["config"]) and trained:
        try:
            saved = read_json(paths["config"])
        except ValueError as error:
            raise RunError(f"{paths['config']} cannot be read ({error}); start the run again with --force") from None
        if saved.get("identity_digest") != digest:
            state = "finished" if os.path.exists(paths["status"]) else "unfinished"
            changes = identity_difference(saved.get("identity", {}), identity) if "identity" in saved else \
                ["(it was written before runs recorded their settings)"]
            raise RunError(f"{run_dir} holds a {state} run with other settings:\n  " + "\n  ".join(changes)
                           + f"\nPass --force to train it again with these settings (the old run is moved aside to "
                             f"{run_dir}.old-<time>), or another --out or --tag to keep both")
    if os.path.exists(paths["status"]):
        log.info("%s is finished already (pass --force to train it again)", run_dir)
        return run_dir
    if os.path.exists(paths["checkpoint"]) and not config.resume:
        raise RunError(f"{run_dir} holds an unfinished run: pass --resume to continue it or --force to start it "
                       f"again")
    device = benchmark.device
    task_names = benchmark.task_names
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    seed_everything(config.seed)
    model = benchmark.build_model().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    shared, specific = model.shared_parameters(), model.task_specific_parameters()
    method = get_method(config.method, n_tasks=len(task_names), main_task=task_names.index(config.main_task),
                        device=device, **config.method_kwargs)
    optimizer = torch.optim.Adam([{"params": shared + specific}, *method.main_optimizer_parameters()], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step or 10**9, gamma=config.lr_gamma)
    start_round, step, rows = 0, 0, []
    if config.resume and os.path.exists(paths["checkpoint"]):
        state = load_checkpoint(paths["checkpoint"], device)
        rows = check_metrics(paths["metrics"], state["round"], benchmark.round_unit)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            method.load_state_dict(state["method"])
            benchmark.load_state_dict(state["benchmark"])
            set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise RunError(f"the checkpoint {paths['checkpoint']} does not fit this run ({error}); start the run "
                           f"again with --force") from None
        start_round, step = state["round"], state["step"]
        log.info("resuming %s at %s %d", run_dir, benchmark.round_unit, start_round)
    write_json(paths["config"], {**config.flags, **asdict(config), "run_dir": run_dir, "benchmark": benchmark.name,
                                 "identity": identity, "identity_digest": digest,
                                 "tasks": list(task_names), "round_unit": benchmark.round_unit,
                                 "selection": benchmark.selection, "device": str(device),
                                 "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                 **benchmark.describe(), **environment()})

    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.amp)

    def compute_losses(batch):  # for meta-updates: float32, whose second-order terms bf16 would swamp
        return benchmark.losses(model, batch)[0].float()

    rounds_done = 0
    progress = tqdm(range(start_round, benchmark.rounds), desc=f"{benchmark.name} {config.method}",
                    unit=benchmark.round_unit, initial=start_round, total=benchmark.rounds)
    for round_index in progress:
        model.train()
        started = time.time()
        loss_sum = torch.zeros(len(task_names), device=device)
        weight_sum = torch.zeros(len(task_names), device=device)
        last_info: Dict[str, torch.Tensor] = {}
        steps_in_round = 0
        for batch in tqdm(benchmark.round_batches(round_index), desc=f"round {round_index}",
                          leave=False, unit="step"):
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                losses, representation = benchmark.losses(model, batch)
            losses = losses.float()
            info = method.backward(losses, shared, specific, representation=representation
                                   if config.representation or getattr(method, "fast", False) else None)
            optimizer.step()
            if hasattr(model, "after_step"):
                model.after_step()
            step += 1
            steps_in_round += 1
            loss_sum += losses.detach()
            weight_sum += info["weights"].detach().to(device, torch.float32)
            last_info = info
            if step % config.meta_every == 0:
                method.meta_update(compute_losses, *benchmark.meta_batches(batch, config.meta_batches), shared)
        scheduler.step()
        mean_losses = (loss_sum / max(steps_in_round, 1)).tolist()
        if not all(np.isfinite(mean_losses)):
            raise FloatingPointError(f"non-finite training loss in {benchmark.round_unit} {round_index} "
                                     f"({dict(zip(task_names, mean_losses))}); the last checkpoint in {run_dir} "
                                     f"is from before it: check the data, or lower --lr (new settings make a new run: add --force, "
                                     f"or keep this one with another --tag)")
        train_row = {"round": round_index, "step": step, "split": "train", "lr": optimizer.param_groups[0]["lr"],
                     "seconds": time.time() - started,
                     **{f"loss_{t}": v for t, v in zip(task_names, mean_losses)},
                     **{f"weight_{t}": v for t, v in zip(task_names, (weight_sum / max(steps_in_round, 1)).tolist())}}
        if "p" in last_info:
            train_row.update({f"p_{t}": v for t, v in zip(task_names, last_info["p"].tolist())})
        rows.append(train_row)
        for split, metrics in benchmark.evaluate(model).items():
            rows.append({"round": round_index, "step": step, "split": split, **metrics})
        write_rows(paths["metrics"], rows)
        save_checkpoint(paths["checkpoint"], {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                              "scheduler": scheduler.state_dict(), "method": method.state_dict(),
                                              "benchmark": benchmark.state_dict(), "rng": rng_state(),
                                              "round": round_index + 1, "step": step})
        progress.set_postfix({t: f"{v:.3g}" for t, v in zip(task_names, mean_losses)})
        rounds_done += 1
        if config.stop_after is not None and rounds_done >= config.stop_after and round_index + 1 < benchmark.rounds:
            log.info("stopping after %d %ss as asked; continue with --resume", rounds_done, benchmark.round_unit)
            return run_dir
    write_json(paths["status"], {"finished": True, "rounds": benchmark.rounds, "steps": step,
                                 "identity_digest": digest})
    log.info("finished %s", run_dir)
    return run_dir

