"""experiments/agreement_official.py without the official code: its help, and the errors that name what is missing.

The real run (the official NYUv2 trainer's loop with our AuxiNash beside it) needs a checkout of AvivSham/auxinash
and ``ecos``, neither of which CI has, so it is not run here: by hand, ``python experiments/agreement_official.py
--official PATH`` (methods/README.md, "Agreement in the official loop", has the command and its numbers). Its
``--help`` also runs in tests/test_experiments.py with every other command. These cases run in well under a second.
"""
from __future__ import annotations

import os
import sys

import pytest

from experiments import agreement_official


def test_help_names_the_official_checkout_and_how_to_get_it(capsys):
    with pytest.raises(SystemExit) as stop:
        agreement_official.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--official" in out and "archive HEAD" in out and "pip install ecos" in out


@pytest.mark.parametrize("argv, says", [
    ([], "--official is required"),
    (["--official", "/nonexistent/auxinash"], "--official /nonexistent/auxinash: no such directory"),
])
def test_missing_official_checkout_is_a_usage_error(argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        agreement_official.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "git --git-dir=MIRROR archive HEAD" in err


def test_a_folder_that_is_not_the_official_code_is_named(tmp_path, capsys):
    (tmp_path / "methods").mkdir()  # a `methods` package, but not theirs
    with pytest.raises(SystemExit) as stop:
        agreement_official.main(["--official", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "not an official AuxiNash checkout" in err and os.path.join("methods", "weight_methods.py") in err


def test_in_a_process_that_imported_our_methods_it_refuses_to_load_theirs(tmp_path):
    """Here (pytest) `methods` is ours: loading theirs under the same name is refused, and nothing is replaced."""
    import methods
    for name in agreement_official.REQUIRED_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("raise AssertionError('must not be imported')\n")
    root = agreement_official.check_official(str(tmp_path))
    with pytest.raises(agreement_official.OfficialCodeError, match="run this file as a script") as error:
        agreement_official.load_official(root)
    assert "`methods` is already" in str(error.value)
    assert sys.modules["methods"] is methods
