"""The paper's illustrative example (Figure 1): linear regression with a helpful and a harmful auxiliary."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models import MultiTaskModel, SharedLinear
from ..tasks import Task
from .base import Batch, Benchmark

PAPER_NOISE = {"main": 5.0, "helpful": 0.25}  # the paper's label noise (std); the harmful one is not stated
DEFAULT_HARMFUL_NOISE = 5.0  # our choice, see ToyBenchmark
DEFAULT_META_VAL_SIZE = 1000  # our choice, see ToyBenchmark


def least_squares_optimum(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The closed-form least-squares solution W = (XᵀX)⁻¹ Xᵀy: where a task's training loss is lowest (■)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return np.linalg.solve(x.T @ x, x.T @ y)


class ToyBenchmark(Benchmark):
    """The paper's illustrative example (Figure 1): y = Wᵀx with two shared parameters and three tasks.

    The main task and a helpful auxiliary share the optimum W* = (1, 1); a harmful auxiliary has (−1, −4).
    The paper's settings: label noise std 5 for the main task and 0.25 for the helpful auxiliary, 1,000
    training samples, batch 256 (Adam lr 1e-2 and 1,000 epochs are set by ``train_toy``). Not stated in the
    paper, our choices:

    - ``harmful_noise`` = 5 (the harmful auxiliary's label noise std; as noisy as the main task). With 0.25
      the harmful task's batch gradient is close to its full-data gradient, and since every AuxiNash update
      lowers every task's batch loss to first order (g_kᵀΔθ = p_k/α_k > 0), the harmful task vetoes every
      path towards W* (its loss at W* exceeds its loss at W = 0): W stalls far from W*.
    - ``meta_val_size`` = 1,000: the main-task loss that p is learned on (L_V) comes from a held-out set of
      1,000 extra samples drawn like the training set; 0 draws the meta-validation batches from the
      training set itself, as the paper's other benchmarks do.
    - x ~ N(0, I₂); W starts at (0, 0) (``SharedLinear``).

    The main-task test loss is measured on 10,000 fresh samples (the noise alone gives 25).
    """

    round_unit = "epoch"

    def __init__(self, device: torch.device, seed: int, epochs: int = 1000, eval_every: int = 10,
                 n_train: int = 1000, batch_size: int = 256, noise: Sequence[float] | None = None,
                 harmful_noise: float = DEFAULT_HARMFUL_NOISE, meta_val_size: int = DEFAULT_META_VAL_SIZE) -> None:
        super().__init__(device, seed)
        if noise is None:
            noise = (PAPER_NOISE["main"], PAPER_NOISE["helpful"], harmful_noise)
        if len(noise) != 3 or any(not np.isfinite(s) or s < 0 for s in noise):
            raise ValueError(f"the label noise must be three finite stds >= 0 (main, helpful, harmful), got {noise}")
        if meta_val_size < 0 or int(meta_val_size) != meta_val_size:
            raise ValueError(f"meta_val_size must be a whole number >= 0 (0: meta-validation batches from the "
                             f"training set), got {meta_val_size}")
        if epochs < 1 or eval_every < 1 or n_train < 3 or batch_size < 1:
            raise ValueError(f"epochs, eval_every and batch_size must be >= 1 and n_train >= 3, got "
                             f"{epochs}, {eval_every}, {batch_size}, {n_train}")
        self.name = "toy"
        self.tasks = (Task("main", "main", "regression"), Task("helpful", "helpful", "regression"),
                      Task("harmful", "harmful", "regression"))
        self.epochs, self.eval_every, self.batch_size = epochs, eval_every, batch_size
        self.noise, self.meta_val_size = tuple(float(s) for s in noise), int(meta_val_size)
        self.rounds = math.ceil(epochs / eval_every)
        self.optima = {"main": (1.0, 1.0), "helpful": (1.0, 1.0), "harmful": (-1.0, -4.0)}
        rng = np.random.default_rng(seed)
        self.train = self._sample(rng, n_train, self.noise)
        self.test = self._sample(rng, 10_000, self.noise)
        # drawn after the training and test sets, so these stay the same whatever the held-out size
        self.meta_val = self._sample(rng, self.meta_val_size, self.noise) if self.meta_val_size else self.train
        self.generator = torch.Generator().manual_seed(seed + 1)

    def _sample(self, rng: np.random.Generator, n: int, noise: Sequence[float]) -> Batch:
        x = rng.normal(size=(n, 2))
        batch = {"x": torch.tensor(x, dtype=torch.float32)}
        for (name, optimum), std in zip(self.optima.items(), noise):
            batch[name] = torch.tensor(x @ np.array(optimum) + std * rng.normal(size=n), dtype=torch.float32)
        return self.to_device(batch)

    def main_task_optimum(self) -> np.ndarray:
        """The least-squares optimum of the main task's training set (the ■ of the figure)."""
        return least_squares_optimum(self.train["x"].cpu().numpy(), self.train["main"].cpu().numpy())

    def build_model(self) -> MultiTaskModel:
        return SharedLinear({t.name: 1 for t in self.tasks})

    def round_batches(self, round_index: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + round_index)
        n = len(self.train["x"])
        for _ in range(min(self.eval_every, self.epochs - round_index * self.eval_every)):
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n, self.batch_size):
                picks = order[start:start + self.batch_size]
                yield {k: v[picks] for k, v in self.train.items()}

    def epoch_steps(self) -> int:
        """A round is ``eval_every`` epochs, each of ⌈training samples / batch size⌉ batches."""
        return math.ceil(len(self.train["x"]) / self.batch_size)

    def meta_val_batch(self) -> Batch:
        """A random batch (with replacement) of the held-out set, or of the training set when there is none."""
        picks = torch.randint(len(self.meta_val["x"]), (self.batch_size,), generator=self.generator).to(self.device)
        return {k: v[picks] for k, v in self.meta_val.items()}

    def fresh_training_batch(self, items: str = "train") -> Batch:
        """``batch_size`` distinct samples of the training set (``"train"``) or of the meta-validation set
        (``"meta"``: the held-out samples, or the training set when there are none); no augmentation here."""
        source = self.meta_val if items == "meta" else self.train
        picks = torch.randperm(len(source["x"]), generator=self.generator)[:self.batch_size].to(self.device)
        return {k: v[picks] for k, v in source.items()}

    def losses(self, model, batch):
        predictions = model(batch["x"])
        return torch.stack([t.loss(predictions[t.name], batch[t.key]) for t in self.tasks]), predictions["main"]

    @torch.no_grad()
    def evaluate(self, model):
        predictions = model(self.test["x"])
        row = {f"{t.name}_mse": F.mse_loss(predictions[t.name], self.test[t.key]).item() for t in self.tasks}
        row.update({"w1": model.weight[0].item(), "w2": model.weight[1].item()})
        return {"test": row}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])

    def describe(self):
        return {"label_noise": dict(zip(self.task_names, self.noise)), "n_train": len(self.train["x"]),
                "batch_size": self.batch_size, "epochs": self.epochs,
                "meta_val": (f"held-out {self.meta_val_size} samples" if self.meta_val_size
                             else "batches drawn from the training set itself")}
