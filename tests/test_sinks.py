"""Outputs that mirror metrics.csv: the interface, and clear errors when an optional package is missing."""
from __future__ import annotations

import importlib.util
import os

import pytest

from experiments.storage import sinks
from experiments.training.benchmarks import ToyBenchmark
from experiments.training.loop import TrainConfig, train


class Recording(sinks.Sink):
    written: list = []
    closed = 0

    def write(self, rows):
        Recording.written.append(list(rows))

    def close(self):
        Recording.closed += 1


def test_a_sink_receives_each_rounds_rows_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sinks.SINKS, "recording", Recording)
    Recording.written, Recording.closed = [], 0
    benchmark = ToyBenchmark("cpu", seed=0, epochs=4, eval_every=2, n_train=256, batch_size=128)
    run_dir = train(benchmark, TrainConfig(method="equal", main_task="main", lr=1e-2, out=str(tmp_path),
                                           sinks=("recording",)))
    import pandas as pd
    metrics = pd.read_csv(os.path.join(run_dir, "metrics.csv"))
    assert len(Recording.written) == benchmark.rounds and Recording.closed == 1
    assert sum(len(rows) for rows in Recording.written) == len(metrics)
    assert [rows[0]["round"] for rows in Recording.written] == list(range(benchmark.rounds))


def test_scalars_keep_finite_numbers_under_split_tags():
    row = {"round": 1, "step": 10, "split": "test", "main_mse": 2.5, "note": "x", "nan": float("nan")}
    assert sinks.scalars(row) == {"test/round": 1.0, "test/main_mse": 2.5}


@pytest.mark.parametrize("name", sorted(sinks.SINKS))
def test_missing_package_is_named_with_the_install_command(name):
    if not sinks.SINK_PACKAGES.get(name) or importlib.util.find_spec(sinks.SINK_PACKAGES[name]) is not None:
        pytest.skip(f"{name} is installed")
    with pytest.raises(sinks.MissingDependencyError, match=f"pip install {name}"):
        sinks.check_available([name])


def test_unknown_sink_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown output"):
        sinks.open_sinks(["csvx"], str(tmp_path), {})


@pytest.mark.parametrize("name", sorted(sinks.SINKS))
def test_sink_flags_do_not_change_a_runs_identity(name, monkeypatch):
    from experiments import train_nyuv2
    from experiments.training import cli
    from experiments.storage.results_io import run_identity
    monkeypatch.setattr(train_nyuv2, "run", lambda parser, *args, **kwargs: parser)
    parser = train_nyuv2.main([])
    plain = cli.make_config(parser.parse_args([]), ["seg", "depth", "normal"], None)
    mirrored = cli.make_config(parser.parse_args([f"--{name}"]), ["seg", "depth", "normal"], None)
    assert mirrored.sinks == (name,) and plain.sinks == ()
    assert run_identity({**mirrored.flags, "sinks": mirrored.sinks}) == run_identity(plain.flags)
