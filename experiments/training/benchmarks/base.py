"""The interface every benchmark implements for the shared loop (``experiments.training.loop.train``)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch

from data.common import is_synthetic  # noqa: F401  (re-exported: the benchmarks' configs record it)

from ..models import MultiTaskModel
from experiments.storage.results_io import metric_column
from ..tasks import Task

Batch = Dict[str, torch.Tensor]
META_BATCHES = ("step", "official")  # where a meta-update's L_T and L_V batches come from (Benchmark.meta_batches)


class Benchmark:
    """Interface used by ``experiments.training.loop.train``."""

    name: str
    tasks: Tuple[Task, ...]
    rounds: int
    round_unit: str = "epoch"
    selection: str = "last"  # how make_tables picks a run's result: mean of the last evaluations, or best val

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = torch.device(device)
        self.seed = seed

    @property
    def task_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def build_model(self) -> MultiTaskModel:
        raise NotImplementedError

    def round_batches(self, round_index: int) -> Iterator[Batch]:
        raise NotImplementedError

    def meta_val_batch(self) -> Batch:
        raise NotImplementedError

    def epoch_steps(self) -> Optional[int]:
        """Steps in one epoch of the training data, where a round is not exactly one epoch (several epochs, or a
        block of iterations): the loop calls the method's ``end_of_epoch`` hook every this many steps, so that the
        evaluation cadence does not change a method that works in epochs. None (the default): each round is one
        epoch."""
        return None

    def fresh_training_batch(self, items: str = "train") -> Batch:
        """A new random batch, shuffled and augmented as the training stream's are, of the training items
        (``"train"``) or of the meta-validation items (``"meta"``: the training items themselves unless held
        out). Drawn with state the benchmark saves, so that ``--resume`` replays it. Needed only for
        ``--meta-batches official``; a benchmark without it refuses that choice at the start of training."""
        raise NotImplementedError(f"the {self.name} benchmark cannot draw fresh training batches for the "
                                  f"meta-update: use --meta-batches step")

    def check_meta_batches(self, mode: str) -> None:
        """Fail before training if ``mode`` is unknown or this benchmark cannot serve it."""
        if mode not in META_BATCHES:
            raise ValueError(f"--meta-batches must be one of {META_BATCHES}, got {mode!r}")
        if mode == "official" and type(self).fresh_training_batch is Benchmark.fresh_training_batch:
            raise ValueError(f"--meta-batches official is not available for the {self.name} benchmark (it cannot "
                             f"draw fresh training batches): use --meta-batches step")

    def meta_batches(self, step_batch: Batch, mode: str = "step") -> Tuple[Batch, Batch]:
        """The (L_T, L_V) batches of a meta-update.

        ``"step"``: the step's own training batch for L_T and ``meta_val_batch()`` (un-augmented) for L_V.
        ``"official"``: as the official AuxiNash hyperstep draws them (AvivSham/auxinash
        ``methods/auxinash/hyperstep.py`` ~27 and ~42, ``methods/auxilearn/hyperstep.py``: ``next(iter(loader))``
        on the shuffled training loader for L_T and on ``val_loader`` for L_V, which is the augmented training
        set itself, or an augmented held-out part of it, ``experiments/nyuv2/trainer.py`` ~55-75): a fresh
        augmented training batch for L_T and a fresh augmented meta-validation batch for L_V.
        """
        if mode == "step":
            return step_batch, self.meta_val_batch()
        if mode == "official":
            return self.fresh_training_batch("train"), self.fresh_training_batch("meta")
        raise ValueError(f"--meta-batches must be one of {META_BATCHES}, got {mode!r}")

    def valid_targets(self, batch: Batch) -> torch.Tensor:
        """K booleans (on the device): whether each task has any valid target in ``batch`` (a task whose target
        is not in the batch, e.g. a self-supervised auxiliary, always has). The loop's epoch means of the
        training losses count only the batches where a task has."""
        flags = [t.has_valid_target(batch[t.key]) if isinstance(batch, dict) and t.key in batch
                 else torch.tensor(True, device=self.device) for t in self.tasks]
        return torch.stack([f.to(self.device) for f in flags])

    def losses(self, model: MultiTaskModel, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """The K task losses (in task order) and the shared representation they were computed from."""
        raise NotImplementedError

    def evaluate(self, model: MultiTaskModel) -> Dict[str, Dict[str, float]]:
        """split → metric column → value."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate_one_head(self, model: MultiTaskModel, data: Any, task: Task, head: str,
                          input_key: str = "image") -> Dict[str, Dict[str, float]]:
        """``evaluate`` of ``task`` alone (a main task whose auxiliaries have no metric): ``model.heads[head]`` on
        the shared features of ``batch[input_key]``, target ``batch[task.key]``, per split ("val", "test") of
        ``data.eval_batches``, as ``metric_column(task.name, metric)`` columns."""
        model.eval()
        results = {}
        for split in ("val", "test"):
            accumulator = task.accumulator()
            for batch in data.eval_batches(split):
                accumulator.update(model.heads[head](model.encode(batch[input_key])).float(), batch[task.key])
            results[split] = {metric_column(task.name, k): v for k, v in accumulator.result().items()}
        model.train()
        return results

    @torch.no_grad()
    def evaluate_heads(self, model: MultiTaskModel, data: Any, input_key: str,
                       accumulator: Callable[[Task], Any] = lambda task: task.accumulator(),
                       splits: Tuple[str, ...] = ("val", "test")) -> Dict[str, Dict[str, float]]:
        """``evaluate`` for a model with one head per task over one input: per split of ``data.eval_batches``,
        every task's accumulator over the whole split, as ``metric_column(task, metric)`` columns."""
        model.eval()
        results = {}
        for split in splits:
            accumulators = {t.name: accumulator(t) for t in self.tasks}
            for batch in data.eval_batches(split):
                outputs = model(batch[input_key])
                for t in self.tasks:
                    accumulators[t.name].update(outputs[t.name].float(), batch[t.key])
            results[split] = {metric_column(name, k): v for name, acc in accumulators.items()
                              for k, v in acc.result().items()}
        model.train()
        return results

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def describe(self) -> Dict[str, Any]:
        return {}
