"""The experiment plan: per benchmark, its script, data root, run grid, quick-mode settings and ablations.

``./run_all.sh`` is a thin wrapper around ``python -m experiments.plan`` (same flags; ``--help``). A run is an
argument list; the plan hands the list to ``experiments/sweep.py`` in-process (``sweep.main(..., commands=...)``).
The grids read the method registry (``methods.METHODS``: which methods there are, which are multi-task) and the
benchmarks' tasks; nothing here names a method's settings.

Adding a benchmark = its data module, its benchmark class, its script, and one ``BenchmarkPlan`` entry in
``PLANS`` (see CONTRIBUTING.md).
"""
from __future__ import annotations

import argparse
import glob
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from data.common import SYNTHETIC_MARKER
from methods import METHOD_NAMES, METHODS

Args = Tuple[str, ...]
MULTI_TASK = tuple(name for name in METHOD_NAMES if not METHODS[name].uses_main_task)
FIGURE2_PREFERENCES = ("0.01", "0.1", "0.2", "0.25", "0.4", "0.5", "0.6", "0.75", "0.8", "0.9", "0.99")


@dataclass
class Context:
    """What a grid depends on: the chosen methods and seeds, quick mode, ablations, the data root."""

    methods: Sequence[str]
    seeds: Sequence[str]
    seeds_given: bool
    quick: bool
    ablations: bool
    root: str
    synthetic: str  # quick mode's synthetic datasets folder


@dataclass(frozen=True)
class BenchmarkPlan:
    """One benchmark of the plan.

    ``grid(context)`` yields each run's arguments after the script (without ``--out``/``--resume``/``--force``/
    ``--device``, which the plan adds). ``has_data(root)`` says whether the dataset is there; ``missing`` is the
    message when it is not. ``whole_list`` marks a benchmark whose script trains every method and seed in one
    invocation (the toy example: no ``--resume``/``--device``)."""

    name: str
    script: str
    root_flag: str
    env: str
    default_root: str
    grid: Callable[[Context], Iterator[Args]]
    has_data: Callable[[str], bool]
    missing: str
    synthetic_folder: Optional[str] = None  # its root under quick mode's synthetic folder
    whole_list: bool = False
    default: bool = True  # in ./run_all.sh's default --benchmarks


# -- the SegNet benchmarks (NYUv2, Cityscapes) ---------------------------------------------------------------------
DENSE_QUICK = ("--epochs", "2", "--width", "0.0625", "--batch-size", "2", "--workers", "0", "--meta-every", "2")


def dense_tasks(benchmark: str, root: str) -> Tuple[str, ...]:
    """The tasks of a dense benchmark (the MTAN Cityscapes release has seg and depth only)."""
    if benchmark == "cityscapes":
        return ("seg", "depth") if os.path.isdir(os.path.join(root, "train", "depth")) else ("seg", "part_seg", "disp")
    return ("seg", "depth", "normal")


def dense_grid(benchmark: str) -> Callable[[Context], Iterator[Args]]:
    def grid(ctx: Context) -> Iterator[Args]:
        tasks = dense_tasks(benchmark, ctx.root)
        settings = ("--data-root", ctx.root, *(DENSE_QUICK if ctx.quick else ()))
        for seed in ctx.seeds:
            for method in ctx.methods:
                if method in MULTI_TASK:
                    yield (*settings, "--method", method, "--seed", seed)
                else:
                    for task in tasks:
                        yield (*settings, "--method", method, "--main-task", task, "--seed", seed)
            if ctx.ablations:  # the held-out auxiliary set (Table 3), fixed p (Table 8), p's learning rate (Table 9)
                yield (*settings, "--method", "auxinash", "--main-task", "seg", "--meta-val-size", "0.1", "--tag",
                       "aux-set", "--seed", seed)
                yield (*settings, "--method", "stl", "--main-task", "seg", "--meta-val-size", "0.1", "--tag",
                       "partial", "--seed", seed)
                if benchmark == "nyuv2":
                    for task in tasks:
                        for p in ("0.7", "0.8", "0.9"):
                            yield (*settings, "--method", "auxinash", "--main-task", task, "--p", p, "--tag",
                                   f"fixed-p{p}", "--seed", seed)
                        for lr in ("1e-3", "1e-2"):
                            yield (*settings, "--method", "auxinash", "--main-task", task, "--meta-lr", lr, "--tag",
                                   f"meta-lr{lr}", "--seed", seed)
    return grid


# -- semi-supervised CIFAR-10 --------------------------------------------------------------------------------------
CIFAR_QUICK = ("--iterations", "4", "--eval-every", "2", "--labeled-batch", "8", "--unlabeled-batch", "8",
               "--width", "0.125", "--val-size", "100", "--meta-every", "2")


def cifar_grid(ctx: Context) -> Iterator[Args]:
    labels = ("100",) if ctx.quick else ("5000", "10000")  # the paper's 5K and 10K labelled images
    for seed in ctx.seeds:
        for n_labeled in labels:
            for method in ctx.methods:
                yield ("--data-root", ctx.root, *(CIFAR_QUICK if ctx.quick else ()), "--n-labeled", n_labeled,
                       "--method", method, "--seed", seed)


# -- Multi-MNIST, Figure 2 -----------------------------------------------------------------------------------------
def mnist_present(root: str) -> bool:
    return any(glob.glob(os.path.join(folder, "t10k-images-idx3-ubyte*"))
               for folder in (root, os.path.join(root, "raw"), os.path.join(root, "MNIST", "raw")))


def multimnist_grid(ctx: Context) -> Iterator[Args]:
    """AuxiNash over 11 fixed p₁ and LS over 11 weights (first seed), Nash-MTL over 11 seeds (--quick: 3 each)."""
    preset = os.environ.get("MULTIMNIST_PRESET") or ("tiny" if ctx.quick else "paper")  # paper, cpu or tiny
    settings = ("--data-root", ctx.root, "--preset", preset)
    if ctx.quick:  # the pairs stay with the synthetic digits
        settings += ("--cache-root", os.path.join(ctx.synthetic, "multimnist_pairs"))
    preferences = ("0.1", "0.5", "0.9") if ctx.quick else FIGURE2_PREFERENCES
    nash_seeds = tuple(str(s) for s in range(3 if ctx.quick else 11))
    first_seed = ctx.seeds[0]
    for method in ctx.methods:
        if method == "auxinash":
            for p in preferences:
                yield (*settings, "--method", "auxinash", "--p", p, "--seed", first_seed)
        elif method == "nashmtl":
            for seed in nash_seeds:
                yield (*settings, "--method", "nashmtl", "--seed", seed)
        elif method == "equal":
            for w in preferences:
                yield (*settings, "--method", "ls", "--weights", w, "--seed", first_seed)


# -- Multi-MNIST in auxiliary mode: does learned p find a harmful auxiliary? ---------------------------------------
AUX_ALL = ("--auxiliaries", "right", "noise", "rotation", "--noise-tasks", "3")
AUX_SINGLES = (("right",), ("noise",), ("noise", "--noise-tasks", "3"), ("rotation",))


def multimnist_aux_grid(ctx: Context) -> Iterator[Args]:
    """Main task left: STL; Equal with each auxiliary alone (the calibration); every method with all of them."""
    settings = ("--data-root", ctx.root, "--preset", "tiny" if ctx.quick else "few")
    if ctx.quick:
        settings += ("--cache-root", os.path.join(ctx.synthetic, "multimnist_pairs"))
    for seed in ctx.seeds:
        if "equal" in ctx.methods:
            for single in AUX_SINGLES:
                yield (*settings, "--method", "equal", "--auxiliaries", *single, "--seed", seed)
        for method in ctx.methods:
            if method == "stl":
                yield (*settings, "--method", "stl", "--auxiliaries", "none", "--seed", seed)
            elif method == "olaux":  # β stated explicitly: the reference runs were made with it (their identity)
                yield (*settings, "--method", "olaux", *AUX_ALL, "--olaux-lr", "0.05", "--seed", seed)
            else:
                yield (*settings, "--method", method, *AUX_ALL, "--seed", seed)


# -- Speech Commands (Tables 5-7) ---------------------------------------------------------------------------------
SPEECH_QUICK = ("--epochs", "2", "--batch-size", "8", "--width", "0.25", "--meta-every", "2")
SPEECH_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def speech_commands_grid(ctx: Context) -> Iterator[Args]:
    """STL and the auxiliary-learning methods once per main keyword, multi-task methods once (10 tasks):
    9 methods × 3 seeds × 2 sizes = 324 runs (--quick: 20 clips, keywords zero and five, 14 runs)."""
    settings = ("--data-root", ctx.root, *(SPEECH_QUICK if ctx.quick else ()))
    sizes, words = (("20",), ("zero", "five")) if ctx.quick else (("500", "1000"), SPEECH_WORDS)
    for seed in ctx.seeds:
        for n_train in sizes:
            for method in ctx.methods:
                if method in MULTI_TASK:
                    yield (*settings, "--n-train", n_train, "--method", method, "--seed", seed)
                else:
                    for word in words:
                        yield (*settings, "--n-train", n_train, "--method", method, "--main-task", word,
                               "--seed", seed)


# -- the illustrative example (Figure 1): one invocation for every seed --------------------------------------------
def toy_grid(ctx: Context) -> Iterator[Args]:
    seeds = ctx.seeds if (ctx.quick or ctx.seeds_given) else ("0", "1", "2", "3", "4")
    yield (*(("--epochs", "50") if ctx.quick else ()), "--methods", *ctx.methods, "--seeds", *seeds)


PLANS: Dict[str, BenchmarkPlan] = {plan.name: plan for plan in (
    BenchmarkPlan("nyuv2", "experiments/train_nyuv2.py", "--nyuv2-root", "NYUV2_ROOT", "data_cache/nyuv2",
                  dense_grid("nyuv2"), lambda root: os.path.isdir(os.path.join(root, "train")),
                  "no dataset at {root} (see README, section Data)", synthetic_folder="nyuv2"),
    BenchmarkPlan("cityscapes", "experiments/train_cityscapes.py", "--cityscapes-root", "CITYSCAPES_ROOT",
                  "data_cache/cityscapes", dense_grid("cityscapes"),
                  lambda root: os.path.isdir(os.path.join(root, "train")),
                  "no dataset at {root} (see README, section Data)", synthetic_folder="cityscapes"),
    BenchmarkPlan("cifar10_ssl", "experiments/train_cifar_ssl.py", "--cifar10-root", "CIFAR10_ROOT",
                  "data_cache/cifar10", cifar_grid,
                  lambda root: os.path.isdir(os.path.join(root, "cifar-10-batches-py")),
                  "no cifar-10-batches-py/ under {root} (see README, section Data)", synthetic_folder="cifar10"),
    BenchmarkPlan("multimnist", "experiments/train_multimnist.py", "--mnist-root", "MNIST_ROOT", "data_cache/mnist",
                  multimnist_grid, mnist_present,
                  "no MNIST IDX files under {root} (--mnist-root or MNIST_ROOT; see README, section Data)",
                  synthetic_folder="mnist"),
    BenchmarkPlan("multimnist_aux", "experiments/train_multimnist_aux.py", "--mnist-root", "MNIST_ROOT",
                  "data_cache/mnist", multimnist_aux_grid, mnist_present,
                  "no MNIST IDX files under {root} (--mnist-root or MNIST_ROOT; see README, section Data)",
                  synthetic_folder="mnist", default=False),
    BenchmarkPlan("speech_commands", "experiments/train_speech_commands.py", "--speech-commands-root",
                  "SPEECH_COMMANDS_ROOT", "data_cache/speech_commands", speech_commands_grid,
                  lambda root: os.path.isfile(os.path.join(root, "validation_list.txt")),
                  "no validation_list.txt under {root} (--speech-commands-root or SPEECH_COMMANDS_ROOT; see README, "
                  "section Data)", synthetic_folder="speech_commands"),
    BenchmarkPlan("toy", "experiments/train_toy.py", "", "", "", toy_grid, lambda root: True, "",
                  whole_list=True),
)}
DEFAULT_BENCHMARKS = tuple(name for name, plan in PLANS.items() if plan.default)


def roots(args: argparse.Namespace) -> Dict[str, str]:
    """Each benchmark's data root: its flag, else its environment variable, else its default."""
    found = {}
    for plan in PLANS.values():
        if plan.root_flag:
            flag_value = getattr(args, plan.root_flag[2:].replace("-", "_"))
            found[plan.name] = flag_value or os.environ.get(plan.env) or plan.default_root
    return found


def command(python: str, plan: BenchmarkPlan, run: Args, args: argparse.Namespace) -> str:
    """One run's command line, as the sweep records and launches it."""
    words = [python, plan.script, *run, "--out", args.out]
    if not plan.whole_list:
        words.append("--resume")
    if args.force:
        words.append("--force")
    if args.device and not plan.whole_list:
        words += ["--device", args.device]
    return " ".join(shlex.quote(word) for word in words)


def build_commands(args: argparse.Namespace, list_only: bool) -> Tuple[List[str], int]:
    """The run list (command lines) of the chosen benchmarks, and how many were skipped for missing data."""
    python = os.environ.get("PYTHON", "python")
    data_roots = roots(args)
    synthetic = os.path.join(args.out, ".synthetic")
    if args.quick:
        data_roots = {name: os.path.join(synthetic, plan.synthetic_folder)
                      for name, plan in PLANS.items() if plan.synthetic_folder}
    seeds = args.seeds.split() if args.seeds else (["0"] if args.quick else ["0", "1", "2"])
    commands, skipped = [], 0
    for name in args.benchmarks.split():
        if name not in PLANS:
            raise SystemExit(f"unknown benchmark: {name} (known: {' '.join(PLANS)})")
        plan = PLANS[name]
        root = data_roots.get(name, "")
        if not list_only and not plan.has_data(root):
            print(f"SKIPPED {name}: {plan.missing.format(root=root)}", file=sys.stderr)
            skipped += 1
            continue
        context = Context(methods=args.methods.split(), seeds=seeds, seeds_given=bool(args.seeds), quick=args.quick,
                          ablations=args.ablations, root=root, synthetic=synthetic)
        commands += [command(python, plan, run, args) for run in plan.grid(context)]
    return commands, skipped


def write_synthetic(out: str) -> None:
    """Quick mode's small synthetic datasets under ``<out>/.synthetic`` (once; the MNIST marker is written last)."""
    folder = os.path.join(out, ".synthetic")
    missing = [plan.synthetic_folder for plan in PLANS.values() if plan.synthetic_folder
               and not os.path.exists(os.path.join(folder, plan.synthetic_folder, SYNTHETIC_MARKER))]
    if missing:  # a new tree, or one written before a benchmark was added: write every layout again
        print(f"quick mode: writing small synthetic datasets under {folder} ({', '.join(missing)} missing)", flush=True)
        subprocess.run([os.environ.get("PYTHON", sys.executable), "-m", "data.synthetic", "--small", folder],
                       check=True)


SWEEP_FLAGS = ("launcher", "jobs", "gpus", "partition", "gpus_per_run", "cpus_per_run", "mem", "time", "account",
               "qos", "max_parallel")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_all.sh", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description=__doc__.split("\n\n")[0] + " Reproduce the paper's tables: every "
                                "benchmark x method x main task x seed, then the tables and figures.")
    p.add_argument("--benchmarks", default=" ".join(DEFAULT_BENCHMARKS), help="which benchmarks (space-separated)")
    p.add_argument("--methods", default=" ".join(METHOD_NAMES), help="which methods (space-separated)")
    p.add_argument("--seeds", default="", help='seeds (default: "0 1 2"; --quick: 0)')
    p.add_argument("--ablations", action="store_true", help="add the ablation runs (fixed p, learning rate of p, "
                   "held-out aux set)")
    p.add_argument("--quick", action="store_true", help="every run at tiny settings on synthetic layouts, CPU")
    p.add_argument("--dry-run", action="store_true", help="print the runs and stop")
    p.add_argument("--force", action="store_true", help="train every run again from scratch (old run folders are "
                   "moved aside)")
    p.add_argument("--out", default="results", help="results root; logs in OUT/logs, named by run")
    p.add_argument("--device", default="", help="torch device passed to every run (default: the scripts' choice)")
    roots_of: Dict[str, List[str]] = {}
    for plan in PLANS.values():
        if plan.root_flag:
            roots_of.setdefault(plan.root_flag, []).append(plan.name)
    for flag, names in roots_of.items():  # benchmarks on the same data share one flag (multimnist, multimnist_aux)
        env = next(plan.env for plan in PLANS.values() if plan.root_flag == flag)
        p.add_argument(flag, default="", help=f"data root of {', '.join(names)} (or {env})")
    p.add_argument("--status", action="store_true", help="where every run of the list stands; exit 1 if any failed")
    p.add_argument("--tables", action="store_true", help="only write tables and figures (finished runs)")
    p.add_argument("--include-unfinished", action="store_true", help="with --tables: runs in progress too")
    sweep = p.add_argument_group("launching (passed to experiments/sweep.py)")
    sweep.add_argument("--launcher", default="sequential", help="sequential, local or slurm")
    for flag in SWEEP_FLAGS[1:]:
        sweep.add_argument(f"--{flag.replace('_', '-')}", default=None)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from experiments import sweep
    args = parser().parse_args(argv)
    if args.tables:
        return sweep.main(["--tables", "--out", args.out] + (["--include-unfinished"] if args.include_unfinished
                                                               else []))
    list_only = args.dry_run or args.status  # --dry-run and --status list every run, whether its data is here or not
    if args.quick and not list_only:
        write_synthetic(args.out)
    commands, skipped = build_commands(args, list_only)
    if not commands:
        print(f"no runs: every requested benchmark was skipped ({skipped}); see the messages above", file=sys.stderr)
        return 1
    if args.dry_run:
        print("\n".join(commands))
        return 0
    if args.status:
        return sweep.main(["--status", "--out", args.out], commands=commands)
    sweep_argv = ["--out", args.out]
    for flag in SWEEP_FLAGS:
        value = getattr(args, flag)
        if value not in (None, ""):
            sweep_argv += [f"--{flag.replace('_', '-')}", str(value)]
    print(f"{len(commands)} runs (logs in {os.path.join(args.out, 'logs')})", flush=True)
    failed = sweep.main(sweep_argv, commands=commands) != 0
    if args.launcher == "slurm":
        print("follow the runs with: ./run_all.sh --status (same flags); tables with: ./run_all.sh --tables")
        return int(failed)
    sweep.main(["--tables", "--out", args.out])
    tables, figures = os.path.join(args.out, "tables"), os.path.join(args.out, "figures")
    print(f"tables: {tables}, figures: {figures}" + ("; some runs FAILED (see above)" if failed else ""))
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
