"""The driver behind ``./run_all.sh`` (``python -m experiments.orchestration.run_all``, same flags, ``--help``):
the plan's run lists (``experiments/orchestration/plan.py``) for the chosen benchmarks, methods and seeds, handed
as command lines (one per run) to ``experiments/orchestration/sweep.py`` in-process; then the tables and figures."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from data.common import SYNTHETIC_MARKER
from experiments.orchestration.sweep import sweep_parser
from experiments.training.cli import HelpFormatter
from experiments.orchestration.plan import DEFAULT_BENCHMARKS, PLANS, Args, BenchmarkPlan, Context
from methods import METHOD_NAMES, canonical_name, paper_methods


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
    methods = chosen_methods(args.methods)
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
        context = Context(methods=methods, seeds=seeds, seeds_given=bool(args.seeds), quick=args.quick,
                          ablations=plan.ablations if args.ablations else (), root=root, synthetic=synthetic)
        commands += [command(python, plan, run, args) for run in plan.grid(context)]
    return commands, skipped


def chosen_methods(text: Optional[str]) -> List[str]:
    """``--methods``: None = the paper's methods (``in_paper``), ``all`` = every registered method, else the names
    given (registry names; aliases such as ls or nash_mtl accepted, so that the grids see multi-task methods)."""
    if text is None:
        return list(paper_methods())
    if text.split() == ["all"]:
        return list(METHOD_NAMES)
    try:
        return [canonical_name(name) for name in text.split()]
    except ValueError as error:
        raise SystemExit(f"argument --methods: {error}") from None


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
               "qos", "max_parallel", "max_requeues", "job_name")  # the sweep's launching options


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_all.sh", formatter_class=HelpFormatter,
                                description="Reproduce the paper's tables: every run of the experiment plan\n"
                                "(experiments/orchestration/plan.py: benchmark x method x main task x seed),\n"
                                "launched by experiments/sweep.py, then the tables and figures.")
    p.add_argument("--benchmarks", default=" ".join(DEFAULT_BENCHMARKS),
                   help=f"which benchmarks, space-separated, of: {' '.join(PLANS)}")
    p.add_argument("--methods", default=None,
                   help=f"which methods (space-separated), or 'all': every registered method (default: the paper's, "
                        f"{' '.join(paper_methods())}; a method declared in_paper=False runs when named or with all)")
    p.add_argument("--seeds", default=None, help='seeds (default: "0 1 2"; --quick: 0)')
    p.add_argument("--ablations", action="store_true", help="add the ablation runs (fixed p, learning rate of p, "
                   "held-out aux set)")
    p.add_argument("--quick", action="store_true", help="every run at tiny settings on synthetic layouts, CPU")
    p.add_argument("--dry-run", action="store_true", help="print the runs and stop")
    p.add_argument("--force", action="store_true", help="train every run again from scratch (old run folders are "
                   "moved aside)")
    p.add_argument("--out", default="results", help="results root; logs in OUT/logs, named by run")
    p.add_argument("--device", default=None, help="torch device passed to every run (default: the scripts' choice)")
    roots_of: Dict[str, List[str]] = {}
    for plan in PLANS.values():
        if plan.root_flag:
            roots_of.setdefault(plan.root_flag, []).append(plan.name)
    for flag, names in roots_of.items():  # benchmarks on the same data share one flag (multimnist, multimnist_aux)
        env = next(plan.env for plan in PLANS.values() if plan.root_flag == flag)
        default_root = next(plan.default_root for plan in PLANS.values() if plan.root_flag == flag)
        p.add_argument(flag, default=None, help=f"data root of {', '.join(names)} (default: ${env}, else "
                                                f"{default_root})")
    p.add_argument("--status", action="store_true", help="where every run of the list stands; exit 1 if any failed")
    p.add_argument("--tables", action="store_true", help="only write tables and figures (finished runs)")
    p.add_argument("--include-unfinished", action="store_true", help="with --tables: runs in progress too")
    launching = p.add_argument_group("launching (passed to experiments/sweep.py, which defines them)")
    for action in sweep_parser()._actions:
        if action.dest in SWEEP_FLAGS:
            launching.add_argument(*action.option_strings, dest=action.dest, default=None, choices=action.choices,
                                   help=action.help)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from experiments.orchestration import sweep
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
