"""Speed of every method against the cost of the K per-task gradients, in one run on one device.

    python experiments/benchmark_speed.py --device cpu          # width-reduced models (see --help)
    python experiments/benchmark_speed.py --device cpu --quick  # every row once, half width: minutes
    python experiments/benchmark_speed.py --device cuda [--amp]

Measures, with warm-up and medians over ``--steps`` steps, on NYUv2 shapes (SegNet, 3×288×384, batch 2 and 8)
and CIFAR shapes (WRN-28-2, 32×32, 128 + 128 images with their rotated copies and Exemplar-MT views):

1. linear scalarisation (an equal-weighting step: forward + one backward + Adam) and the floor of any
   gradient-combining method: forward + K per-task gradients (``torch.autograd.grad`` each) summed into
   ``.grad`` + Adam; the same K gradients from one batched backward (``per_task_gradients(mode="batched")``);
2. one training step of every method in ``METHOD_NAMES``, of Nash-MTL and AuxiNash in fast mode (``fast=True``:
   per-task gradients w.r.t. the shared representation, ``--fast`` of the trainers), and a step that reuses α
   between solves (``update_weights_every``; the amortised step for ``--reuse-every`` N is computed from it);
   all of items 1 and 2 timed alternately in one loop (A, B, C, ..., A, B, C, ...) so that load on a shared
   machine hits them alike; each reported in ms, as a ratio to linear scalarisation and to the K-gradient floor;
3. the meta-updates of every method that has one (AuxiNash, AuxiLearn, Auto-λ), alternately: AuxiNash's by default, with the official mixed
   term (``mixed_term="double_backward"``, same result), with the other Hessian-vector product mode (same
   result) and with no Neumann terms (``--neumann-terms 0``: a different result, see the README); the amortised step
   (step + meta-update / interval: 25, the loop's default, or the method's own, Auto-λ's 1), AuxiNash also in
   fast mode and with α reused;
4. the Nash solver against the CVXPY reference for K = 2..10: time per solve and relative residual.

Every method is timed as the training loop runs it, past its warm-ups (``Workload.prepare``: ``bind_optimizer``,
its learned weights in the optimiser, two ``end_of_epoch`` calls), with ``after_step`` where it declares one.

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

from experiments.training.benchmarks import CIFAR_TASKS, NYUV2_TASKS
from experiments.training.models import CifarSSLNet, SegNet
from methods import METHOD_NAMES, METHODS, get_method
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

    def losses_and_representation(self):
        """The K losses and the shared representation they are computed from (the encoder's output)."""
        captured = {}
        encode = self.model.encode

        def capture(*args, **kwargs):
            captured["z"] = encode(*args, **kwargs)
            return captured["z"]
        self.model.encode = capture
        try:
            losses = self.losses()
        finally:
            del self.model.encode  # back to the class's method
        return losses, captured["z"]

    def prepare(self, method) -> None:
        """Put ``method`` where the training loop has it after two epochs: told the optimiser
        (``bind_optimizer``), its learned weights in the optimiser (``main_optimizer_parameters``), and two
        ``end_of_epoch`` calls, so that epoch-based warm-ups (GradNorm's first epoch of the plain sum, DWA's
        first two epochs of equal weights) are behind it and its usual step is timed."""
        method.bind_optimizer(self.optimizer)
        for group in method.main_optimizer_parameters():
            self.optimizer.add_param_group(group)
        with torch.no_grad():
            means = self.losses().double()
        for _ in range(2):
            method.end_of_epoch(means)

    def method_step(self, method) -> Callable[[], None]:
        """One step as the training loop takes it: ``backward`` (with the representation for a method in
        ``gradient_space="representation"``, the model's last shared layer where it is needed), Adam, and
        ``after_step`` (a forward pass more) for a method with ``needs_after_step`` (FAMO)."""
        fast = method.gradient_space == "representation"  # fast mode and --representation alike
        last = ({"last_shared_parameters": self.model.last_shared_parameters()}
                if method.needs_last_shared_parameters else {})

        def step() -> None:
            self.optimizer.zero_grad(set_to_none=True)
            if fast:
                losses, representation = self.losses_and_representation()
                method.backward(losses, self.shared, self.specific, representation=representation, **last)
            else:
                method.backward(self.losses(), self.shared, self.specific, **last)
            self.optimizer.step()
            if method.needs_after_step:
                method.after_step(self.losses, self.batch)
        return step


FAST_METHODS = ("nashmtl", "auxinash")
"""The Nash family, timed also with ``fast=True`` (and with α reused, ``update_weights_every``)."""


def step_variants(methods: List[str]) -> Dict[str, Dict]:
    """label → constructor kwargs of every method step to time: each method as it is, and the Nash family with
    ``fast=True``."""
    variants = {name: dict(name=name) for name in methods}
    for name in methods:
        if name in FAST_METHODS:
            variants[f"{name} --fast"] = dict(name=name, fast=True)
    return variants


def measure_workload(work: Workload, label: str, steps: int, warmup: int, meta_steps: int,
                     methods: List[str], meta_warmup: int = 1, reuse_every: int = 10,
                     meta_every: int = 25) -> List[Dict]:
    """Every step (linear scalarisation, the K-gradient floors, each method and its fast variant, and a step
    that reuses α) timed alternately in one loop, then the meta-updates, alternately. With α reused every N
    steps, the amortised step is (solving step + (N − 1) reusing steps) / N."""
    device = work.device
    rows = []
    n_tasks = len(work.tasks)
    variants = step_variants(methods)
    built = {key: get_method(kw["name"], n_tasks=n_tasks, main_task=0, device=device,
                             **{k: v for k, v in kw.items() if k != "name"}) for key, kw in variants.items()}
    for method in built.values():
        work.prepare(method)
    functions: Dict[str, Callable[[], None]] = {
        "equal": work.equal_step, "loop": work.k_gradient_step, "batched": lambda: work.k_gradient_step("batched")}
    functions.update({f"step: {key}": work.method_step(method) for key, method in built.items()})
    reusing = [name for name in methods if name in FAST_METHODS][:1]
    if reuse_every > 1 and reusing:  # the Nash family's steps between solves: one backward of Σ α_k L_k
        reuser = get_method(reusing[0], n_tasks=n_tasks, main_task=0, device=device, update_weights_every=10**9)
        work.method_step(reuser)()  # the solve; every later step reuses its α
        functions["reuse"] = work.method_step(reuser)
    times = timed_alternately(functions, steps, max(warmup, 1), device)  # at least one warm-up: the denominators
    floor, ls = times["loop"], times["equal"]
    rows.append({"workload": label, "item": "floor: forward + 1 backward + Adam (equal)", "ms": ls})
    rows.append({"workload": label, "item": "floor: forward + K gradients + Adam", "ms": floor})
    rows.append({"workload": label, "item": "floor: forward + K gradients (one batched backward) + Adam",
                 "ms": times["batched"], "ratio_to_default": times["batched"] / times[DEFAULT_GRADIENT_MODE]})
    if "reuse" in times:
        rows.append({"workload": label, "item": f"step reusing α ({reusing[0]}, between solves)", "ms": times["reuse"]})
    for key in variants:
        rows.append({"workload": label, "item": f"step: {key}", "ms": times[f"step: {key}"]})
        log.info("%s: %s step %.1f ms", label, key, times[f"step: {key}"])
        if "reuse" in times and variants[key]["name"] in FAST_METHODS:
            rows.append({"workload": label, "item": f"step: {key} --update-weights-every {reuse_every}",
                         "ms": (times[f"step: {key}"] + (reuse_every - 1) * times["reuse"]) / reuse_every})

    # meta-updates after a real step of each (α and the Gram matrix of a solve), interleaved
    metas: Dict[str, Callable[[], None]] = {}
    meta_methods = {}
    for name in methods:
        if name == "auxinash":
            meta_methods["auxinash"] = get_method(name, n_tasks=n_tasks, main_task=0, device=device)
            meta_methods["auxinash (mixed=double_backward)"] = get_method(name, n_tasks=n_tasks, main_task=0,
                                                                          device=device, mixed_term="double_backward")
            meta_methods["auxinash (neumann_terms=0)"] = get_method(name, n_tasks=n_tasks, main_task=0, device=device,
                                                                    neumann_terms=0)
            for mode in implicit.HVP_MODES:
                if mode != implicit.DEFAULT_HVP_MODE:
                    meta_methods[f"auxinash (hvp={mode})"] = get_method(name, n_tasks=n_tasks, main_task=0,
                                                                        device=device, hvp=mode)
        elif METHODS[name].has_meta_update:  # AuxiLearn, Auto-λ, any method that learns in meta_update
            meta_methods[name] = get_method(name, n_tasks=n_tasks, main_task=0, device=device)
    for key, method in meta_methods.items():
        work.prepare(method)
        work.method_step(method)()
        metas[key] = lambda m=method: m.meta_update(work.losses, work.batch, work.batch, work.shared,
                                                    task_specific_parameters=work.specific)
    meta_ms = timed_alternately(metas, meta_steps, meta_warmup, device) if metas else {}
    for key, ms in meta_ms.items():
        base = key.split(" ")[0]
        row = {"workload": label, "item": f"meta-update: {key}", "ms": ms, "ratio_to_step": ms / times[f"step: {base}"]}
        if key != base:
            row["ratio_to_default"] = ms / meta_ms[base]
        rows.append(row)
    for row in list(rows):
        if row["item"].startswith("step: ") and row["item"][6:].split(" ")[0] in meta_ms:
            name = row["item"][6:]
            base = name.split(" ")[0]
            every = meta_methods[base].meta_interval or meta_every  # the method's own interval (Auto-λ: 1)
            rows.append({"workload": label, "item": f"amortised step (meta every {every}): {name}",
                         "ms": row["ms"] + meta_ms[base] / every})
            if name.startswith("auxinash") and "auxinash (neumann_terms=0)" in meta_ms:  # changes the result
                rows.append({"workload": label, "item": f"amortised step (meta every {every}): {name} "
                                                        f"--neumann-terms 0",
                             "ms": row["ms"] + meta_ms["auxinash (neumann_terms=0)"] / every})
    for row in rows:
        row["ratio_to_floor"] = row["ms"] / floor
        row["ratio_to_ls"] = row["ms"] / ls
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
            lines += ["| | ms | × linear scalarisation | × K-gradient floor | × step | × default mode |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {r.item} | {r.ms:.1f} | {optional(r, 'ratio_to_ls', 2)} | {r.ratio_to_floor:.2f} | "
                      f"{optional(r, 'ratio_to_step', 1)} | {optional(r, 'ratio_to_default', 2)} |"
                      for r in group.itertuples()]
    return "\n".join(lines)


def expected_minutes(equal_ms: float, steps: int, warmup: int, meta_steps: int, meta_warmup: int,
                     methods: List[str]) -> float:
    """Rough duration of one workload from one equal-weighting step, with the step costs (in equal steps) of a
    CPU run: a method step ≈ 1.8, a K-gradient floor 3, a fast step ≈ 1.2, a meta-update ≈ 11
    (``results/speed/README.md``)."""
    n_fast = sum(name in FAST_METHODS for name in methods)
    step_calls = (max(warmup, 1) + steps) * (1 + 2 * 3 + 1.8 * len(methods) + 1.2 * n_fast + 1)
    meta_calls = (meta_warmup + meta_steps) * 11 * (3.3 * ("auxinash" in methods) + ("auxilearn" in methods))
    return equal_ms * (step_calls + meta_calls + len(implicit.HVP_MODES)) / 60000


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--quick", action="store_true",
                        help="every workload, method and meta-update timed once (no warm-up except for the "
                             "K-gradient floors), at half the default width; Nash solver with fewer repeats (a few "
                             "minutes on an idle 2-core CPU); writes <device>_quick.csv")
    parser.add_argument("--width", "--model-width", dest="width", type=float, default=None,
                        help="model width multiplier (default: 1 on CUDA, 0.25 on CPU; half that with --quick); "
                             "--model-width 1.0 on the CPU: the full SegNet (minutes per step at batch 2)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[288, 384], help="NYUv2 image size")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[2, 8], help="NYUv2 batch sizes (none: skip)")
    parser.add_argument("--cifar-batch", type=int, default=128,
                        help="labelled (= unlabelled) CIFAR images (0: skip the CIFAR workload)")
    parser.add_argument("--reuse-every", type=int, default=10,
                        help="the Nash family with α reused between solves (update_weights_every): the amortised "
                             "step for this N; 1: not measured")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 CUDA, 5 CPU, 1 quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3, 0 quick)")
    parser.add_argument("--meta-steps", type=int, default=None, help="timed meta-updates (default: 3, 1 quick)")
    parser.add_argument("--meta-warmup", type=int, default=None, help="untimed meta-updates first (default: 1, 0 quick)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument("--skip-solver", action="store_true")
    parser.add_argument("--out", default="results/speed")
    parser.add_argument("--name", default=None, help="CSV file name without .csv (default: <device>[_amp][_quick])")
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
    meta_warmup = args.meta_warmup if args.meta_warmup is not None else (0 if args.quick else 1)

    workloads = [("nyuv2", batch, f"NYUv2 SegNet width {width:g}, {args.image_size[0]}×{args.image_size[1]}, "
                  f"batch {batch}") for batch in args.batch_sizes]
    if args.cifar_batch > 0:
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
        rows += measure_workload(work, label, steps, warmup, meta_steps, args.methods, meta_warmup,
                                 reuse_every=args.reuse_every)
    if not args.skip_solver:
        rows += measure_solver(repeats=20 if args.quick else 200, cvxpy_repeats=2 if args.quick else 5)
    frame = pd.DataFrame(rows)
    name = args.name or device.type + ("_amp" if args.amp else "") + ("_quick" if args.quick else "")
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
