"""Every committed reference run keeps its identity under today's code (issue 30: no API change may alter a
committed run's identity digest, so that a finished run is still recognised and an unfinished one, e.g. the
fast-mode runs with ``"fast": true``, resumes).

For each ``results/reference/**/config.json`` the run's flags are given again to today's code, exactly as a
training script does (``cli.make_config`` on the script's own parser, then ``loop.run_identity_of``; the toy
example builds its ``TrainConfig`` itself, as ``train_toy.py`` does), and the digest must equal the one recorded.
The flags come from the record's ``flags`` where it has one; the configs written before ``flags`` was recorded
separately (a dozen of ``multimnist_aux/``) give them through their recorded ``identity``, which holds every flag
that entered the identity (the others were None, False or not part of it, and the parser's defaults stand for them).
The 33 configs of ``results/reference/multimnist/`` were written before runs recorded an identity at all (no
``identity``, no ``identity_digest``): there is nothing to recompute, and the loop refuses to resume such a folder
(``loop._finished_or_refused``); the test counts them so that the number cannot grow unnoticed.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os

import pytest

from experiments.storage.results_io import identity_digest
from experiments.training.cli import make_config
from experiments.training.loop import TrainConfig, run_identity_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "results", "reference", "**", "config.json"), recursive=True))
SCRIPTS = {"multimnist": "train_multimnist", "multimnist_aux": "train_multimnist_aux", "cifar10_ssl": "train_cifar_ssl"}
WITHOUT_IDENTITY = 33  # results/reference/multimnist/: written before runs recorded their identity


class RecordedBenchmark:
    """What ``run_identity_of`` reads of a benchmark, as the run recorded it."""

    def __init__(self, config):
        self.name, self.config = config["benchmark"], config

    def describe(self):
        return {"synthetic_data": self.config.get("synthetic_data"), "data_source": self.config.get("data_source")}


def script_parser(benchmark: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser the benchmark's training script builds (its ``run`` stubbed to hand it back)."""
    name = next(script for prefix, script in sorted(SCRIPTS.items(), key=lambda kv: -len(kv[0]))
                if benchmark.startswith(prefix))
    module = importlib.import_module(f"experiments.{name}")
    monkeypatch.setattr(module, "run", lambda parser, *args, **kwargs: parser)
    return module.main([])


def recomputed_identity(config, monkeypatch):
    if config["benchmark"] == "toy":  # train_toy.py's own TrainConfig
        train = TrainConfig(method=config["method"], main_task=config["main_task"], seed=config["seed"],
                            lr=config["lr"], meta_every=config["meta_every"], out=config["out"], tag=config["tag"],
                            resume=config["resume"], force=config["force"], flags=config["flags"])
    else:
        parser = script_parser(config["benchmark"], monkeypatch)
        args = parser.parse_args([])
        recorded = config["flags"] if "flags" in config else config["identity"]
        for key, value in recorded.items():
            if hasattr(args, key):
                setattr(args, key, value)
        train = make_config(args, config["tasks"], config["lr_step"])
    return run_identity_of(RecordedBenchmark(config), train)


def test_the_reference_configs_are_there():
    assert len(CONFIGS) >= 175
    assert sum("identity_digest" not in json.load(open(path)) for path in CONFIGS) == WITHOUT_IDENTITY


@pytest.mark.parametrize("path", [p for p in CONFIGS if "identity_digest" in json.load(open(p))],
                         ids=lambda p: os.path.relpath(os.path.dirname(p), os.path.join(ROOT, "results", "reference")))
def test_committed_run_keeps_its_identity_digest(path, monkeypatch):
    config = json.load(open(path))
    assert identity_digest(config["identity"]) == config["identity_digest"]  # the record is consistent
    identity = recomputed_identity(config, monkeypatch)
    assert identity == config["identity"]
    assert identity_digest(identity) == config["identity_digest"]
