"""Atomic result files: a crash never leaves a half-written metrics.csv, config.json or checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import pandas as pd
import torch


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def write_json(path: str, data: Dict[str, Any]) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
    atomic_write(path, write)


def read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def write_rows(path: str, rows: List[Dict[str, Any]]) -> None:
    atomic_write(path, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))


def read_rows(path: str) -> List[Dict[str, Any]]:
    return pd.read_csv(path).to_dict("records") if os.path.exists(path) else []


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def environment() -> Dict[str, str]:
    """Git commit, library versions and the interpreter, for config.json."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                                    text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    import numpy
    return {"git_commit": commit + ("+dirty" if dirty else ""), "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": numpy.__version__, "pandas": pd.__version__}
