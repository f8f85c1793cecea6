"""The speed benchmark runs on tiny shapes and writes its CSV and table (format only: no timed assertions)."""
import os

import pandas as pd

from experiments import benchmark_speed


def test_benchmark_speed_output_format(tmp_path, capsys):
    frame = benchmark_speed.main(["--device", "cpu", "--width", "0.0625", "--image-size", "32", "64",
                                  "--batch-sizes", "2", "--cifar-batch", "2", "--steps", "1", "--warmup", "0",
                                  "--meta-steps", "1", "--methods", "equal", "auxinash", "auxilearn",
                                  "--out", str(tmp_path)])
    written = pd.read_csv(os.path.join(tmp_path, "cpu.csv"))
    assert len(written) == len(frame)
    items = set(written["item"])
    assert {"floor: forward + K gradients + Adam", "step: auxinash", "meta-update: auxinash",
            "amortised step (meta every 25): auxinash", "K=2", "K=10"} <= items
    solver = written[written.workload == "Nash solver"]
    assert (solver["residual"] <= 1e-8).all() and (solver["speedup"] > 0).all()
    floor = written[written["item"] == "floor: forward + K gradients + Adam"]
    assert (floor["ratio_to_floor"] == 1).all()
    printed = capsys.readouterr().out
    assert "× K-gradient floor" in printed and "| K | ours (ms) | CVXPY (ms)" in printed
