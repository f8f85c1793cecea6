"""Read Figure 2 at the paper's protocol against AuxiNash's front (results/reference/multimnist_paper/README.md):
AuxiNash and LS side by side per p₁ = w₁, Nash-MTL as mean ± std (range), and where each LS / Nash-MTL point lies
against AuxiNash's 11 points (seed 0), and so does each AuxiNash point of a further seed: the AuxiNash points that
dominate it or that it dominates, and its task-2 accuracy minus the front's at the same task-1 accuracy (linear
interpolation between AuxiNash's points; blank outside their task-1 range); for AuxiNash's seed 1, the change of
left − right per p₁ from seed 0 and whether it still rises with p₁. Reads the table that
`experiments/figures_multimnist.py` wrote; writes front.md beside it.

    python results/reference/multimnist_paper/summarise.py results/reference/multimnist_paper
"""
import os
import sys

import numpy as np
import pandas as pd

root = sys.argv[1]
runs = pd.read_csv(os.path.join(root, "tables", "multimnist.csv"))
first = runs.seed == 0  # the sweep's AuxiNash and LS points; AuxiNash's further seeds are read against their front
auxinash = runs[(runs.family == "auxinash") & first].set_index("preference").sort_index()
further = runs[(runs.family == "auxinash") & ~first]
ls = runs[(runs.family == "equal") & first].set_index("preference")
nash = runs[runs.family == "nashmtl"]


def signed(x):
    return f"{x:+.2f}".replace("-", "−")


def cells(row):
    return f"{row.test_left:.2f} | {row.test_right:.2f} | {signed(row.test_left - row.test_right)}"


lines = ["| p₁ = w₁ | AuxiNash task 1 | AuxiNash task 2 | AuxiNash left − right | LS task 1 | LS task 2 | "
         "LS left − right |", "|---" * 7 + "|"]
for p, row in auxinash.iterrows():
    lines.append(f"| {p:g} | {cells(row)} | " + (cells(ls.loc[p]) if p in ls.index else "– | – | –") + " |")
diff = nash.test_left - nash.test_right
lines.append(f"| Nash-MTL, seeds {nash.seed.min()}–{nash.seed.max()}: mean ± std (range) | "
             + " | ".join(f"{nash[c].mean():.2f} ± {nash[c].std():.2f} ({nash[c].min():.2f} – {nash[c].max():.2f})"
                          for c in ("test_left", "test_right"))
             + f" | {signed(diff.mean())} ({signed(diff.min())} – {signed(diff.max())}) | | | |")

x, y = auxinash.test_left.to_numpy(), auxinash.test_right.to_numpy()
order = np.argsort(x, kind="stable")
lines += ["", "| method | p₁ / w₁ / seed | task 1 | task 2 | dominated by AuxiNash p₁ | dominates AuxiNash p₁ | "
          "task 2 − front |", "|---" * 7 + "|"]
for label, points, key in (("LS", ls.reset_index(), "preference"), ("Nash-MTL", nash, "seed"),
                           ("AuxiNash, seed 1+", further, "preference")):
    for _, r in points.iterrows():
        above = [f"{p:g}" for p, a in auxinash.iterrows() if a.test_left >= r.test_left and a.test_right >= r.test_right]
        below = [f"{p:g}" for p, a in auxinash.iterrows() if a.test_left <= r.test_left and a.test_right <= r.test_right]
        gap = signed(r.test_right - np.interp(r.test_left, x[order], y[order])) if x.min() <= r.test_left <= x.max() else ""
        lines.append(f"| {label} | {r[key]:g} | {r.test_left:.2f} | {r.test_right:.2f} | {', '.join(above)} | "
                     f"{', '.join(below)} | {gap} |")
if len(further):  # AuxiNash's second seed: the change of left − right per p₁, and the order of p₁ within that seed
    lines += ["", "| p₁ | left − right, seed 0 | left − right, seed 1 | seed 1 − seed 0 |", "|---" * 4 + "|"]
    again = further[further.seed == 1].set_index("preference").sort_index()  # one row per p₁ even with seed 2+
    for p, r in again.iterrows():
        before, after = auxinash.loc[p].test_left - auxinash.loc[p].test_right, r.test_left - r.test_right
        lines.append(f"| {p:g} | {signed(before)} | {signed(after)} | {signed(after - before)} |")
    step = (again.test_left - again.test_right).diff().dropna()
    lines += ["", f"Seed 1 alone, over its {len(again)} p₁: left − right rises at {int((step > 0).sum())} of "
                  f"{len(step)} steps from one p₁ to the next (smallest step {signed(step.min())})."]
text = "\n".join(lines) + "\n"
open(os.path.join(root, "front.md"), "w").write(text)
print(text)
