"""Summarise exact AuxiNash against --fast on the auxiliary-mode Multi-MNIST experiment (issue 23's setting;
results/reference/fast_mode/README.md): per run the main task's test accuracy at its best validation epoch and the
final bargaining powers, then mean ± std per mode and the paired difference to the exact mode.

    python results/reference/fast_mode/summarise_aux.py results/reference/fast_mode/aux results/reference/fast_mode
"""
import sys

import pandas as pd

from experiments.reporting.multimnist_aux import collect_runs

root, out = sys.argv[1], sys.argv[2]
runs = collect_runs(root)  # finished runs only
runs["mode"] = runs.variant.replace("", "exact")
p_columns = [c for c in runs.columns if c.startswith("final_p_") and runs[c].notna().any()]
runs = runs.sort_values(["mode", "seed"])
runs[["mode", "seed", "test", "best_round", *p_columns]].to_csv(f"{out}/runs_aux.csv", index=False)
exact = runs[runs["mode"] == "exact"].set_index("seed")
lines = ["| mode | seeds | main-task test acc. at best val (mean ± sd) | paired difference to exact | "
         + " | ".join(f"final {c[len('final_'):]}" for c in p_columns) + " |",
         "|---" * (4 + len(p_columns)) + "|"]
for mode, group in runs.groupby("mode", sort=False):
    group = group.set_index("seed")
    diff = (group.test - exact.test).dropna()
    paired = "–" if mode == "exact" else f"{diff.mean():+.2f} ± {diff.std(ddof=1):.2f}"
    cells = " | ".join(f"{group[c].mean():.3f} ± {group[c].std(ddof=1):.3f}" for c in p_columns)
    lines.append(f"| {mode} | {len(group)} | {group.test.mean():.2f} ± {group.test.std(ddof=1):.2f} | {paired} | {cells} |")
text = "\n".join(lines) + "\n"
open(f"{out}/table_aux.md", "w").write(text)
print(text)
