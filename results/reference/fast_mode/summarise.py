"""Summarise the fast-mode accuracy runs (results/reference/fast_mode/README.md): one row per run, then the
mean and standard deviation over seeds per mode and the difference to the exact mode.

    python results/reference/fast_mode/summarise.py /tmp/i24_exp/runs/multimnist results/reference/fast_mode
"""
import glob
import os
import sys

import pandas as pd

root, out = sys.argv[1], sys.argv[2]
rows = []
paths = sorted(glob.glob(os.path.join(root, "auxinash_*", "main-left", "seed*", "metrics.csv")))
paths += sorted(glob.glob(os.path.join(root, "stl", "main-left", "seed*", "metrics.csv")))  # references
paths += sorted(glob.glob(os.path.join(root, "equal", "main-all", "seed*", "metrics.csv")))
for path in paths:
    if not os.path.exists(os.path.join(os.path.dirname(path), "status.json")):
        continue  # unfinished
    folder = path.split(os.sep)[-4]
    mode = folder[len("auxinash_"):] if folder.startswith("auxinash_") else folder
    frame = pd.read_csv(path)
    train, val, test = (frame[frame.split == s].reset_index(drop=True) for s in ("train", "val", "test"))
    best = int(val.left_acc.values.argmax())  # the main task's best validation epoch
    rows.append({"mode": mode, "seed": int(path.split(os.sep)[-2][4:]), "epochs": len(train),
                 "test_left_acc_at_best_val": test.left_acc[best], "test_left_acc_final": test.left_acc.iloc[-1],
                 "p_left_final": train.p_left.iloc[-1] if "p_left" in train else float("nan"),
                 "alpha_left_final": train.weight_left.iloc[-1],
                 "alpha_right_final": train.weight_right.iloc[-1], "seconds_per_epoch": train.seconds.mean()})
runs = pd.DataFrame(rows).sort_values(["mode", "seed"])
runs.to_csv(os.path.join(out, "runs.csv"), index=False)
columns = ["test_left_acc_at_best_val", "test_left_acc_final", "p_left_final", "seconds_per_epoch"]
summary = runs.groupby("mode")[columns].agg(["mean", "std", "count"])
print(runs.to_string(index=False))
print(summary.round(3).to_string())
exact = runs[runs["mode"] == "exact"].set_index("seed")
lines = ["| mode | seeds | main-task test acc. at best val (mean ± sd) | final-epoch test acc. | final p_left | "
         "paired difference to exact (acc. at best val), mean ± sd |", "|---|---|---|---|---|---|"]
order = ["exact", "fast", "fast_reuse5", "fast_neumann0", "stl", "equal"]
for mode, group in sorted(runs.groupby("mode"), key=lambda item: order.index(item[0]) if item[0] in order else 99):
    g = group.set_index("seed")
    diff = (g.test_left_acc_at_best_val - exact.test_left_acc_at_best_val).dropna()
    acc, final = g.test_left_acc_at_best_val, g.test_left_acc_final
    p_cell = f"{g.p_left_final.mean():.3f} ± {g.p_left_final.std():.3f}" if g.p_left_final.notna().all() else "–"
    diff_cell = "–" if mode == "exact" else f"{diff.mean():+.2f} ± {diff.std():.2f}"
    lines.append(f"| {mode} | {len(g)} | {acc.mean():.2f} ± {acc.std():.2f} | {final.mean():.2f} ± {final.std():.2f} | "
                 f"{p_cell} | {diff_cell} |")
table = "\n".join(lines)
open(os.path.join(out, "table.md"), "w").write(table + "\n")
print(table)
