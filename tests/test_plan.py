"""The experiment plan (experiments/plan.py): every benchmark entry's runs are command lines its own script accepts,
every grid follows the method registry, and run_all.sh is the plan's thin wrapper."""
from __future__ import annotations

import argparse
import importlib
import shlex

import pytest

from experiments import plan
from methods import METHOD_NAMES, METHODS


def arguments(**overrides):
    args = plan.parser().parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def script_parser(script: str, monkeypatch) -> argparse.ArgumentParser:
    module = importlib.import_module(script[:-3].replace("/", "."))
    monkeypatch.setattr(module, "run", lambda parser, *args, **kwargs: parser, raising=False)
    result = module.main([]) if hasattr(module, "run") else None
    return result if isinstance(result, argparse.ArgumentParser) else None


@pytest.mark.parametrize("name", sorted(plan.PLANS))
@pytest.mark.parametrize("quick,ablations", [(False, False), (True, False), (False, True)])
def test_every_planned_run_parses_with_its_script(name, quick, ablations, monkeypatch):
    entry = plan.PLANS[name]
    commands, skipped = plan.build_commands(arguments(benchmarks=name, quick=quick, ablations=ablations),
                                            list_only=True)
    assert commands and not skipped
    if entry.whole_list:
        return
    parser = script_parser(entry.script, monkeypatch)
    assert parser is not None, f"{entry.script} builds no parser through experiments.cli.run"
    for line in commands:
        words = shlex.split(line)
        assert words[1] == entry.script
        parser.parse_args(words[2:])  # exits (SystemExit) on a flag the script does not know


@pytest.mark.parametrize("name", sorted(plan.PLANS))
def test_every_grid_covers_the_registry(name):
    """Each benchmark runs every method that fits it (Multi-MNIST's Figure 2 grid: its three families)."""
    text = "\n".join(plan.build_commands(arguments(benchmarks=name), list_only=True)[0])
    expected = ("auxinash", "nashmtl", "ls") if name == "multimnist" else METHOD_NAMES
    for method in expected:
        assert f"--method {method}" in text or "--methods" in text and method in text, (name, method)


def test_multi_task_methods_train_one_model():
    commands = plan.build_commands(arguments(benchmarks="nyuv2", seeds="0"), list_only=True)[0]
    for name in METHOD_NAMES:
        count = sum(f"--method {name} " in line for line in commands)
        assert count == (1 if not METHODS[name].uses_main_task else 3), name


def test_unknown_benchmark_is_named():
    with pytest.raises(SystemExit, match="unknown benchmark: nope"):
        plan.build_commands(arguments(benchmarks="nope"), list_only=True)


def test_default_benchmarks_follow_the_plan():
    assert plan.DEFAULT_BENCHMARKS == tuple(n for n, p in plan.PLANS.items() if p.default)
    assert arguments().benchmarks.split() == list(plan.DEFAULT_BENCHMARKS)
