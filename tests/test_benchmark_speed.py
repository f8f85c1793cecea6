"""The speed benchmark runs on tiny shapes and writes its CSV and table (format only: no timed assertions)."""
import os

import pandas as pd

from experiments import benchmark_speed

TINY = ["--device", "cpu", "--width", "0.0625", "--image-size", "32", "64", "--batch-sizes", "2", "--cifar-batch", "2"]


def test_quick_benchmark_covers_every_method_and_writes_its_table(tmp_path, capsys):
    frame = benchmark_speed.main(TINY + ["--quick", "--out", str(tmp_path)])
    assert not os.path.exists(tmp_path / "cpu.csv")  # the quick run keeps its own file
    written = pd.read_csv(os.path.join(tmp_path, "cpu_quick.csv"))
    assert len(written) == len(frame)
    for name in benchmark_speed.METHOD_NAMES:
        assert (written["item"] == f"step: {name}").sum() == 2  # both workloads
    items = set(written["item"])
    assert {"floor: forward + K gradients + Adam", "floor: forward + K gradients (one batched backward) + Adam",
            "meta-update: auxinash", "meta-update: auxilearn", "amortised step (meta every 25): auxinash",
            "K=2", "K=10", "meta-update: autolambda", "amortised step (meta every 1): autolambda"} <= items
    assert any(item.startswith("meta-update: auxinash (hvp=") for item in items)
    assert {"step: auxinash --fast", "step: nashmtl --fast", "step: auxinash --fast --update-weights-every 10",
            "amortised step (meta every 25): auxinash --fast", "meta-update: auxinash (mixed=double_backward)",
            "step reusing α (nashmtl, between solves)", "meta-update: auxinash (neumann_terms=0)",
            "amortised step (meta every 25): auxinash --fast --neumann-terms 0"} <= items
    steps = written[written["item"].str.startswith(("step", "amortised", "floor"))]
    assert (steps["ratio_to_ls"] > 0).all()
    equal = written[written["item"] == "floor: forward + 1 backward + Adam (equal)"]
    assert (equal["ratio_to_ls"] == 1).all()
    solver = written[written.workload == "Nash solver"]
    # solve_nash's stopping rule, relative residual ≤ 1e-8 on M / ‖M‖_F, recomputed on the raw M: + round-off
    # (the solver may stop right at the rule; see tests/test_nash_solver.py)
    assert (solver["residual"] <= 1e-8 + 1e-14).all() and (solver["speedup"] > 0).all()
    floor = written[written["item"] == "floor: forward + K gradients + Adam"]
    assert (floor["ratio_to_floor"] == 1).all()
    alternative = written[written["item"].str.contains(r"batched|hvp=", regex=True)]
    assert len(alternative) == 4 and (alternative["ratio_to_default"] > 0).all()
    assert set(written["hvp_mode"].dropna()) <= {"reverse", "forward"}
    printed = capsys.readouterr().out
    assert "× K-gradient floor" in printed and "| K | ours (ms) | CVXPY (ms)" in printed
    assert "expected duration on this machine now: full run" in printed and "quick=True" in printed


def test_methods_are_timed_past_their_warm_ups():
    """``Workload.prepare``: GradNorm knows L(0) after it (its first epoch, one backward of the plain sum, is
    behind it), and its learned weights are in the workload's optimiser."""
    work = benchmark_speed.Workload("cifar", benchmark_speed.torch.device("cpu"), 0.0625, 2, None, False)
    method = benchmark_speed.get_method("gradnorm", n_tasks=3)
    assert method.reused_weights() is not None  # in its warm-up epoch
    work.prepare(method)
    assert method.reused_weights() is None
    assert any(p is method.loss_scale for group in work.optimizer.param_groups for p in group["params"])
