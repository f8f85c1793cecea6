"""Every method declares its settings once (``methods/settings.py``); the constructors, the training scripts'
flags and config.json all follow the declaration. Registry-wide: a new method inherits every test here."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import typing

import pytest
import torch

import methods
from experiments import train_cifar_ssl
from experiments.training import cli
from experiments.orchestration.plan import PLANS
from methods import METHOD_NAMES, METHODS, get_method, method_settings
from methods.settings import setting_fields

# every training script over experiments/training/cli.py that the plan runs (the toy script trains all methods at once)
SCRIPTS = {name: importlib.import_module(plan.script[:-3].replace("/", "."))
           for name, plan in PLANS.items() if not plan.whole_list}
train_nyuv2 = SCRIPTS["nyuv2"]
RUN_ARGUMENTS = ("n_tasks", "main_task", "device")


def script_parser(module, monkeypatch):
    """The script's argument parser, as its ``main`` builds it (``run`` intercepted before any data is read)."""
    monkeypatch.setattr(module, "run", lambda parser, *args, **kwargs: parser)
    return module.main([])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_constructor_takes_exactly_the_declared_settings_with_their_defaults(name):
    cls = METHODS[name]
    parameters = {key: p for key, p in inspect.signature(cls.__init__).parameters.items()
                  if key != "self" and key not in RUN_ARGUMENTS}
    declared = {f.name: f for f in setting_fields(cls.Settings)}
    assert list(parameters) == list(declared), f"{name}: constructor arguments differ from {cls.Settings.__name__}"
    for key, field in declared.items():
        assert parameters[key].default == field.default, f"{name}.{key}: constructor default ≠ declared default"
        assert field.metadata["help"] and field.metadata["source"], f"{name}.{key}: no help or source"
    assert cls.label, f"{name} has no table label"
    assert isinstance(cls.has_meta_update, bool) and isinstance(cls.uses_main_task, bool)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_get_method_names_an_undeclared_setting(name):
    with pytest.raises(TypeError, match="no setting 'not_a_setting'"):
        get_method(name, n_tasks=3, not_a_setting=1)


def test_labels_are_the_papers_row_names():
    """The paper's methods carry its row names (../shared/paper/nyuv2.csv's method column); labels are unique."""
    paper = {"stl": "STL", "equal": "LS", "pcgrad": "PCGrad", "cagrad": "CAGrad", "nashmtl": "Nash-MTL", "gcs": "GCS",
             "olaux": "OL-AUX", "auxilearn": "AuxiLearn", "auxinash": "AuxiNash"}
    assert {name: METHODS[name].label for name in paper} == paper
    labels = [METHODS[name].label for name in METHOD_NAMES]
    assert len(set(labels)) == len(labels)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_default_command_line_gives_the_declared_defaults(script, name, monkeypatch):
    """The method built from a script's default command line has exactly get_method(name)'s settings (the
    trainer's --lr, 1e-4 or 5e-3, once reached OL-AUX's step size β, declared 0.05)."""
    parser = script_parser(SCRIPTS[script], monkeypatch)
    flags = vars(parser.parse_args(["--method", name]))
    kwargs = cli.method_kwargs_from_flags(name, flags)
    assert method_settings(name, **kwargs) == method_settings(name)
    built, default = get_method(name, 3, **kwargs), get_method(name, 3)
    for field in setting_fields(METHODS[name].Settings):
        if hasattr(default, field.name):
            ours, theirs = getattr(built, field.name), getattr(default, field.name)
            assert (torch.equal(ours, theirs) if isinstance(ours, torch.Tensor) else ours == theirs), field.name


def test_olaux_step_size_is_not_the_model_learning_rate(monkeypatch):
    parser = script_parser(train_cifar_ssl, monkeypatch)
    flags = vars(parser.parse_args(["--method", "olaux", "--lr", "0.005"]))
    assert get_method("olaux", 3, **cli.method_kwargs_from_flags("olaux", flags)).lr == 0.05  # ARML's task_weighter_lr
    flags = vars(parser.parse_args(["--method", "olaux", "--olaux-lr", "0.2"]))
    assert get_method("olaux", 3, **cli.method_kwargs_from_flags("olaux", flags)).lr == 0.2


def other_value(cls, field):
    """A valid value of a declared setting other than its default."""
    hint = typing.get_type_hints(cls.Settings)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if typing.get_origin(hint) is typing.Union else hint
    if field.metadata["choices"]:
        value = next(c for c in field.metadata["choices"] if c != field.default)
        return [value], value
    if hint is bool:
        return ([], True) if not field.default else (["--no"], False)
    if hint is int:
        return [str(field.default + 2)], field.default + 2
    if hint is float:
        return [str(field.default * 3 + 0.5)], field.default * 3 + 0.5
    if typing.get_origin(hint) is tuple:
        return ["4", "5"], [4, 5]
    raise AssertionError(f"no test value for {cls.__name__}.{field.name}: {hint}")


CLI_SETTINGS = [(name, f.name) for name in METHOD_NAMES for f in setting_fields(METHODS[name].Settings)
                if f.metadata["cli"]]


@pytest.mark.parametrize("name,setting", CLI_SETTINGS)
def test_each_method_flag_changes_only_its_own_setting(name, setting, monkeypatch):
    parser = script_parser(train_nyuv2, monkeypatch)
    cls = METHODS[name]
    field = next(f for f in setting_fields(cls.Settings) if f.name == setting)
    words, value = other_value(cls, field)
    flag = f"--{name}-{setting.replace('_', '-')}"
    if words[:1] == ["--no"]:
        argv = [f"--no-{name}-{setting.replace('_', '-')}"]
    else:
        argv = [flag, *words]
    flags = vars(parser.parse_args(argv))
    for other in METHOD_NAMES:
        settings = method_settings(other, **cli.method_kwargs_from_flags(other, flags))
        expected = method_settings(other)
        if other == name:
            expected[setting] = value
        assert settings == expected, f"{flag} changed {other}'s settings"


def test_shared_flags_set_every_method_that_declares_the_setting(monkeypatch):
    parser = script_parser(train_nyuv2, monkeypatch)
    flags = vars(parser.parse_args(["--meta-lr", "0.1", "--auxilearn-meta-lr", "0.2"]))
    assert method_settings("auxinash", **cli.method_kwargs_from_flags("auxinash", flags))["meta_lr"] == 0.1
    assert method_settings("auxilearn", **cli.method_kwargs_from_flags("auxilearn", flags))["meta_lr"] == 0.2
    assert cli.method_kwargs_from_flags("olaux", flags) == {}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_method_flags_default_to_none_so_existing_run_identities_stay(script, monkeypatch):
    """A flag at None is left out of a run's identity: generated method flags must not change old runs'."""
    parser = script_parser(SCRIPTS[script], monkeypatch)
    flags = vars(parser.parse_args([]))
    for name in METHOD_NAMES:
        for field in setting_fields(METHODS[name].Settings):
            assert flags.get(f"{name}_{field.name}") is None


def test_config_records_the_resolved_method_settings_once(tmp_path):
    from experiments.training.benchmarks import ToyBenchmark
    from experiments.training.loop import TrainConfig, train
    benchmark = ToyBenchmark("cpu", seed=0, epochs=2, eval_every=2, n_train=256, batch_size=128)
    run_dir = train(benchmark, TrainConfig(method="olaux", main_task="main", lr=1e-2, out=str(tmp_path),
                                           method_kwargs={"interval": 5}))
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["method_settings"] == {**method_settings("olaux"), "interval": 5}
    assert "method_kwargs" not in config and "flags" not in config


def test_every_setting_is_a_frozen_dataclass_field():
    for name in METHOD_NAMES:
        settings = METHODS[name].Settings
        assert dataclasses.is_dataclass(settings) and settings.__dataclass_params__.frozen, name
    assert methods.method_settings("ls") == methods.method_settings("equal")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_the_method_flag_namespace_is_reserved(script, monkeypatch):
    """``--<method>-…`` belongs to the generated flags: a script's own flag named like one (which would read as a
    method setting that no method declares) fails here rather than confusing a user."""
    parser = script_parser(SCRIPTS[script], monkeypatch)
    declared = {f"--{name}-{field.name.replace('_', '-')}" for name in METHOD_NAMES
                for field in setting_fields(METHODS[name].Settings) if field.metadata["cli"]}
    for action in parser._actions:
        for option in action.option_strings:
            if any(option.startswith(f"--{name}-") for name in METHOD_NAMES):
                assert option in declared, f"{script}: {option} sits in a method's flag namespace"
