"""The interface every benchmark implements for the shared loop (``experiments.loop.train``)."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, Tuple

import torch

from ..models import MultiTaskModel
from ..tasks import Task

Batch = Dict[str, torch.Tensor]


def is_synthetic(root: str) -> bool:
    """Roots written by ``data.synthetic`` carry a SYNTHETIC marker."""
    return os.path.exists(os.path.join(root, "SYNTHETIC"))


class Benchmark:
    """Interface used by ``experiments.loop.train``."""

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

    def losses(self, model: MultiTaskModel, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """The K task losses (in task order) and the shared representation they were computed from."""
        raise NotImplementedError

    def evaluate(self, model: MultiTaskModel) -> Dict[str, Dict[str, float]]:
        """split → metric column → value."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def describe(self) -> Dict[str, Any]:
        return {}
