"""Speed of every method against the cost of the K per-task gradients, in one run on one device.

    python experiments/benchmark_speed.py --device cpu          # width-reduced models (see --help)
    python experiments/benchmark_speed.py --device cpu --quick  # every row once, half width: minutes
    python experiments/benchmark_speed.py --device cuda [--amp]

Measures, with warm-up and medians over ``--steps`` steps, on NYUv2 shapes (SegNet, 3×288×384, batch 2 and 8)
and CIFAR shapes (WRN-28-2, 32×32, 128 + 128 images with their rotated copies and Exemplar-MT views):

1. the floor: an equal-weighting step (forward + one backward + Adam) and forward + K per-task gradients
   (``torch.autograd.grad`` each) summed into ``.grad`` + Adam: what any gradient-combining method must pay;
   and the same K gradients from one batched backward (``per_task_gradients(mode="batched")``), timed
   alternately with the K passes (A, B, A, B, ...) so that load on a shared machine hits both alike;
2. one training step of every method in ``METHOD_NAMES`` and the meta-update of AuxiNash and AuxiLearn
   (amortised AuxiNash step: step + meta-update / 25); AuxiNash's meta-update with both Hessian-vector
   product modes (``implicit.HVP_MODES``), again timed alternately;
3. the Nash solver against the CVXPY reference for K = 2..10: time per solve and relative residual.

Writes ``results/speed/<device>.csv`` (``<device>_quick.csv`` with ``--quick``) and prints a markdown table
with each time as a ratio to the K-gradient floor measured in the same run. The expected duration of the
full run is printed at the start, from one timed equal-weighting step per workload.
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


import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from experiments.benchmarks import CIFAR_TASKS, NYUV2_TASKS
from experiments.models import CifarSSLNet, SegNet
from methods import METHOD_NAMES, get_method
from methods import implicit
from methods.gradients import DEFAULT_GRADIENT_MODE, per_task_gradients, write_grad
from methods.nash_solver import CvxpyNashSolver, relative_residual, solve_nash

log = logging.getLogger("benchmark_speed")


def timed(function: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds of ``function`` over ``steps`` calls after ``warmup`` calls."""
    return timed_alternately({"function": function}, steps, warmup, device)["function"]


def timed_alternately(functions: Dict[str, Callable[[], None]], steps: int, warmup: int,
                      device: torch.device) -> Dict[str, float]:
    """Median milliseconds of each function, the calls interleaved (A, B, A, B, ...) after ``warmup`` rounds."""
    times: Dict[str, List[float]] = {name: [] for name in functions}
    for repetition in range(warmup + steps):
        for name, function in functions.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            function()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repetition >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


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

    def k_gradient_step(self, mode: str = "loop") -> None:
        self.optimizer.zero_grad(set_to_none=True)
        grads = per_task_gradients(self.losses(), self.shared, self.specific, mode=mode)
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
                     methods: List[str], meta_warmup: int = 1) -> List[Dict]:
    device = work.device
    rows = []
    floor_equal = timed(work.equal_step, steps, warmup, device)
    floors = timed_alternately({"loop": work.k_gradient_step, "batched": lambda: work.k_gradient_step("batched")},
                               steps, max(warmup, 1), device)  # at least one warm-up: the denominators
    floor = floors["loop"]
    rows.append({"workload": label, "item": "floor: forward + 1 backward + Adam (equal)", "ms": floor_equal})
    rows.append({"workload": label, "item": "floor: forward + K gradients + Adam", "ms": floor})
    rows.append({"workload": label, "item": "floor: forward + K gradients (one batched backward) + Adam",
                 "ms": floors["batched"], "ratio_to_default": floors["batched"] / floors[DEFAULT_GRADIENT_MODE]})
    for name in methods:
        method = get_method(name, n_tasks=len(work.tasks), main_task=0, device=device)
        step_ms = timed(work.method_step(method), steps, warmup, device)
        rows.append({"workload": label, "item": f"step: {name}", "ms": step_ms})
        log.info("%s: %s step %.1f ms", label, name, step_ms)
        if name not in ("auxinash", "auxilearn"):
            continue
        if name == "auxinash":  # both Hessian-vector product modes, interleaved
            modes = {mode: get_method(name, n_tasks=len(work.tasks), main_task=0, device=device, hvp=mode)
                     for mode in implicit.HVP_MODES}
            for variant in modes.values():  # the weights α of a real step
                work.method_step(variant)()
            metas = timed_alternately({mode: (lambda m=m: m.meta_update(work.losses, work.batch, work.batch,
                                                                         work.shared))
                                       for mode, m in modes.items()}, meta_steps, meta_warmup, device)
            meta_ms = metas[implicit.DEFAULT_HVP_MODE]
        else:
            meta_ms = timed(lambda: method.meta_update(work.losses, work.batch, work.batch, work.shared),
                            meta_steps, meta_warmup, device)
            metas = {implicit.DEFAULT_HVP_MODE: meta_ms}
        rows.append({"workload": label, "item": f"meta-update: {name}", "ms": meta_ms,
                     "ratio_to_step": meta_ms / step_ms})
        for mode, ms in metas.items():
            if mode != implicit.DEFAULT_HVP_MODE:
                rows.append({"workload": label, "item": f"meta-update: {name} (hvp={mode})", "ms": ms,
                             "ratio_to_step": ms / step_ms, "ratio_to_default": ms / meta_ms})
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


def optional(row, column: str, digits: int) -> str:
    value = getattr(row, column, np.nan)
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def markdown(frame: pd.DataFrame) -> str:
    lines = []
    for workload, group in frame.groupby("workload", sort=False):
        lines.append(f"\n**{workload}**\n")
        if workload == "Nash solver":
            lines += ["| K | ours (ms) | CVXPY (ms) | speed-up | our residual | CVXPY residual |", "|---|---|---|---|---|---|"]
            lines += [f"| {r.item[2:]} | {r.ms:.3f} | {r.cvxpy_ms:.1f} | {r.speedup:.0f}× | {r.residual:.1e} | "
                      f"{r.cvxpy_residual:.1e} |" for r in group.itertuples()]
        else:
            lines += ["| | ms | × K-gradient floor | × step | × default mode |", "|---|---|---|---|---|"]
            lines += [f"| {r.item} | {r.ms:.1f} | {r.ratio_to_floor:.2f} | {optional(r, 'ratio_to_step', 1)} | "
                      f"{optional(r, 'ratio_to_default', 2)} |" for r in group.itertuples()]
    return "\n".join(lines)


def expected_minutes(equal_ms: float, steps: int, warmup: int, meta_steps: int, meta_warmup: int,
                     methods: List[str]) -> float:
    """Rough duration of one workload from one equal-weighting step: on the CPU run of 2026-11-22 a method
    step averaged ≈ 1.8 equal steps (3 for the K-gradient floors) and a meta-update ≈ 11."""
    step_calls = (warmup + steps) * (1 + 1.8 * len(methods)) + (max(warmup, 1) + steps) * 2 * 3
    meta_calls = (meta_warmup + meta_steps) * 11 * (2 * ("auxinash" in methods) + ("auxilearn" in methods))
    return equal_ms * (step_calls + meta_calls + len(implicit.HVP_MODES)) / 60000


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--quick", action="store_true",
                        help="every workload, method and meta-update timed once (no warm-up except for the "
                             "K-gradient floors), at half the default width; Nash solver with fewer repeats (a few "
                             "minutes on an idle 2-core CPU); writes <device>_quick.csv")
    parser.add_argument("--width", type=float, default=None,
                        help="model width multiplier (default: 1 on CUDA, 0.25 on CPU; half that with --quick)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[288, 384], help="NYUv2 image size")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[2, 8], help="NYUv2 batch sizes (none: skip)")
    parser.add_argument("--cifar-batch", type=int, default=128, help="labelled (= unlabelled) CIFAR images")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 CUDA, 5 CPU, 1 quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3, 0 quick)")
    parser.add_argument("--meta-steps", type=int, default=None, help="timed meta-updates (default: 3, 1 quick)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument("--skip-solver", action="store_true")
    parser.add_argument("--out", default="results/speed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available here; use --device cpu")
        torch.backends.cudnn.benchmark = True
    default_width = 1.0 if device.type == "cuda" else 0.25
    width = args.width if args.width is not None else (default_width / 2 if args.quick else default_width)
    full_width = args.width if args.width is not None else default_width  # the same command without --quick
    full_steps = 20 if device.type == "cuda" else 5
    steps = args.steps or (1 if args.quick else full_steps)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 3)
    meta_steps = args.meta_steps or (1 if args.quick else 3)
    meta_warmup = 0 if args.quick else 1

    workloads = [("nyuv2", batch, f"NYUv2 SegNet width {width:g}, {args.image_size[0]}×{args.image_size[1]}, "
                  f"batch {batch}") for batch in args.batch_sizes]
    workloads.append(("cifar", args.cifar_batch, f"CIFAR WRN-28-2 width {width:g}, {args.cifar_batch}+"
                      f"{args.cifar_batch} images × 3 views"))
    # one equal-weighting step per workload at the full run's width, to print the full run's expected duration
    # (the full run: this command without --quick, i.e. default repetitions, all methods)
    full_minutes = this_minutes = 0.0
    for kind, batch, _ in workloads:
        probe = Workload(kind, device, full_width, batch, tuple(args.image_size), args.amp)
        equal_ms = timed(probe.equal_step, 1, 0, device)  # one call: its first-call overhead errs on the long side
        full_minutes += expected_minutes(equal_ms, full_steps, 3, 3, 1, list(METHOD_NAMES))
        # convolutions scale with width², memory-bound layers with width: width^1.5 for the quick run
        this_minutes += expected_minutes(equal_ms * (width / full_width) ** 1.5, steps, warmup, meta_steps,
                                         meta_warmup, args.methods)
        del probe
    print(f"expected duration on this machine now: full run (width {full_width:g}, {full_steps} steps, all methods) "
          f"≈ {full_minutes:.0f} min; this run ≈ {max(this_minutes, 0.1):.1f} min (estimated from one "
          f"equal-weighting step per workload)", flush=True)

    rows = []
    for kind, batch, label in tqdm(workloads, desc="workloads", unit="workload"):
        work = Workload(kind, device, width, batch, tuple(args.image_size) if kind == "nyuv2" else None, args.amp)
        rows += measure_workload(work, label, steps, warmup, meta_steps, args.methods, meta_warmup)
    if not args.skip_solver:
        rows += measure_solver(repeats=20 if args.quick else 200, cvxpy_repeats=2 if args.quick else 5)
    frame = pd.DataFrame(rows)
    name = device.type + ("_amp" if args.amp else "") + ("_quick" if args.quick else "")
    os.makedirs(args.out, exist_ok=True)
    frame.assign(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 torch=torch.__version__, date=datetime.date.today().isoformat(), amp=args.amp,
                 threads=torch.get_num_threads(), gradient_mode=DEFAULT_GRADIENT_MODE,
                 hvp_mode=implicit.DEFAULT_HVP_MODE).to_csv(os.path.join(args.out, f"{name}.csv"), index=False)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}, {datetime.date.today()}, "
          f"amp={args.amp}, quick={args.quick}")
    print(markdown(frame))
    return frame


if __name__ == "__main__":
    main()
