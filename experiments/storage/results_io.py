"""Result files: atomic writes (a crash never leaves a half-written metrics.csv, config.json or checkpoint),
a run's identity, the one-writer lock of a run folder, and the checks of what a resume reads."""
from __future__ import annotations

import csv
import fcntl
import glob
import hashlib
import io
import json
import logging
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # torch and pandas are imported where used, so that status views (sweep.py) start quickly
    import pandas as pd

log = logging.getLogger("auxinash")
# the repository (its git commit goes into config.json) and the paper's transcribed tables in it
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_DIR = os.path.join(REPOSITORY, "results", "paper")


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """A text file (a table in Markdown, a record), written atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def write_frame(path: str, frame: "pd.DataFrame", **to_csv: Any) -> None:
    """A pandas table as CSV (``index=False`` unless given), written atomically."""
    to_csv.setdefault("index", False)
    atomic_write(path, lambda tmp: frame.to_csv(tmp, **to_csv))


def save_figure(figure: Any, path: str, **savefig: Any) -> None:
    """A matplotlib figure, written atomically (the format from ``path``'s extension)."""
    savefig.setdefault("format", os.path.splitext(path)[1].lstrip(".") or "png")
    atomic_write(path, lambda tmp: figure.savefig(tmp, **savefig))


def write_json(path: str, data: Dict[str, Any]) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
    atomic_write(path, write)


def read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def write_rows(path: str, rows: List[Dict[str, Any]]) -> None:
    import pandas as pd
    atomic_write(path, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    import torch
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def environment() -> Dict[str, str]:
    """Git commit, library versions and the interpreter, for config.json."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPOSITORY, capture_output=True,
                                    text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    import numpy
    import pandas as pd
    import torch
    return {"git_commit": commit + ("+dirty" if dirty else ""), "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": numpy.__version__, "pandas": pd.__version__}


# --------------------------------------------------------------------------------------------------------------
# Run identity, the one-writer lock and the checks made before resuming (README, "Results and resuming").

class RunError(RuntimeError):
    """A run cannot start as asked; the message says why and what to do. ``exit_code`` for the command line."""

    exit_code = 3


class RunLockedError(RunError):
    """Another process holds the run's lock (it is training this run now)."""

    exit_code = 75  # EX_TEMPFAIL: try again later; sweep.py reads it as "running elsewhere"


# Flags that do not change a run's results: where it is written, how it is launched or logged, where the data
# lies. Every other flag (new ones included) is part of the run's identity.
NOT_IDENTITY = frozenset({"out", "resume", "force", "device", "workers", "log_level", "stop_after", "download",
                          "data_root", "cache_root", "methods", "flags", "method_kwargs", "sinks"})


def run_identity(settings: Dict[str, Any]) -> Dict[str, Any]:
    """The settings that make a run what it is: every entry but ``NOT_IDENTITY``, and none that is None (a
    method's own default) or False (a switch left off), so that a new optional flag leaves existing runs'
    identities unchanged."""
    identity = {}
    for key, value in settings.items():
        if key in NOT_IDENTITY or value is None or value is False:
            continue
        identity[key] = list(value) if isinstance(value, tuple) else value
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def identity_digest(identity: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity_difference(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """``--flag: old → new`` for every setting that differs."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            lines.append(f"--{key.replace('_', '-')}: {old.get(key, '(unset)')} → {new.get(key, '(unset)')}")
    return lines


# Set by experiments/sweep.py: the file where ``loop.train`` records the run folders a command line trains.
RUN_RECORD_ENV = "AUXINASH_RUN_RECORD"


def slurm_job() -> Optional[str]:
    """This process's SLURM job, as ``<array job>_<task>`` inside a job array; None outside SLURM."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def holder_info() -> Dict[str, Any]:
    """Who holds a lock: host, process, SLURM job (array task) if any, start time, command."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}


def describe_holder(info: Dict[str, Any]) -> str:
    if not info:
        return "an unknown process"
    text = f"process {info.get('pid')} on {info.get('host')}"
    if info.get("slurm_job"):
        text += f" (SLURM job {info['slurm_job']})"
    return text + f", since {info.get('started')}"


def slurm_job_running(job: str) -> Optional[bool]:
    """Whether a SLURM job (``123`` or ``123_4``) is pending or running, or None if ``squeue`` cannot tell."""
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return False if "Invalid job id" in result.stderr else None
    return bool(result.stdout.strip())


def holder_alive(info: Dict[str, Any]) -> Optional[bool]:
    """Whether the process named in a lock file still runs: True, False, or None when this host cannot tell."""
    if not info:
        return False
    mine = holder_info()
    if info.get("slurm_job") and info["slurm_job"] == mine["slurm_job"] and info.get("host") != mine["host"]:
        return False  # an earlier try of this very job, requeued onto another node
    if info.get("host") == mine["host"]:
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, TypeError, ValueError):
            return True
        return True
    if info.get("slurm_job"):
        return slurm_job_running(str(info["slurm_job"]))
    return None


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``<run>/lock``, which the kernel releases when the
    process ends however it ends; the file names the holder (host, pid, SLURM job, start time) for the message
    a second launch stops with. A lock left by a process that died is taken over, with a log line. On a
    filesystem whose locks are not shared between hosts, a holder recorded on another host whose SLURM job
    still runs also keeps the lock."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, "lock")
        self.fd: Optional[int] = None

    def _read(self) -> Dict[str, Any]:
        try:
            with open(self.path) as f:
                text = f.read().strip()
            return json.loads(text) if text else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        flock_works = True
        try:
            for attempt in range(10):  # a status view (``lock_holder``) holds a shared lock for a moment
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 9:
                        raise
                    time.sleep(0.1)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"{os.path.dirname(self.path)} is being trained by {describe_holder(self._read())}; "
                                 f"this launch stops. Wait for it, or stop that process first") from None
        except OSError as error:  # a filesystem without flock: the holder record alone decides
            flock_works = False
            log.warning("%s: file locks unsupported here (%s); relying on the holder record", self.path, error)
        previous = self._read()
        if previous:
            # with working locks the kernel has the last word on this host; a holder on another host still
            # counts while its SLURM job runs (cluster filesystems may not share locks between hosts)
            alive = holder_alive(previous)
            other_host = previous.get("host") != socket.gethostname()
            if (other_host and alive is True) if flock_works else (alive is not False):
                os.close(fd)
                raise RunLockedError(f"{os.path.dirname(self.path)} is being trained by {describe_holder(previous)}; "
                                     f"this launch stops. If that process is gone, delete {self.path}")
            log.warning("taking over the lock of %s from %s (that process is gone)", os.path.dirname(self.path),
                        describe_holder(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty lock file: nobody holds it
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(run_dir: str) -> Optional[Dict[str, Any]]:
    """Who trains ``run_dir`` now (its holder record), or None; for status views. Never takes the lock over."""
    lock = RunLock(run_dir)
    if not os.path.exists(lock.path):
        return None
    info = lock._read()
    try:
        fd = os.open(lock.path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        held = False
    except BlockingIOError:
        held = True
    except OSError:
        held = bool(holder_alive(info))
    finally:
        os.close(fd)
    if not held and info and info.get("host") != socket.gethostname() and info.get("slurm_job"):
        held = bool(slurm_job_running(str(info["slurm_job"])))
    return (info or {"host": "?", "pid": "?"}) if held else None


TMP_FILE = re.compile(r"\.tmp(\d+)$")


def remove_stale_temporaries(run_dir: str) -> List[str]:
    """Delete the ``*.tmp<pid>`` files that writers killed mid-write left; call with the run's lock held."""
    removed = []
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
        match = TMP_FILE.search(name)
        if match and int(match.group(1)) != os.getpid():
            os.remove(os.path.join(run_dir, name))
            removed.append(name)
    return removed


def move_aside(run_dir: str, keep: Sequence[str] = ("lock",)) -> Optional[str]:
    """Move every file of ``run_dir`` but ``keep`` to ``<run_dir>.old-<timestamp>``; return that folder."""
    names = [n for n in os.listdir(run_dir) if n not in keep] if os.path.isdir(run_dir) else []
    if not names:
        return None
    aside = f"{run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while os.path.exists(aside):
        aside, suffix = f"{run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}", suffix + 1
    os.makedirs(aside)
    for name in names:
        os.replace(os.path.join(run_dir, name), os.path.join(aside, name))
    return aside


def checkpoint_globals() -> List[Any]:
    """What ``torch.load(weights_only=True)`` must admit beyond tensors, numbers, strings, dicts, lists and tuples
    to read our checkpoints, each under the name the pickle gives it: NumPy's legacy RNG state
    (``np.random.get_state()`` in ``training.loop.rng_state``: a uint32 array, rebuilt by ``_reconstruct``, and
    its dtype). NumPy 1.x pickles ``numpy.core.multiarray._reconstruct``, NumPy 2.x
    ``numpy._core.multiarray._reconstruct``; both name the function that ``ndarray.__reduce__`` returns today.
    The dtype is pickled as ``numpy.dtype(...)`` plus a state that is set on an instance of its class
    (``numpy.dtypes.UInt32DType`` since NumPy 1.25), so that class is admitted too, and no other dtype's: an object
    array cannot be rebuilt. Objects, not strings, so that no module is imported by name
    (``torch.serialization.safe_globals``; the (object, name) form: torch/_weights_only_unpickler.py
    ``_get_user_allowed_globals``)."""
    import numpy as np
    reconstruct = np.zeros(0).__reduce__()[0]
    return [(reconstruct, "numpy.core.multiarray._reconstruct"), (reconstruct, "numpy._core.multiarray._reconstruct"),
            (np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype"),
            (type(np.dtype(np.uint32)), "numpy.dtypes.UInt32DType")]


def load_checkpoint(path: str, device) -> Dict[str, Any]:
    """The checkpoint, or a ``RunError`` naming the file when it cannot be read or needs more than a checkpoint of
    this repository holds (README, "Results and resuming"): it is unpickled with ``weights_only=True``, which
    admits tensors, numbers, strings, dicts, lists and tuples, plus ``checkpoint_globals()`` and nothing else, so a
    file that would run code on loading stops before anything in it runs. The extra globals are admitted only
    inside this call (``torch.serialization.safe_globals``; an entry the process had admitted itself is left as
    it was)."""
    import torch
    admitted = torch.serialization.get_safe_globals()
    extra = [entry for entry in checkpoint_globals() if entry not in admitted]
    try:
        with torch.serialization.safe_globals(extra):
            state = torch.load(path, map_location=device, weights_only=True)
        missing = {"model", "optimizer", "scheduler", "method", "benchmark", "rng", "round", "step"} - set(state)
    except pickle.UnpicklingError as error:  # torch re-raises the unpickler's own error with advice around it
        reason = str(error.__context__ if isinstance(error.__context__, pickle.UnpicklingError) else error)
        reason = reason.strip().split(" Please use `torch.serialization")[0]
        raise RunError(f"the checkpoint {path} was not loaded and nothing in it ran ({reason.rstrip('.')}). A "
                       f"checkpoint of this repository holds only tensors, numbers, strings, dicts, lists, tuples "
                       f"and NumPy's RNG state, so this file is damaged or was written by something else: start the "
                       f"run again with --force (the run's files are moved aside)") from None
    except Exception as error:  # noqa: BLE001 - torch raises many kinds on a damaged file
        raise RunError(f"the checkpoint {path} cannot be read ({type(error).__name__}: {error}); start the run "
                       f"again with --force (the damaged run is moved aside)") from None
    if missing:
        raise RunError(f"the checkpoint {path} lacks {sorted(missing)}; start the run again with --force")
    return state


def check_metrics(path: str, rounds_done: int, unit: str = "round") -> List[Dict[str, Any]]:
    """The rows of ``metrics.csv`` before round ``rounds_done`` (the checkpoint's), checked: the file ends
    with a complete line, every line has as many fields as the header, and every round before the checkpoint's
    has its training row (losses and weights present) and the same evaluation splits as the first round.
    Anything else is a ``RunError`` naming the file: those rounds cannot be restored from the checkpoint."""
    import pandas as pd
    fix = ("rounds before the checkpoint's cannot be restored: start the run again with --force (the damaged "
           "run is moved aside)")
    if rounds_done == 0:
        return []
    if not os.path.exists(path):
        raise RunError(f"{path} is missing but the checkpoint is from after {unit} {rounds_done - 1}; {fix}")
    with open(path, newline="") as f:
        text = f.read()
    lines = list(csv.reader(io.StringIO(text)))
    if not text.endswith("\n") or len(lines) < 2:
        raise RunError(f"{path} is {'empty' if len(lines) < 2 else 'cut off mid-line'}; {fix}")
    header = lines[0]
    bad = [n + 1 for n, line in enumerate(lines[1:], 1) if len(line) != len(header)]
    if bad:
        raise RunError(f"{path}: line(s) {bad[:5]} have not {len(header)} fields; {fix}")
    frame = pd.read_csv(io.StringIO(text))
    needed = {"round", "split"}
    if not needed <= set(frame.columns):
        raise RunError(f"{path} has no {sorted(needed - set(frame.columns))} column; {fix}")
    frame = frame[frame["round"] < rounds_done]
    splits = None
    for round_index in range(rounds_done):
        here = frame[frame["round"] == round_index]
        train = here[here.split == "train"]
        row_splits = sorted(here.split.astype(str))
        splits = row_splits if splits is None else splits
        columns = [c for c in frame.columns if c.startswith(("loss_", "weight_")) or c in ("step", "lr")]
        if len(train) != 1 or row_splits != splits or train[columns].isna().any(axis=None):
            raise RunError(f"{path}: {unit} {round_index} is missing or incomplete (the checkpoint is from after "
                           f"{unit} {rounds_done - 1}); {fix}")
    return frame.to_dict("records")


def run_finished(run_dir: str) -> Tuple[bool, str]:
    """Whether ``run_dir`` finished (its status.json is there and belongs to the settings in its config.json),
    and if not, why not."""
    status, config = os.path.join(run_dir, "status.json"), os.path.join(run_dir, "config.json")
    if not os.path.exists(status):
        holder = lock_holder(run_dir)
        return False, f"in progress ({describe_holder(holder)})" if holder else "unfinished"
    try:
        same = read_json(status).get("identity_digest") == read_json(config).get("identity_digest")
    except (OSError, ValueError) as error:
        return False, f"unreadable status.json or config.json ({error})"
    return (True, "finished") if same else (False, "status.json is from other settings than config.json")


# -- the results layout: the one place that builds and parses run paths and names metrics.csv's columns -----------

RUN_FILES = {"metrics": "metrics.csv", "config": "config.json", "checkpoint": "checkpoint.pt",
             "status": "status.json", "lock": "lock"}


@dataclass(frozen=True)
class RunFolder:
    """Where a run lives: ``<out>/<benchmark>/<method>[_<tag>]/main-<task or all>/seed<k>/``.

    ``main_task`` is None for multi-task methods (folder ``main-all``). Method registry names hold no
    underscore, so ``<method>_<tag>`` parses back unambiguously (tags may hold underscores)."""

    out: str
    benchmark: str
    method: str
    tag: str = ""
    main_task: Optional[str] = None
    seed: int = 0

    @property
    def method_folder(self) -> str:
        return f"{self.method}_{self.tag}" if self.tag else self.method

    @property
    def main_folder(self) -> str:
        return f"main-{self.main_task}" if self.main_task is not None else "main-all"

    @property
    def path(self) -> str:
        return os.path.join(self.out, self.benchmark, self.method_folder, self.main_folder, f"seed{self.seed}")

    def file(self, kind: str) -> str:
        """The path of one of the run's files (``RUN_FILES``: metrics, config, checkpoint, status, lock)."""
        return os.path.join(self.path, RUN_FILES[kind])

    @classmethod
    def parse(cls, path: str) -> "RunFolder":
        """The run folder value of a path built by ``path``; ValueError for a path of another shape."""
        parts = os.path.normpath(path).split(os.sep)
        if len(parts) < 4 or not is_run_folder_name(parts[-1]) or not parts[-2].startswith("main-"):
            raise ValueError(f"{path} is not a run folder (<out>/<benchmark>/<method>[_<tag>]/main-<task>/seed<k>)")
        method, _, tag = parts[-3].partition("_")
        main = parts[-2][len("main-"):]
        out = os.path.normpath(path)
        for _ in range(4):
            out = os.path.dirname(out)
        return cls(out=out, benchmark=parts[-4], method=method,
                   tag=tag, main_task=None if main == "all" else main, seed=int(parts[-1][len("seed"):]))


# metrics.csv: one row per round and split. Columns of every row: ROUND, STEP, SPLIT; training rows add LR,
# SECONDS and per task loss_<task>, weight_<task> (mean α or task weight) and, for methods that report it,
# p_<task> (the bargaining power at the round's end); evaluation rows add the benchmark's metrics.
ROUND, STEP, SPLIT, LR, SECONDS = "round", "step", "split", "lr", "seconds"
TRAIN_SPLIT = "train"


def loss_column(task: str) -> str:
    return f"loss_{task}"


def weight_column(task: str) -> str:
    return f"weight_{task}"


def p_column(task: str) -> str:
    return f"p_{task}"


def metric_column(task: str, metric: str) -> str:
    """An evaluation column: ``<task>_<metric>`` (e.g. ``seg_miou``, ``left_acc``)."""
    return f"{task}_{metric}"


def find_runs(results: str, benchmark: str = "*") -> List[str]:
    """Every run folder ``<results>/<benchmark>/<method>/main-*/seed*`` holding a config.json or metrics.csv."""
    pattern = os.path.join(results, benchmark, "*", "main-*", "seed*")
    return sorted(d for d in glob.glob(pattern) if is_run_folder_name(os.path.basename(d)) and os.path.isdir(d) and (
        os.path.exists(os.path.join(d, RUN_FILES["config"])) or os.path.exists(os.path.join(d, RUN_FILES["metrics"]))))


def is_run_folder_name(name: str) -> bool:
    """``seed<k>``: a run folder, not one that ``--force`` moved aside (``seed<k>.old-<time>``)."""
    return re.fullmatch(r"seed\d+", name) is not None


def select_runs(results: str, benchmark: str = "*", include_unfinished: bool = False
                ) -> Tuple[List[str], List[Tuple[str, str]]]:
    """The run folders tables and figures may use (finished ones, or all with ``include_unfinished``) and the
    (folder, reason) of those left out."""
    used, left_out = [], []
    for run_dir in find_runs(results, benchmark):
        finished, why = run_finished(run_dir)
        if finished or (include_unfinished and os.path.exists(os.path.join(run_dir, "metrics.csv"))):
            used.append(run_dir)
        else:
            left_out.append((run_dir, why))
    return used, left_out


def read_metrics(path: str) -> "pd.DataFrame":
    """A run's metrics.csv, or a ``RunError`` naming the file when it is missing, empty or unreadable."""
    import pandas as pd
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise RunError(f"{path} is missing") from None
    except pd.errors.EmptyDataError:
        raise RunError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise RunError(f"{path} cannot be parsed ({error})") from None
