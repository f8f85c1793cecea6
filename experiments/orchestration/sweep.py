"""Dispatch a list of runs (one command line each, exactly what ``./run_all.sh --dry-run`` prints) one after
another, several at a time on this machine, or as one SLURM job array, with submitit; and show where they stand.

    ./run_all.sh --dry-run > runs.txt
    python experiments/sweep.py --runs runs.txt --out results                               # one after another
    python experiments/sweep.py --runs runs.txt --out results --launcher local --jobs 4     # one GPU each if any
    python experiments/sweep.py --runs runs.txt --out results --launcher slurm --partition gpu --gpus-per-run 1 \\
        --time 24:00:00 [--account A] [--qos Q] [--max-parallel 32]
    python experiments/sweep.py --runs runs.txt --out results --status                      # done/running/pending/failed

``./run_all.sh`` passes its list here (its flags ``--launcher``, ``--jobs``, ``--partition``, … ``--status``).

Idempotent: a launch skips the runs that finished and those running now (their lock is held, or their SLURM job
is queued or running) and starts the others; a command line holding ``--resume`` continues from the last
checkpoint, and a run's lock keeps two launches from training it at once (README, "Results and resuming").
Each job runs its command line as it is; the sweep learns which run folders a command trains from the file
named by ``$AUXINASH_RUN_RECORD`` (``experiments/training/loop.py`` writes it), never by changing the command.

Per run, in ``<out>/logs/``: ``<name>.log`` (the command's output, every attempt), ``<name>.json`` (its
attempts: host, process, SLURM job, GPUs, start, end, exit status), ``<name>.rundirs`` (its run folders) and,
for SLURM, ``<name>.submitted.json`` (the job that will run it). ``<name>`` is the script and its flags
(without ``--out``, ``--resume``, ``--force``, ``--device``, ``--data-root``) and a digest of them.

SLURM: one ``sbatch`` job array for the runs to start, throttled by SLURM itself (``%max-parallel``); each task
runs its command through submitit, which asks SLURM for a signal before the time limit (``--signal``) and on it,
or on preemption, stops the command and requeues the task with ``--resume`` (``--force`` dropped), so the task
continues from its last checkpoint (every epoch; every evaluation block for CIFAR-10) and no finished round is
lost. The sweep command returns once the array is submitted; follow it with ``--status``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import submitit

from experiments.storage.results_io import REPOSITORY, RUN_RECORD_ENV, RunLockedError, slurm_job  # a torch-free import

ROOT = REPOSITORY  # the runs' working directory and PYTHONPATH

LOCKED_EXIT = RunLockedError.exit_code  # a training script's exit status when another process trains the run
KEY_DROPS = {"--out": 1, "--resume": 0, "--force": 0, "--device": 1, "--data-root": 1}
_CHILDREN: Dict[str, subprocess.Popen] = {}  # command → its running process, for checkpoint()


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def script_tokens(command: str) -> List[str]:
    """The command's words without the interpreter (``python``, ``/usr/bin/python3.11``, ``$PYTHON``)."""
    tokens = shlex.split(command)
    if tokens and re.match(r"python[\d.]*$", os.path.basename(tokens[0])) or (tokens and tokens[0] == sys.executable):
        tokens = tokens[1:]
    return tokens


def run_name(command: str) -> str:
    """A run's name in ``<out>/logs``: its script and flags (launch-only flags left out) and their digest, so
    that the same run keeps its log whatever else is in the list and wherever it stands in it."""
    tokens, kept = script_tokens(command), []
    index = 0
    while index < len(tokens):
        drop = KEY_DROPS.get(tokens[index])
        if drop is not None:
            index += 1 + drop
            continue
        kept.append(tokens[index])
        index += 1
    if not kept:
        raise ValueError(f"not a command line: {command!r}")
    digest = hashlib.sha1(" ".join(kept).encode()).hexdigest()[:8]
    slug = os.path.basename(kept[0]).removesuffix(".py") + "".join(
        ("_" + t[2:]) if t.startswith("--") else ("-" + t) for t in kept[1:])
    slug = re.sub(r"[^A-Za-z0-9_.=-]", "-", slug)[:120]
    return f"{slug}-{digest}"


class RunFiles:
    """The sweep's files of one run in ``<out>/logs``."""

    def __init__(self, out: str, command: str) -> None:
        self.logs = os.path.join(out, "logs")
        self.name = run_name(command)
        base = os.path.join(self.logs, self.name)
        self.log, self.record, self.rundirs, self.submitted = (f"{base}.log", f"{base}.json", f"{base}.rundirs",
                                                               f"{base}.submitted.json")


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def resume_command(command: str) -> str:
    """The command a requeued job runs: with ``--resume``, without ``--force`` (which would start it over)."""
    tokens = [t for t in shlex.split(command) if t != "--force"]
    if "--resume" not in tokens and any(t.endswith(".py") and "train_toy" not in t for t in tokens):
        tokens.append("--resume")
    return shlex.join(tokens)


def stop(process: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM (the run keeps its last checkpoint and loses at most its current round), SIGKILL after ``grace``
    seconds. Reaps with ``os.waitpid``: this runs in a signal handler that interrupted ``process.wait()``, whose
    lock ``Popen.wait``/``poll`` would wait on."""
    try:
        process.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while True:
        try:
            pid, status = os.waitpid(process.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already
            return
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return
        if time.time() > deadline:
            process.kill()
            deadline = float("inf")
        time.sleep(0.05)


class RunCommand(submitit.helpers.Checkpointable):
    """One run: its command line, run as it is, output appended to its log, each attempt recorded. On SLURM's
    signal before the time limit, or on preemption, submitit calls ``checkpoint``: the command is stopped (the
    run keeps its last checkpoint) and the job requeued with ``resume_command``."""

    def __init__(self, command: str, out: str) -> None:
        self.command, self.out = command, out

    def run(self) -> int:
        files = RunFiles(self.out, self.command)
        os.makedirs(files.logs, exist_ok=True)
        record = read_json(files.record) or {"command": self.command, "attempts": []}
        command = self.command
        if slurm_job() and any(a.get("slurm_job") == slurm_job() for a in record["attempts"]):
            command = resume_command(command)  # requeued by SLURM itself (preemption): continue, never start over
        attempt = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job(), "started": now(),
                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "command": command}
        record["attempts"].append(attempt)
        write_json(files.record, record)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env[RUN_RECORD_ENV] = os.path.abspath(files.rundirs)
        with open(files.log, "a") as log:
            log.write(f"=== {now()} on {attempt['host']}" + (f" (SLURM job {attempt['slurm_job']})"
                                                             if attempt["slurm_job"] else "") + f": {command}\n")
            log.flush()
            process = subprocess.Popen(shlex.split(command), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            _CHILDREN[self.command] = process
            try:
                code = process.wait()
            except BaseException as interruption:  # submitit's requeue (SystemExit after checkpoint), Ctrl-C
                reason = type(interruption).__name__
                log.write(f"=== {now()}: stopped ({reason}), exit status {process.poll()}\n")
                attempt.update(ended=now(), exit_code=process.poll(), stopped=reason)
                write_json(files.record, record)
                raise
            finally:
                _CHILDREN.pop(self.command, None)
            log.write(f"=== {now()}: exit status {code}\n")
        attempt.update(ended=now(), exit_code=code)
        write_json(files.record, record)
        return code

    def __call__(self) -> int:
        code = self.run()
        if code not in (0, LOCKED_EXIT):
            raise RuntimeError(f"exit status {code}: {self.command} (log: {RunFiles(self.out, self.command).log})")
        return code

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        process = _CHILDREN.get(self.command)
        if process is not None:
            stop(process)
        return submitit.helpers.DelayedSubmission(RunCommand(resume_command(self.command), self.out))


# ------------------------------------------------------------------------------------------------------------
# where each run stands

_QUEUE: Dict[str, bool] = {}  # SLURM job (array task) → queued or running, read once per status view


def read_queue(jobs: Sequence[str]) -> None:
    """Ask ``squeue`` once about every job array of ``jobs`` (one line per array task)."""
    arrays = sorted({job.split("_")[0] for job in jobs if job})
    if not arrays:
        return
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i %T"], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return
    if result.returncode == 0:
        listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
        _QUEUE.update({job: job in listed for job in jobs})


def slurm_queued(job: str) -> Optional[bool]:
    if job in _QUEUE:
        return _QUEUE[job]
    from experiments.storage.results_io import slurm_job_running
    return slurm_job_running(job)


def prefetch_queue(out: str, commands: Sequence[str]) -> None:
    jobs = [read_json(RunFiles(out, c).submitted).get("job_id") for c in commands]
    jobs += [(read_json(RunFiles(out, c).record).get("attempts") or [{}])[-1].get("slurm_job") for c in commands]
    read_queue([j for j in jobs if j])


def process_alive(host: Optional[str], pid, job: Optional[str]) -> bool:
    from experiments.storage.results_io import holder_alive
    return bool(holder_alive({"host": host, "pid": pid, "slurm_job": job}))


def run_state(out: str, command: str) -> Tuple[str, str]:
    """(done | running | pending | failed, detail) of one command line, read from its run folders (status.json,
    lock), its attempts and its SLURM submission."""
    from experiments.storage.results_io import describe_holder, lock_holder, run_finished
    files = RunFiles(out, command)
    rundirs = open(files.rundirs).read().split() if os.path.exists(files.rundirs) else []
    attempts = read_json(files.record).get("attempts", [])
    last = attempts[-1] if attempts else None
    for run_dir in rundirs:
        holder = lock_holder(run_dir)
        if holder is not None:
            return "running", describe_holder(holder)
    if last and "ended" not in last and process_alive(last.get("host"), last.get("pid"), last.get("slurm_job")):
        return "running", f"started {last['started']} on {last['host']}"
    finished = [run_finished(d)[0] for d in rundirs]
    if (rundirs and all(finished) or not rundirs and last) and (last is None or last.get("exit_code") == 0):
        return "done", ""
    submitted = read_json(files.submitted)
    if submitted.get("job_id") and (not last or last["started"] < submitted["submitted"]):
        if slurm_queued(submitted["job_id"]):
            return "pending", f"queued as SLURM job {submitted['job_id']}"
    if last and last.get("stopped") == "SystemExit":  # checkpointed for a requeue (time limit or preemption)
        if last.get("slurm_job") and slurm_queued(str(last["slurm_job"])):
            return "pending", f"requeued as SLURM job {last['slurm_job']}"
        return "pending", ""
    if last and last.get("exit_code") not in (None, 0, LOCKED_EXIT):
        return "failed", f"exit status {last['exit_code']} ({last.get('ended')})"
    if last and "ended" not in last:
        return "failed", f"the attempt of {last['started']} on {last['host']} ended without a word (killed?)"
    return "pending", ""


def tail(path: str, lines: int) -> List[str]:
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        text = [line.rstrip("\n").split("\r")[-1] for line in f.readlines()[-4 * lines:]]
    return [line for line in text if line.strip()][-lines:]


def status(out: str, commands: Sequence[str], stream=sys.stdout, log_lines: int = 10) -> Dict[str, int]:
    """Print every run's state, its run folder (or name) and log; a failed run's last log lines."""
    counts = {"done": 0, "running": 0, "pending": 0, "failed": 0}
    prefetch_queue(out, commands)
    for command in commands:
        state, detail = run_state(out, command)
        counts[state] += 1
        files = RunFiles(out, command)
        rundirs = open(files.rundirs).read().split() if os.path.exists(files.rundirs) else []
        where = ", ".join(os.path.relpath(d, os.path.abspath(out)) for d in rundirs) or files.name
        print(f"{state:8} {where}", file=stream)
        print(f"         log: {files.log}" + (f"; {detail}" if detail else ""), file=stream)
        if state == "failed":
            for line in tail(files.log, log_lines):
                print(f"         | {line}", file=stream)
    print(f"{len(commands)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=stream)
    return counts


# ------------------------------------------------------------------------------------------------------------
# launchers

def to_launch(out: str, commands: Sequence[str]) -> List[str]:
    """The commands to start now: not running or queued, and not finished (unless they ask for ``--force``)."""
    chosen, skipped = [], {"done": 0, "running": 0, "pending": 0}
    prefetch_queue(out, commands)
    for command in commands:
        state, detail = run_state(out, command)
        forced = "--force" in shlex.split(command)
        if state == "running" or (state == "pending" and detail) or (state == "done" and not forced):
            skipped["pending" if state == "pending" else state] += 1
        else:
            chosen.append(command)
    if any(skipped.values()):
        print(f"skipping {skipped['done']} finished, {skipped['running']} running and {skipped['pending']} queued "
              f"run(s)")
    return chosen


def report(index: int, total: int, command: str, code: int, seconds: float, out: str) -> bool:
    word = "ok" if code == 0 else "BUSY (another process trains it)" if code == LOCKED_EXIT else "FAILED"
    print(f"[{index}/{total}] {word} in {seconds:.0f} s: {command}", flush=True)
    if code not in (0, LOCKED_EXIT):
        log = RunFiles(out, command).log
        print("\n".join(tail(log, 5)) + f"\n(log: {log})", file=sys.stderr, flush=True)
    return code in (0, LOCKED_EXIT)


def command_class():
    """``RunCommand`` from the importable module (not ``__main__``), so that jobs import it by name."""
    from experiments.orchestration.sweep import RunCommand as importable
    return importable


def launch_sequential(out: str, commands: Sequence[str]) -> int:
    failed = 0
    for index, command in enumerate(commands, 1):
        started = time.time()
        code = RunCommand(command, out).run()
        failed += not report(index, len(commands), command, code, time.time() - started, out)
    return failed


def visible_gpus(option: Optional[str]) -> List[int]:
    """GPU ids for ``--launcher local``: ``--gpus``, else ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``."""
    text = option if option is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is not None:
        return [] if text.strip() in ("", "none") else [int(g) for g in text.split(",")]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return list(range(sum(line.startswith("GPU ") for line in listing.splitlines())))


def launch_local(out: str, commands: Sequence[str], jobs: int, gpus: List[int], timeout_min: int,
                 max_requeues: int, poll: float = 0.5) -> int:
    """At most ``jobs`` commands at once through submitit's local executor, each with one GPU of ``gpus``
    (its own while there are enough) or none."""
    executor = submitit.LocalExecutor(folder=os.path.join(out, "logs", "submitit"), max_num_timeout=max_requeues)
    executor.update_parameters(timeout_min=timeout_min, signal_delay_s=120)
    if gpus and jobs > len(gpus):
        print(f"warning: {jobs} jobs share {len(gpus)} GPU(s)", file=sys.stderr)
    running: List[Tuple[object, str, float, Optional[int]]] = []
    queue = list(commands)
    gpu_use = {g: 0 for g in gpus}
    try:
        return _local_loop(out, commands, jobs, gpus, executor, running, queue, gpu_use, poll)
    except KeyboardInterrupt:  # the jobs would outlive this process: stop them; a relaunch resumes them
        for job, command, _, _ in running:
            job.cancel(check=False)
        print(f"\ninterrupted: stopped {len(running)} running job(s); launch again to resume them", file=sys.stderr)
        return len(running) + len(queue)


def _local_loop(out, commands, jobs, gpus, executor, running, queue, gpu_use, poll) -> int:
    done, failed = 0, 0
    while queue or running:
        while queue and len(running) < jobs:
            command = queue.pop(0)
            gpu = min(gpu_use, key=gpu_use.get) if gpus else None
            if gpu is not None:
                gpu_use[gpu] += 1
                executor.update_parameters(gpus_per_node=1, visible_gpus=[gpu])
            else:
                executor.update_parameters(gpus_per_node=0)
            running.append((executor.submit(command_class()(command, out)), command, time.time(), gpu))
        time.sleep(poll)
        for entry in [e for e in running if e[0].done()]:
            job, command, started, gpu = entry
            running.remove(entry)
            if gpu is not None:
                gpu_use[gpu] -= 1
            done += 1
            attempts = read_json(RunFiles(out, command).record).get("attempts", [])
            code = attempts[-1].get("exit_code", -1) if attempts else -1
            failed += not report(done, len(commands), command, code, time.time() - started, out)
    return failed


def parse_time(text: str) -> int:
    """A SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a SLURM time such as 24:00:00 or 1-12:00:00, got {text!r}")
    parts = [int(p) for p in match.group(2).split(":")]
    if match.group(1) is not None:
        hours, minutes, seconds = (parts + [0, 0])[:3]
        total = int(match.group(1)) * 1440 + hours * 60 + minutes + (seconds > 0)
    elif len(parts) == 3:
        total = parts[0] * 60 + parts[1] + (parts[2] > 0)
    else:
        total = parts[0] + (len(parts) == 2 and parts[1] > 0)
    if total < 1:
        raise argparse.ArgumentTypeError(f"the time limit must be at least a minute, got {text!r}")
    return total


def launch_slurm(out: str, commands: Sequence[str], args: argparse.Namespace) -> List[str]:
    """Submit one job array for ``commands``; return the job ids (``<array>_<task>``)."""
    try:
        executor = submitit.SlurmExecutor(folder=os.path.join(out, "logs", "submitit", "%j"),
                                          max_num_timeout=args.max_requeues)
    except RuntimeError as error:
        raise SystemExit(f"error: --launcher slurm needs SLURM's commands (srun, sbatch) on PATH: run it on the "
                         f"cluster's login node ({error})") from None
    parameters = dict(job_name=args.job_name, time=args.time, gpus_per_node=args.gpus_per_run,
                      cpus_per_task=args.cpus_per_run, array_parallelism=args.max_parallel, signal_delay_s=120,
                      stderr_to_stdout=True, setup=[f"cd {shlex.quote(ROOT)}",
                                                    f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"])
    for name in ("partition", "account", "qos", "mem"):
        if getattr(args, name):
            parameters[name] = getattr(args, name)
    executor.update_parameters(**parameters)
    jobs = executor.submit_array([command_class()(command, out) for command in commands])
    submitted = now()
    lines = []
    for job, command in zip(jobs, commands):
        write_json(RunFiles(out, command).submitted, {"launcher": "slurm", "job_id": job.job_id, "submitted": submitted})
        lines.append(f"{job.job_id}\t{command}")
    array = jobs[0].job_id.split("_")[0]
    with open(os.path.join(out, "logs", f"slurm-{array}.tsv"), "w") as f:  # an append-only log of submissions
        f.write("\n".join(lines) + "\n")
    print(f"submitted {len(jobs)} run(s) as SLURM job array {array} (at most {args.max_parallel} at once); task → "
          f"command in {os.path.join(out, 'logs', f'slurm-{array}.tsv')}; follow with --status")
    return [job.job_id for job in jobs]


def make_tables_and_figures(out: str, include_unfinished: bool = False) -> int:
    from experiments.reporting import figures, tables
    flags = ["--results", out] + (["--include-unfinished"] if include_unfinished else [])
    return tables.main(flags) or figures.main(flags)


def read_commands(source: str) -> List[str]:
    text = sys.stdin.read() if source == "-" else open(source).read()
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    seen = set()
    for command in commands:
        name = run_name(command)
        if name in seen:
            raise SystemExit(f"error: the run list names one run twice: {command}")
        seen.add(name)
    return commands


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def sweep_parser() -> argparse.ArgumentParser:
    """The sweep's command line (``./run_all.sh`` offers its launching options with the same help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="-", help="file with one command line per run ('-': standard input)")
    parser.add_argument("--out", default="results", help="results root of the runs (logs go to OUT/logs)")
    parser.add_argument("--launcher", default="sequential", choices=["sequential", "local", "slurm"])
    parser.add_argument("--status", action="store_true", help="show done / running / pending / failed and stop")
    parser.add_argument("--tables", action="store_true", help="write tables and figures from the finished runs")
    parser.add_argument("--include-unfinished", action="store_true", help="with --tables: runs in progress too")
    local = parser.add_argument_group("--launcher local")
    local.add_argument("--jobs", type=positive_int, default=1, help="runs at once")
    local.add_argument("--gpus", default=None,
                       help="GPU ids to spread the runs over, e.g. 0,1,2,3, or 'none' (default: CUDA_VISIBLE_DEVICES, "
                            "else every GPU nvidia-smi lists)")
    slurm = parser.add_argument_group("--launcher slurm")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--gpus-per-run", type=int, default=1)
    slurm.add_argument("--cpus-per-run", type=positive_int, default=None)
    slurm.add_argument("--mem", default=None, help="memory per run, e.g. 32G")
    slurm.add_argument("--time", type=parse_time, default=parse_time("24:00:00"),
                       help="time limit per job (HH:MM:SS or D-HH:MM:SS); a run needing longer is requeued and "
                            "resumes")
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--qos", default=None)
    slurm.add_argument("--max-parallel", type=positive_int, default=32, help="array tasks running at once")
    slurm.add_argument("--max-requeues", type=positive_int, default=20,
                       help="requeues after reaching the time limit (preemptions do not count)")
    slurm.add_argument("--job-name", default="auxinash")
    return parser


def main(argv=None, commands: Optional[Sequence[str]] = None) -> int:
    """The sweep's command line; ``commands`` (the run list, from ``experiments/orchestration/run_all.py``) replaces
    ``--runs``."""
    parser = sweep_parser()
    args = parser.parse_args(argv)
    if args.gpus_per_run < 0:
        parser.error(f"argument --gpus-per-run: must be ≥ 0, got {args.gpus_per_run}")
    if args.tables:
        return make_tables_and_figures(args.out, args.include_unfinished)
    if commands is None and args.runs == "-" and sys.stdin.isatty():
        parser.error("give the run list: --runs FILE (one command line per run), or pipe it in "
                     "(./run_all.sh --dry-run | python experiments/sweep.py --runs - ...)")
    commands = list(commands) if commands is not None else read_commands(args.runs)
    if args.status:
        return 1 if status(args.out, commands)["failed"] else 0
    if not commands:
        print("no runs to launch", file=sys.stderr)
        return 1
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    chosen = to_launch(args.out, commands)
    if not chosen:
        print("nothing to launch: every run is finished, running or queued")
        return 0
    print(f"{len(chosen)} run(s) to launch ({args.launcher}; logs in {os.path.join(args.out, 'logs')})", flush=True)
    if args.launcher == "slurm":
        launch_slurm(args.out, chosen, args)
        return 0
    if args.launcher == "local":
        failed = launch_local(args.out, chosen, args.jobs, visible_gpus(args.gpus), args.time, args.max_requeues)
    else:
        failed = launch_sequential(args.out, chosen)
    print(f"{len(chosen)} run(s) launched, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
