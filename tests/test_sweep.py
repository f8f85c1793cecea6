"""experiments/sweep.py: the run list through submitit's local executor, preemption and resume, the SLURM
submission (stand-in sbatch / squeue / sacct / scancel on PATH, as submitit's own tests mock SLURM), the lock."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from data import synthetic
from experiments import train_nyuv2
from experiments.orchestration import sweep
from tests.conftest import ROOT

SWEEP = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py")]
TINY = "--width 0.0625 --batch-size 1 --workers 0 --meta-every 1 --log-level WARNING"


@pytest.fixture(scope="module")
def nyuv2_root(tmp_path_factory):
    return synthetic.write_nyuv2(str(tmp_path_factory.mktemp("data") / "nyuv2"), n_train=2, n_test=2, shape=(32, 64))


def commands(root, out, methods=("stl", "equal"), epochs=1):
    main = {"stl": " --main-task seg", "auxinash": " --main-task seg"}
    return [f"{sys.executable} experiments/train_nyuv2.py --data-root {root} --epochs {epochs} {TINY} --method {m}"
            f"{main.get(m, '')} --seed 0 --out {out} --resume" for m in methods]


def run_sweep(runs, out, *flags, env=None, check=None):
    path = os.path.join(str(out), "runs.txt")
    os.makedirs(str(out), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(runs) + "\n")
    result = subprocess.run([*SWEEP, "--runs", path, "--out", str(out), *flags], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def metrics(out, method, main="main-all"):
    path = os.path.join(str(out), "nyuv2", method, main, "seed0", "metrics.csv")
    return pd.read_csv(path).drop(columns="seconds")


def test_local_executor_sweep_matches_sequential_and_is_idempotent(nyuv2_root, tmp_path):
    local, sequential = tmp_path / "local", tmp_path / "sequential"
    result = run_sweep(commands(nyuv2_root, local), local, "--launcher", "local", "--jobs", "2", check=0)
    assert "[2/2] ok" in result.stdout
    run_sweep(commands(nyuv2_root, sequential), sequential, check=0)
    for method, main in (("stl", "main-seg"), ("equal", "main-all")):
        # exact: both sweeps run each command in a process of its own with OMP_NUM_THREADS=1
        pd.testing.assert_frame_equal(metrics(local, method, main), metrics(sequential, method, main),
                                      check_exact=True)
        assert json.load(open(local / "nyuv2" / method / main / "seed0" / "status.json"))["finished"]
    # submitit ran each command as a job; each attempt is recorded with the run's folder
    name = sweep.run_name(commands(nyuv2_root, local)[0])
    assert os.listdir(local / "logs" / "submitit")
    assert open(local / "logs" / f"{name}.rundirs").read().strip().endswith(os.path.join("stl", "main-seg", "seed0"))
    stamp = os.path.getmtime(local / "nyuv2" / "stl" / "main-seg" / "seed0" / "metrics.csv")
    again = run_sweep(commands(nyuv2_root, local), local, "--launcher", "local", "--jobs", "2", check=0)
    assert "nothing to launch" in again.stdout
    assert os.path.getmtime(local / "nyuv2" / "stl" / "main-seg" / "seed0" / "metrics.csv") == stamp
    status = run_sweep(commands(nyuv2_root, local), local, "--status", check=0).stdout
    assert status.count("done ") == 2 and "2 runs: 2 done, 0 running, 0 pending, 0 failed" in status
    assert "nyuv2/stl/main-seg/seed0" in status and f"{name}.log" in status


def test_a_preempted_run_resumes_to_the_same_metrics(nyuv2_root, tmp_path):
    out, straight = tmp_path / "sweep", tmp_path / "straight"
    runs = commands(nyuv2_root, out, methods=("auxinash",), epochs=4)
    path = os.path.join(str(out), "runs.txt")
    os.makedirs(str(out))
    open(path, "w").write(runs[0] + "\n")
    launcher = subprocess.Popen([*SWEEP, "--runs", path, "--out", str(out), "--launcher", "local"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    run_dir = out / "nyuv2" / "auxinash" / "main-seg" / "seed0"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first epoch, then SIGTERM the training process (as SLURM would)
        if (run_dir / "checkpoint.pt").exists() and (run_dir / "lock").exists():
            holder = open(run_dir / "lock").read()
            if holder:
                os.kill(json.loads(holder)["pid"], signal.SIGTERM)
                break
        time.sleep(0.05)
    output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 1 and "FAILED" in output, output
    assert not (run_dir / "status.json").exists()
    status = run_sweep(runs, out, "--status", check=1).stdout
    assert "failed " in status and "exit status -15" in status
    run_sweep(runs, out, "--launcher", "local", check=0)  # relaunched: resumes from the last checkpoint
    log = open(out / "logs" / f"{sweep.run_name(runs[0])}.log").read()
    assert log.count("=== ") == 4  # two attempts, each with a start and an end line
    train_nyuv2.main(sweep.script_tokens(commands(nyuv2_root, straight, methods=("auxinash",), epochs=4)[0])[1:])
    # not exact: the sweep's process runs with one thread, this one with OMP_NUM_THREADS (1 or 2), and AuxiNash's
    # Newton solve turns the other summation order into a difference within its stopping rule (residual 1e-8):
    # measured 2.3e-8 relative after 4 epochs with 2 threads (identical with 1), so pandas' default rtol 1e-5 (here
    # and in the next test)
    pd.testing.assert_frame_equal(metrics(out, "auxinash", "main-seg"), metrics(straight, "auxinash", "main-seg"))


def test_a_job_signalled_before_its_time_limit_is_requeued_and_resumes(nyuv2_root, tmp_path):
    """The real requeue path: USR2 to the job (what SLURM sends before the time limit, --signal) makes submitit
    call RunCommand.checkpoint, which stops the run; the job is requeued with --resume and finishes."""
    out, straight = tmp_path / "sweep", tmp_path / "straight"
    runs = commands(nyuv2_root, out, methods=("auxinash",), epochs=4)
    os.makedirs(str(out))
    open(out / "runs.txt", "w").write(runs[0] + "\n")
    launcher = subprocess.Popen([*SWEEP, "--runs", str(out / "runs.txt"), "--out", str(out), "--launcher", "local"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    record = out / "logs" / f"{sweep.run_name(runs[0])}.json"
    checkpoint = out / "nyuv2" / "auxinash" / "main-seg" / "seed0" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoint.exists() and record.exists()):
        time.sleep(0.05)
    os.kill(json.load(open(record))["attempts"][0]["pid"], signal.SIGUSR2)  # the job's process
    output = launcher.communicate(timeout=180)[0]
    assert launcher.returncode == 0 and "[1/1] ok" in output, output
    attempts = json.load(open(record))["attempts"]
    assert len(attempts) == 2 and attempts[0]["stopped"] == "SystemExit" and attempts[1]["exit_code"] == 0
    train_nyuv2.main(sweep.script_tokens(commands(nyuv2_root, straight, methods=("auxinash",), epochs=4)[0])[1:])
    pd.testing.assert_frame_equal(metrics(out, "auxinash", "main-seg"), metrics(straight, "auxinash", "main-seg"))


def test_checkpoint_stops_the_command_and_requeues_it_with_resume(tmp_path):
    command = f"{sys.executable} -c 'import time; time.sleep(60)' --force"
    job = sweep.RunCommand(command, str(tmp_path))
    sweep._CHILDREN[command] = process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        delayed = job.checkpoint()
    finally:
        sweep._CHILDREN.pop(command, None)
    assert process.poll() == -signal.SIGTERM
    assert delayed.function.command == f"{sys.executable} -c 'import time; time.sleep(60)'"
    assert sweep.resume_command("python experiments/train_nyuv2.py --seed 0 --force") == \
        "python experiments/train_nyuv2.py --seed 0 --resume"


STANDIN = """#!/bin/sh
echo "{name} $*" >> "$STANDIN_RECORD"
{extra}
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """Stand-in SLURM commands on PATH: each records its arguments; sbatch keeps the submission file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    extras = {"sbatch": 'for last; do :; done\ncp "$last" "$(dirname "$STANDIN_RECORD")/submission.sh"\n'
                        'echo "Submitted batch job 4242"',
              "squeue": 'for i in $(seq 0 9); do echo "4242_$i PENDING"; done', "sacct": "", "scancel": "", "srun": ""}
    for name, extra in extras.items():
        (bin_dir / name).write_text(STANDIN.format(name=name, extra=extra))
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STANDIN_RECORD": str(tmp_path / "record.txt")}


def test_slurm_submission(tmp_path, fake_slurm):
    out = tmp_path / "out"
    runs = subprocess.run(["bash", "run_all.sh", "--dry-run", "--benchmarks", "nyuv2", "--methods", "stl equal",
                           "--seeds", "0", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    runs = [line.strip() for line in runs]
    assert len(runs) == 4
    result = run_sweep(runs, out, "--launcher", "slurm", "--partition", "gpu", "--gpus-per-run", "1", "--time",
                       "24:00:00", "--account", "A", "--qos", "Q", "--max-parallel", "2", env=fake_slurm, check=0)
    assert "submitted 4 run(s) as SLURM job array 4242 (at most 2 at once)" in result.stdout
    record = open(fake_slurm["STANDIN_RECORD"]).read().splitlines()
    assert [line.split()[0] for line in record] == ["sbatch"]
    folder = os.path.join(str(out), "logs", "submitit")
    text = open(tmp_path / "submission.sh").read().replace(folder, "FOLDER").replace(sys.executable, "PYTHON")
    assert text == f"""#!/bin/bash

# Parameters
#SBATCH --account=A
#SBATCH --array=0-3%2
#SBATCH --gpus-per-node=1
#SBATCH --job-name=auxinash
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=FOLDER/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=Q
#SBATCH --signal=USR2@120
#SBATCH --time=1440
#SBATCH --wckey=submitit

# setup
cd {ROOT}
export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output FOLDER/%A_%a/%A_%a_%t_log.out PYTHON -u -m submitit.core._submit FOLDER/%j
"""
    # each array task runs exactly its line of the dry run, through the checkpointable RunCommand
    for index, command in enumerate(runs):
        with open(os.path.join(folder, f"4242_{index}", f"4242_{index}_submitted.pkl"), "rb") as f:
            delayed = pickle.load(f)
        assert type(delayed.function).__name__ == "RunCommand" and delayed.function.command == command
    assert open(out / "logs" / "slurm-4242.tsv").read().splitlines()[1] == f"4242_1\t{runs[1]}"
    # queued runs are pending in the status view and not submitted twice
    status = run_sweep(runs, out, "--status", env=fake_slurm, check=0).stdout
    assert "4 runs: 0 done, 0 running, 4 pending, 0 failed" in status and "queued as SLURM job 4242_3" in status
    again = run_sweep(runs, out, "--launcher", "slurm", env=fake_slurm, check=0)
    assert "nothing to launch" in again.stdout
    calls = open(fake_slurm["STANDIN_RECORD"]).read().splitlines()
    assert [line.split()[0] for line in calls].count("sbatch") == 1
    assert "squeue -h -r -j 4242 -o %i %T" in calls and len(calls) == 3  # one squeue per view, not one per run


def test_slurm_launcher_without_slurm_says_so(tmp_path):
    result = run_sweep(commands("x", tmp_path)[:1], tmp_path, "--launcher", "slurm",
                       env={"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"})
    assert result.returncode != 0 and "needs SLURM's commands" in result.stderr


def test_a_run_in_progress_is_not_started_again(nyuv2_root, tmp_path):
    runs = commands(nyuv2_root, tmp_path, methods=("stl",))
    run_dir = os.path.join(str(tmp_path), "nyuv2", "stl", "main-seg", "seed0")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from experiments.storage.results_io import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", run_dir],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        name = sweep.run_name(runs[0])
        os.makedirs(tmp_path / "logs", exist_ok=True)
        open(tmp_path / "logs" / f"{name}.rundirs", "w").write(run_dir + "\n")
        status = run_sweep(runs, tmp_path, "--status", check=0).stdout
        assert "running " in status and f"process {holder.pid}" in status
        result = run_sweep(runs, tmp_path, "--launcher", "local", check=0)
        assert "nothing to launch" in result.stdout and "1 running" in result.stdout
        # a launch that does not know the run yet starts it, and the lock stops it at once
        os.remove(tmp_path / "logs" / f"{name}.rundirs")
        result = run_sweep(runs, tmp_path, check=0)
        assert "BUSY" in result.stdout and sorted(os.listdir(run_dir)) == ["lock"]
    finally:
        holder.kill()
        holder.wait()


def test_failed_runs_show_their_last_log_lines(tmp_path):
    bad = f"{sys.executable} -c 'import sys; print(\"something went wrong\"); sys.exit(4)'"
    result = run_sweep([bad], tmp_path)
    assert result.returncode == 1 and "FAILED" in result.stdout and "something went wrong" in result.stderr
    status = run_sweep([bad], tmp_path, "--status", check=1).stdout
    assert "failed " in status and "exit status 4" in status and "| something went wrong" in status


def test_run_names_are_stable_and_position_free():
    a = "python experiments/train_nyuv2.py --data-root /a --method stl --main-task seg --seed 0 --out r --resume"
    b = "/usr/bin/python3.11 experiments/train_nyuv2.py --data-root /b --method stl --main-task seg --seed 0 --out s"
    assert sweep.run_name(a) == sweep.run_name(b)
    assert sweep.run_name(a).startswith("train_nyuv2_method-stl_main-task-seg_seed-0-")
    assert sweep.run_name(a) != sweep.run_name(a.replace("--seed 0", "--seed 1"))
    assert sweep.parse_time("24:00:00") == 1440 and sweep.parse_time("1-12:00:00") == 2160
    assert sweep.parse_time("90") == 90 and sweep.parse_time("0:30:30") == 31


def test_a_job_requeued_by_slurm_continues_instead_of_starting_over(tmp_path, monkeypatch):
    """SLURM requeues a preempted job with its first submission: a --force in it must not start the run over."""
    command = f"{sys.executable} -c 'import sys; print(sys.argv[1:])' --force"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    for _ in range(2):
        assert sweep.RunCommand(command, str(tmp_path)).run() == 0
    attempts = json.load(open(tmp_path / "logs" / f"{sweep.run_name(command)}.json"))["attempts"]
    assert [a["slurm_job"] for a in attempts] == ["77", "77"]
    assert attempts[0]["command"] == command and "--force" not in attempts[1]["command"]
    log = open(tmp_path / "logs" / f"{sweep.run_name(command)}.log").read()
    assert "['--force']" in log and "[]" in log
