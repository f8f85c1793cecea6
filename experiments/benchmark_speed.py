"""Speed of every method against the cost of the K per-task gradients, in one run on one device.

    python experiments/benchmark_speed.py --device cpu          # width-reduced models (see --help)
    python experiments/benchmark_speed.py --device cuda [--amp]

Measures, with warm-up and medians over ``--steps`` steps, on NYUv2 shapes (SegNet, 3×288×384, batch 2 and 8)
and CIFAR shapes (WRN-28-2, 32×32, 128 + 128 images with their rotated copies and Exemplar-MT views):

1. the floor: an equal-weighting step (forward + one backward + Adam) and forward + K per-task gradients
   (``torch.autograd.grad`` each) summed into ``.grad`` + Adam: what any gradient-combining method must pay;
2. one training step of every method in ``METHOD_NAMES`` and the meta-update of AuxiNash and AuxiLearn
   (amortised AuxiNash step: step + meta-update / 25);
3. the Nash solver against the CVXPY reference for K = 2..10: time per solve and relative residual.

Writes ``results/speed/<device>.csv`` and prints a markdown table with each time as a ratio to the K-gradient
floor measured in the same run.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from experiments.benchmarks import CIFAR_TASKS, NYUV2_TASKS  # noqa: E402
from experiments.models import CifarSSLNet, SegNet  # noqa: E402
from methods import METHOD_NAMES, get_method  # noqa: E402
from methods.gradients import per_task_gradients, write_grad  # noqa: E402
from methods.nash_solver import CvxpyNashSolver, relative_residual, solve_nash  # noqa: E402

log = logging.getLogger("benchmark_speed")


def timed(function: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds of ``function`` over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


class Workload:
    """A model, its optimiser and a fixed batch, with the K-loss function of the benchmark."""

    def __init__(self, name: str, device: torch.device, width: float, batch: int, shape, amp: bool) -> None:
        self.name, self.device, self.amp = name, device, amp
        generator = torch.Generator().manual_seed(0)
        if name == "nyuv2":
            self.tasks = NYUV2_TASKS
            self.model = SegNet({t.name: t.channels for t in self.tasks}, width)
            h, w = shape
            normal = torch.nn.functional.normalize(torch.randn(batch, 3, h, w, generator=generator), dim=1)
            self.batch = {"image": torch.rand(batch, 3, h, w, generator=generator),
                          "segmentation": torch.randint(-1, 13, (batch, h, w), generator=generator),
                          "depth": torch.rand(batch, 1, h, w, generator=generator) + 0.5, "normal": normal}
        else:
            self.tasks = tuple(CIFAR_TASKS.values())
            self.model = CifarSSLNet(width=width)
            images = lambda: torch.randn(2 * batch, 3, 32, 32, generator=generator)  # noqa: E731
            labels = torch.randint(0, 10, (2 * batch,), generator=generator)
            labels[batch:] = -1
            self.batch = {"image": images(), "rotated": images(), "view": images(), "label": labels,
                          "rotation": torch.randint(0, 4, (2 * batch,), generator=generator)}
        self.model.to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.batch = {k: v.to(device) for k, v in self.batch.items()}
        if device.type == "cuda":
            for key in ("image", "rotated", "view"):
                if key in self.batch:
                    self.batch[key] = self.batch[key].contiguous(memory_format=torch.channels_last)
        self.shared, self.specific = self.model.shared_parameters(), self.model.task_specific_parameters()
        self.optimizer = torch.optim.Adam(self.shared + self.specific, lr=1e-6)

    def losses(self, batch=None) -> torch.Tensor:
        batch = batch or self.batch
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.name == "nyuv2":
                features = self.model.encode(batch["image"])
                losses = [t.loss(self.model.heads[t.name](features), batch[t.key]) for t in self.tasks]
            else:
                n = len(batch["image"])
                features = self.model.encode(torch.cat([batch["image"], batch["rotated"], batch["view"]]))
                f_image, f_rotated, f_view = features.split(n)
                teacher = self.model.teacher_features(batch["image"]).float()
                losses = [self.tasks[0].loss(self.model.heads["classification"](f_image), batch["label"]),
                          self.tasks[1].loss(self.model.heads["rotation"](f_rotated), batch["rotation"]),
                          1 - torch.nn.functional.cosine_similarity(
                              self.model.student_exemplar_features(f_view).float(), teacher, dim=1).mean()]
        return torch.stack([loss.float() for loss in losses])

    def equal_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.losses().sum().backward()
        self.optimizer.step()

    def k_gradient_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        grads = per_task_gradients(self.losses(), self.shared, self.specific)
        write_grad(self.shared, grads.shared.sum(0))
        write_grad(self.specific, grads.task_specific.sum(0))
        self.optimizer.step()

    def method_step(self, method) -> Callable[[], None]:
        def step() -> None:
            self.optimizer.zero_grad(set_to_none=True)
            method.backward(self.losses(), self.shared, self.specific)
            self.optimizer.step()
        return step


def measure_workload(work: Workload, label: str, steps: int, warmup: int, meta_steps: int,
                     methods: List[str]) -> List[Dict]:
    device = work.device
    rows = []
    floor_equal = timed(work.equal_step, steps, warmup, device)
    floor = timed(work.k_gradient_step, steps, warmup, device)
    rows.append({"workload": label, "item": "floor: forward + 1 backward + Adam (equal)", "ms": floor_equal})
    rows.append({"workload": label, "item": "floor: forward + K gradients + Adam", "ms": floor})
    for name in methods:
        method = get_method(name, n_tasks=len(work.tasks), main_task=0, device=device)
        step_ms = timed(work.method_step(method), steps, warmup, device)
        rows.append({"workload": label, "item": f"step: {name}", "ms": step_ms})
        log.info("%s: %s step %.1f ms", label, name, step_ms)
        if name in ("auxinash", "auxilearn"):
            meta_ms = timed(lambda: method.meta_update(work.losses, work.batch, work.batch, work.shared),
                            meta_steps, 1, device)
            rows.append({"workload": label, "item": f"meta-update: {name}", "ms": meta_ms,
                         "ratio_to_step": meta_ms / step_ms})
            rows.append({"workload": label, "item": f"amortised step (meta every 25): {name}",
                         "ms": step_ms + meta_ms / 25})
    for row in rows:
        row["ratio_to_floor"] = row["ms"] / floor
    return rows


def measure_solver(ks=range(2, 11), repeats: int = 200, cvxpy_repeats: int = 5) -> List[Dict]:
    rows = []
    rng = np.random.default_rng(0)
    for k in ks:
        grads = rng.normal(size=(k, 1000))
        gram = grads @ grads.T
        p = rng.uniform(0.5, 1.5, size=k)
        p = p / p.sum() * k
        ours = timed(lambda: solve_nash(gram, p), repeats, 5, torch.device("cpu"))
        reference_solver = CvxpyNashSolver(k, p)
        reference_solver.solve(gram)  # the first solve compiles the program; the official code pays it once
        reference = timed(lambda: reference_solver.solve(gram), cvxpy_repeats, 0, torch.device("cpu"))
        rows.append({"workload": "Nash solver", "item": f"K={k}", "ms": ours, "cvxpy_ms": reference,
                     "speedup": reference / ours, "residual": relative_residual(gram, p, solve_nash(gram, p)),
                     "cvxpy_residual": relative_residual(gram, p, reference_solver.solve(gram))})
    return rows


def markdown(frame: pd.DataFrame) -> str:
    lines = []
    for workload, group in frame.groupby("workload", sort=False):
        lines.append(f"\n**{workload}**\n")
        if workload == "Nash solver":
            lines += ["| K | ours (ms) | CVXPY (ms) | speed-up | our residual | CVXPY residual |", "|---|---|---|---|---|---|"]
            lines += [f"| {r.item[2:]} | {r.ms:.3f} | {r.cvxpy_ms:.1f} | {r.speedup:.0f}× | {r.residual:.1e} | "
                      f"{r.cvxpy_residual:.1e} |" for r in group.itertuples()]
        else:
            lines += ["| | ms | × K-gradient floor | × step |", "|---|---|---|---|"]
            lines += [f"| {r.item} | {r.ms:.1f} | {r.ratio_to_floor:.2f} | "
                      f"{'' if pd.isna(getattr(r, 'ratio_to_step', np.nan)) else f'{r.ratio_to_step:.1f}'} |"
                      for r in group.itertuples()]
    return "\n".join(lines)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--width", type=float, default=None,
                        help="model width multiplier (default: 1 on CUDA, 0.25 on CPU)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[288, 384], help="NYUv2 image size")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[2, 8], help="NYUv2 batch sizes (none: skip)")
    parser.add_argument("--cifar-batch", type=int, default=128, help="labelled (= unlabelled) CIFAR images")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 CUDA, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--meta-steps", type=int, default=3, help="timed meta-updates")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument("--skip-solver", action="store_true")
    parser.add_argument("--out", default="results/speed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    width = args.width if args.width is not None else (1.0 if device.type == "cuda" else 0.25)
    steps = args.steps or (20 if device.type == "cuda" else 5)
    rows = []
    for batch in args.batch_sizes:
        work = Workload("nyuv2", device, width, batch, tuple(args.image_size), args.amp)
        label = f"NYUv2 SegNet width {width:g}, {args.image_size[0]}×{args.image_size[1]}, batch {batch}"
        rows += measure_workload(work, label, steps, args.warmup, args.meta_steps, args.methods)
    work = Workload("cifar", device, width, args.cifar_batch, None, args.amp)
    rows += measure_workload(work, f"CIFAR WRN-28-2 width {width:g}, {args.cifar_batch}+{args.cifar_batch} images "
                             f"× 3 views", steps, args.warmup, args.meta_steps, args.methods)
    if not args.skip_solver:
        rows += measure_solver()
    frame = pd.DataFrame(rows)
    name = device.type + ("_amp" if args.amp else "")
    os.makedirs(args.out, exist_ok=True)
    frame.assign(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 torch=torch.__version__, date=datetime.date.today().isoformat(), amp=args.amp,
                 threads=torch.get_num_threads()).to_csv(os.path.join(args.out, f"{name}.csv"), index=False)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}, {datetime.date.today()}, "
          f"amp={args.amp}")
    print(markdown(frame))
    return frame


if __name__ == "__main__":
    main()
