"""The one training loop every benchmark script shares.

Per step: the benchmark's K losses → ``method.backward`` (the method writes the update into ``.grad``; the
shared representation is passed only to a method in ``gradient_space="representation"``, the model's
``last_shared_parameters()`` only to a method with ``needs_last_shared_parameters``) → ``optimizer.step()``
→ ``method.after_step`` (only for a method with ``needs_after_step``); every ``meta_every`` steps (the method's
own ``meta_interval`` where it declares one) ``method.meta_update`` with ``Benchmark.meta_batches``'s (L_T, L_V)
batches (before the step's forward pass, with the step's batch, for a method with ``meta_before_step``); after
every epoch of the training data (``Benchmark.epoch_steps``) ``method.end_of_epoch`` with the epoch's mean losses. The method is told the optimiser once (``bind_optimizer``); the loop never names a method.
After each round (an epoch, or a block of iterations) the model is evaluated, one row
per split goes to ``metrics.csv`` (with the mean training losses, the mean task weights α and the bargaining
powers p), and a checkpoint is written; both atomically. ``--resume`` continues from the last checkpoint with
the same batches, so an interrupted run ends exactly where an uninterrupted one would.

Results: ``<out>/<benchmark>/<method>[_<tag>]/main-<task or all>/seed<k>/`` with ``metrics.csv``,
``config.json``, ``checkpoint.pt`` and, once every round is done, ``status.json`` saying so. A run's identity
is the digest of the settings that change its results (``results_io.run_identity``), kept in config.json and
status.json; one process at a time trains a run folder (``results_io.RunLock``).
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from methods import METHODS, canonical_name, get_method, method_settings

from .benchmarks import Benchmark
from experiments.storage.sinks import open_sinks
from experiments.storage.results_io import (LR, ROUND, RUN_FILES, RUN_RECORD_ENV, SECONDS, SPLIT, STEP, TRAIN_SPLIT,
                                            RunError, RunFolder, RunLock, loss_column, p_column, weight_column,
                                            check_metrics, environment, identity_difference, identity_digest,
                                            load_checkpoint, move_aside, read_json, remove_stale_temporaries,
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
    sinks: Tuple[str, ...] = ()  # outputs mirroring metrics.csv (experiments/storage/sinks.py), e.g. ("tensorboard",)
    method_kwargs: Dict[str, Any] = field(default_factory=dict)
    flags: Dict[str, Any] = field(default_factory=dict)


def run_folder(benchmark: Benchmark, config: TrainConfig) -> RunFolder:
    name = canonical_name(config.method)
    return RunFolder(out=config.out, benchmark=benchmark.name, method=name, tag=config.tag,
                     main_task=config.main_task if METHODS[name].uses_main_task else None, seed=config.seed)


def run_directory(benchmark: Benchmark, config: TrainConfig) -> str:
    return run_folder(benchmark, config).path


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
    """Add ``run_dir`` to the file named by ``$AUXINASH_RUN_RECORD``, if set: how ``orchestration/sweep.py`` learns
    which run folders a command line trains, without changing the command line."""
    record = os.environ.get(RUN_RECORD_ENV)
    if not record:
        return
    run_dir = os.path.abspath(run_dir)
    known = open(record).read().split("\n") if os.path.exists(record) else []
    if run_dir not in known:
        with open(record, "a") as f:
            f.write(run_dir + "\n")


@dataclass
class Training:
    """One run's training state: what a round reads and advances."""

    benchmark: Benchmark
    config: TrainConfig
    run_dir: str
    paths: Dict[str, str]
    digest: str
    model: torch.nn.Module
    method: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    shared: list
    specific: list
    start_round: int = 0
    step: int = 0
    rows: list = field(default_factory=list)
    sinks: list = field(default_factory=list)
    epoch_losses: Optional[torch.Tensor] = None  # the current epoch's (loss sum, valid count) per task, 2 × K


def meta_interval(t: Training) -> int:
    """Steps between meta-updates: the method's own interval where it declares one, else ``--meta-every``."""
    return t.method.meta_interval if t.method.meta_interval is not None else t.config.meta_every


def _train_locked(benchmark: Benchmark, config: TrainConfig, run_dir: str) -> str:
    paths = {name: os.path.join(run_dir, file) for name, file in RUN_FILES.items()}
    identity = run_identity_of(benchmark, config)
    digest = identity_digest(identity)
    if _finished_or_refused(config, run_dir, paths, identity, digest):
        return run_dir
    training = _build(benchmark, config, run_dir, paths, digest)
    if config.resume and os.path.exists(paths["checkpoint"]):
        _resume(training)
    record = _config_record(training, identity)
    write_json(paths["config"], record)
    training.sinks = open_sinks(config.sinks, run_dir, record)
    try:
        return _train_rounds(training)
    finally:
        for sink in training.sinks:
            sink.close()


def _finished_or_refused(config: TrainConfig, run_dir: str, paths: Dict[str, str], identity: Dict[str, Any],
                         digest: str) -> bool:
    """Tidy the run folder and say whether the run is finished already; ``RunError`` when it holds another
    settings' run or an unfinished run without ``--resume``."""
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
        return True
    if os.path.exists(paths["checkpoint"]) and not config.resume:
        raise RunError(f"{run_dir} holds an unfinished run: pass --resume to continue it or --force to start it "
                       f"again")
    return False


def _build(benchmark: Benchmark, config: TrainConfig, run_dir: str, paths: Dict[str, str], digest: str) -> Training:
    """The seeded model, the method, Adam over both, and the learning-rate schedule."""
    device, task_names = benchmark.device, benchmark.task_names
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
    method.bind_optimizer(optimizer)
    if method.meta_interval is not None and method.meta_interval != config.meta_every:
        log.info("%s updates every %d steps (its own interval); --meta-every %d is recorded but not used",
                 config.method, method.meta_interval, config.meta_every)
    return Training(benchmark, config, run_dir, paths, digest, model, method, optimizer, scheduler, shared, specific,
                    epoch_losses=torch.zeros(2, len(task_names), device=device))


def _resume(t: Training) -> None:
    """Continue from the checkpoint: every state, the RNGs and the metrics rows so far (checked)."""
    state = load_checkpoint(t.paths["checkpoint"], t.benchmark.device)
    t.rows = check_metrics(t.paths["metrics"], state["round"], t.benchmark.round_unit)
    try:
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.method.load_state_dict(state["method"])
        t.benchmark.load_state_dict(state["benchmark"])
        set_rng_state(state["rng"])
        if "epoch_losses" in state:  # checkpoints written before the end-of-epoch hook: its first epoch is partial
            t.epoch_losses = state["epoch_losses"].to(t.epoch_losses.device)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"the checkpoint {t.paths['checkpoint']} does not fit this run ({error}); start the run "
                       f"again with --force") from None
    t.start_round, t.step = state["round"], state["step"]
    log.info("resuming %s at %s %d", t.run_dir, t.benchmark.round_unit, t.start_round)


def _config_record(t: Training, identity: Dict[str, Any]) -> Dict[str, Any]:
    """config.json: the flags, the loop settings, the method's resolved settings (once), the identity, the
    benchmark's description and the environment."""
    config, device = t.config, t.benchmark.device
    loop_settings = {key: value for key, value in asdict(config).items() if key not in ("flags", "method_kwargs")}
    if t.method.meta_interval is not None:  # the method's own interval replaces --meta-every (still recorded above)
        loop_settings["meta_interval"] = t.method.meta_interval
    return {**config.flags, **loop_settings, "run_dir": t.run_dir, "benchmark": t.benchmark.name,
            "method_settings": method_settings(config.method, **config.method_kwargs),
            "identity": identity, "identity_digest": t.digest,
            "tasks": list(t.benchmark.task_names), "round_unit": t.benchmark.round_unit,
            "selection": t.benchmark.selection, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            **t.benchmark.describe(), **environment()}


def _train_rounds(t: Training) -> str:
    """Every remaining round, then status.json; stops early after ``stop_after`` rounds."""
    progress = tqdm(range(t.start_round, t.benchmark.rounds), desc=f"{t.benchmark.name} {t.config.method}",
                    unit=t.benchmark.round_unit, initial=t.start_round, total=t.benchmark.rounds)
    for rounds_done, round_index in enumerate(progress, start=1):
        mean_losses, mean_weights, last_info, seconds = _train_round(t, round_index)
        _record_round(t, round_index, mean_losses, mean_weights, last_info, seconds)
        progress.set_postfix({task: f"{v:.3g}" for task, v in zip(t.benchmark.task_names, mean_losses)})
        stop = t.config.stop_after
        if stop is not None and rounds_done >= stop and round_index + 1 < t.benchmark.rounds:
            log.info("stopping after %d %ss as asked; continue with --resume", rounds_done, t.benchmark.round_unit)
            return t.run_dir
    write_json(t.paths["status"], {"finished": True, "rounds": t.benchmark.rounds, "steps": t.step,
                                   "identity_digest": t.digest})
    log.info("finished %s", t.run_dir)
    return t.run_dir


def _stop_message(t: Training, where: str, detail: str) -> str:
    return (f"non-finite training loss in {where} ({detail}); the last checkpoint in {t.run_dir} is from before it: "
            f"check the data, or lower --lr (new settings make a new run: add --force, or keep this one with another "
            f"--tag)")


def _method_backward(t: Training, losses: torch.Tensor, representation: torch.Tensor, round_index: int):
    """``method.backward`` of one step: the representation only for a method in ``gradient_space="representation"``,
    the model's declared last shared layer only for a method with ``needs_last_shared_parameters``."""
    extra = {"last_shared_parameters": t.model.last_shared_parameters()} if t.method.needs_last_shared_parameters else {}
    try:
        return t.method.backward(losses, t.shared, t.specific, **extra,
                                 representation=representation if t.method.gradient_space == "representation" else None)
    except FloatingPointError as error:  # a NaN or infinite loss: stop before the model takes it
        raise FloatingPointError(_stop_message(t, f"{t.benchmark.round_unit} {round_index}, step {t.step + 1}",
                                               str(error))) from None


def _train_round(t: Training, round_index: int):
    """One round of steps (and meta-updates): the per-task mean losses over batches with a valid target, the mean
    weights, the last step's info and the round's seconds."""
    benchmark, config, device = t.benchmark, t.config, t.benchmark.device
    n_tasks = len(benchmark.task_names)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.amp)

    def compute_losses(batch):  # for meta-updates: float32, whose second-order terms bf16 would swamp
        return benchmark.losses(t.model, batch)[0].float()

    t.model.train()
    started = time.time()
    loss_sum, loss_count, weight_sum = (torch.zeros(n_tasks, device=device) for _ in range(3))
    last_info: Dict[str, torch.Tensor] = {}
    steps_in_round = 0
    interval, epoch_steps = meta_interval(t), benchmark.epoch_steps()
    before = t.method.meta_before_step  # the method learns before the step, on the step's own batch
    for batch in tqdm(benchmark.round_batches(round_index), desc=f"round {round_index}", leave=False, unit="step"):
        if before and (t.step + 1) % interval == 0:
            t.method.meta_update(compute_losses, *benchmark.meta_batches(batch, config.meta_batches), t.shared,
                                 task_specific_parameters=t.specific)
        t.optimizer.zero_grad(set_to_none=True)
        with autocast:
            losses, representation = benchmark.losses(t.model, batch)
        losses = losses.float()
        info = _method_backward(t, losses, representation, round_index)
        t.optimizer.step()
        if hasattr(t.model, "after_step"):
            t.model.after_step()
        if t.method.needs_after_step:
            t.method.after_step(compute_losses, batch)
        t.step += 1
        steps_in_round += 1
        valid = benchmark.valid_targets(batch).to(device, torch.float32)  # batches with a valid target, per task
        loss_sum += losses.detach() * valid
        loss_count += valid
        t.epoch_losses += torch.stack([losses.detach() * valid, valid])
        weight_sum += info["weights"].detach().to(device, torch.float32)
        last_info = info
        if not before and t.step % interval == 0:
            t.method.meta_update(compute_losses, *benchmark.meta_batches(batch, config.meta_batches), t.shared,
                                 task_specific_parameters=t.specific)
        if epoch_steps is not None and t.step % epoch_steps == 0:
            _end_of_epoch(t)
    if epoch_steps is None:  # the round was one epoch
        _end_of_epoch(t)
    t.scheduler.step()
    # a task without a valid target in any batch of the round has no mean loss (NaN), which is no error
    counted = loss_count.tolist()
    mean_losses = [s / c if c else float("nan") for s, c in zip(loss_sum.tolist(), counted)]
    if not all(np.isfinite(v) for v, c in zip(mean_losses, counted) if c):
        raise FloatingPointError(_stop_message(t, f"{benchmark.round_unit} {round_index}",
                                               str(dict(zip(benchmark.task_names, mean_losses)))))
    return mean_losses, (weight_sum / max(steps_in_round, 1)).tolist(), last_info, time.time() - started


def _end_of_epoch(t: Training) -> None:
    """``method.end_of_epoch`` with the epoch's mean loss per task (over batches with a valid target; NaN for a
    task without one), then a new epoch."""
    sums, counts = t.epoch_losses.tolist()
    t.method.end_of_epoch(torch.tensor([s / c if c else float("nan") for s, c in zip(sums, counts)],
                                       dtype=torch.float64))
    t.epoch_losses.zero_()


def _record_round(t: Training, round_index: int, mean_losses, mean_weights, last_info, seconds: float) -> None:
    """The round's rows (training, then each evaluated split) into metrics.csv and the sinks; the checkpoint."""
    task_names = t.benchmark.task_names
    train_row = {ROUND: round_index, STEP: t.step, SPLIT: TRAIN_SPLIT, LR: t.optimizer.param_groups[0]["lr"],
                 SECONDS: seconds, **{loss_column(task): v for task, v in zip(task_names, mean_losses)},
                 **{weight_column(task): v for task, v in zip(task_names, mean_weights)}}
    if "p" in last_info:
        train_row.update({p_column(task): v for task, v in zip(task_names, last_info["p"].tolist())})
    new_rows = [train_row] + [{ROUND: round_index, STEP: t.step, SPLIT: split, **metrics}
                              for split, metrics in t.benchmark.evaluate(t.model).items()]
    t.rows.extend(new_rows)
    write_rows(t.paths["metrics"], t.rows)
    for sink in t.sinks:
        sink.write(new_rows)
    save_checkpoint(t.paths["checkpoint"], {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                                            "scheduler": t.scheduler.state_dict(), "method": t.method.state_dict(),
                                            "benchmark": t.benchmark.state_dict(), "rng": rng_state(),
                                            "round": round_index + 1, "step": t.step,
                                            "epoch_losses": t.epoch_losses})
