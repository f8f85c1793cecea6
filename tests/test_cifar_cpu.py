"""Semi-supervised CIFAR-10 at CPU scale (issue 33): the plan's preset and its report (experiments/reporting/cifar_cpu.py)
on a tiny hand-made results tree whose expected values are written out by hand below."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from experiments.orchestration import plan, run_all
from experiments.reporting import cifar_cpu
from methods import paper_methods

TASK_SHORT = {"classification": "cls", "rotation": "rot", "exemplar": "exemplar"}


def protocol_config(number):
    """The config.json keys a run of the plan's protocol ``number`` has (as train_cifar_ssl.py writes them)."""
    pairs = dict(zip(plan.CIFAR_CPU_PROTOCOLS[number][::2], plan.CIFAR_CPU_PROTOCOLS[number][1::2]))
    return {key: (float if key == "width" else int)(pairs["--" + key.replace("_", "-")])
            for key in ("n_labeled", "width", "labeled_batch", "unlabeled_batch", "iterations", "eval_every")}


def write_run(results, method, tag, seed, tasks, test_acc, p=None, weights=None, protocol=1):
    """A finished run folder as the loop writes one: two evaluation rounds, the second best on validation."""
    settings = protocol_config(protocol) if isinstance(protocol, int) else protocol
    n = settings["n_labeled"]
    folder = os.path.join(results, f"cifar10_ssl_{n // 1000}k" if n % 1000 == 0 else f"cifar10_ssl_{n}",
                          f"{method}_{tag}",
                          "main-all" if method in ("equal", "pcgrad", "cagrad", "nashmtl") else "main-cls",
                          f"seed{seed}")
    os.makedirs(folder)
    rows = []
    short = [TASK_SHORT[t] for t in tasks]
    for r in range(2):
        train = {"round": r, "step": 250 * (r + 1), "split": "train", "seconds": 1800.0}
        train.update({f"weight_{t}": (weights or {}).get(t, 1.0) for t in short})
        if p is not None:
            train.update({f"p_{t}": 1.0 if r == 0 else p[t] for t in short})
        rows += [train, {"round": r, "step": 250 * (r + 1), "split": "val", "cls_acc": 40.0 + r},
                 {"round": r, "step": 250 * (r + 1), "split": "test", "cls_acc": test_acc - 10 * (1 - r)}]
    pd.DataFrame(rows).to_csv(os.path.join(folder, "metrics.csv"), index=False)
    config = {"method": method, "seed": seed, "tasks": tasks, "tag": tag, "identity_digest": "x",
              "device_name": "cpu", "synthetic_data": False, **settings}
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    json.dump({"finished": True, "identity_digest": "x"}, open(os.path.join(folder, "status.json"), "w"))


def test_report_pairs_seeds_and_gives_the_calibration_verdict(tmp_path):
    results = str(tmp_path)
    both = ["classification", "rotation", "exemplar"]
    for seed, base in ((0, 50.0), (1, 52.0), (2, 51.0)):
        write_run(results, "stl", "cpu", seed, ["classification"], base)
        write_run(results, "equal", "cpu", seed, both, base + 3.0 + 0.5 * seed)  # Δ STL = 3.0, 3.5, 4.0
        write_run(results, "equal", "cpu-rotation", seed, ["classification", "rotation"], base + 2.0)
        write_run(results, "equal", "cpu-exemplar", seed, ["classification", "exemplar"], base - 1.0)
    write_run(results, "auxinash", "cpu", 0, both, 54.0, p={"cls": 1.2, "rot": 1.1, "exemplar": 0.7})
    # a paper-protocol run (no tag) in the same benchmark folder is not the preset's
    write_run(results, "stl", "", 0, ["classification"], 99.0)
    runs = cifar_cpu.collect_runs(results)
    assert len(runs) == 13
    assert runs[(runs.configuration == "STL") & (runs.seed == 0)].test.tolist() == [50.0]  # round 1 is best on val
    table = cifar_cpu.summary(runs).set_index("configuration")
    # exact (==): the accuracies are multiples of ½, so every difference, mean (of 3: 10.5 / 3) and the std
    # (√0.25) is exact in binary floating point, in any summation order
    ls = table.loc["LS"]
    assert ls.vs_stl == 3.5 and ls.vs_stl_std == 0.5 and ls.vs_stl_seeds == 3
    assert table.loc["LS + Rotation only"].vs_stl == 2.0
    assert table.loc["LS + Exemplar-MT only"].vs_ls == -4.5  # −1 − 3.5
    assert table.loc["AuxiNash"].vs_stl == 4.0 and table.loc["AuxiNash"].vs_stl_seeds == 1
    # means: LS 54.5, AuxiNash 54, Rotation only 53, STL 51, Exemplar-MT only 50
    assert [table.loc[c]["rank"] for c in ("LS", "AuxiNash", "LS + Rotation only", "STL", "LS + Exemplar-MT only")] \
        == [1, 2, 3, 4, 5]
    verdict = cifar_cpu.calibration(table.reset_index())
    assert "+3.50" in verdict and "kept" in verdict and "NOT" not in verdict  # 3.5 > 2 × 0.5
    written = cifar_cpu.make_all(results)
    text = open(os.path.join(results, "tables", "cifar10_ssl_cpu.md")).read()
    assert "## Protocol 1: `--n-labeled 1000 " in text and text.count("## ") == 1
    assert "| AuxiNash | 1 (0) | 54.00 ± – | +4.00" in text and "87.01 ± 0.52" in text  # the paper's column beside
    assert "(3 of 9 now)" in text  # STL, LS, AuxiNash of the paper's nine
    assert os.path.join(results, "figures", "cifar10_ssl_cpu_weights.png") in written


def test_calibration_verdict_rejects_a_noisy_gain():
    table = pd.DataFrame([{"configuration": "LS", "vs_stl": 1.0, "vs_stl_std": 0.6, "vs_stl_seeds": 3}])
    assert "NOT kept" in cifar_cpu.calibration(table)  # 1.0 < 2 × 0.6


def test_preset_is_tagged_not_default_and_covers_the_papers_methods():
    assert "cifar10_ssl_cpu" not in plan.DEFAULT_BENCHMARKS
    args = run_all.parser().parse_args(["--benchmarks", "cifar10_ssl_cpu", "--seeds", "0 1 2"])
    commands = run_all.build_commands(args, list_only=True)[0]
    assert len(commands) == 3 * (len(paper_methods()) + len(plan.CIFAR_CPU_SINGLES))  # --methods all adds the rest
    assert all(" --tag cpu" in line for line in commands)  # never a paper-protocol run folder
    last = plan.CIFAR_CPU_PROTOCOLS[max(plan.CIFAR_CPU_PROTOCOLS)]
    assert all(" ".join(last) in line for line in commands)  # the last protocol by default
    for seed in "012":
        seed_lines = [line for line in commands if line.endswith(f"--seed {seed} --out results --resume")]
        labels = {line.split("--n-labeled ")[1].split()[0] for line in seed_lines}
        assert labels == {last[last.index("--n-labeled") + 1]}  # one size; the subset itself is drawn from the seed
    assert np.unique([line.split("--tag ")[1].split()[0] for line in commands]).tolist() == [
        "cpu", "cpu-exemplar", "cpu-rotation"]


def test_an_earlier_protocol_is_chosen_by_its_number_and_a_wrong_one_is_refused(monkeypatch):
    args = run_all.parser().parse_args(["--benchmarks", "cifar10_ssl_cpu", "--seeds", "0", "--methods", "stl"])
    monkeypatch.setenv("CIFAR_CPU_PROTOCOL", "1")
    assert [line.split("--n-labeled ")[1].split()[0] for line in run_all.build_commands(args, list_only=True)[0]] \
        == ["1000"]
    monkeypatch.setenv("CIFAR_CPU_PROTOCOL", "9")
    with pytest.raises(ValueError, match="CIFAR_CPU_PROTOCOL='9'.*leave it unset"):
        run_all.build_commands(args, list_only=True)


def test_protocols_are_reported_apart_never_paired_across(tmp_path):
    """The same seeds under protocols 1 and 2 (and a run with other settings): each protocol gets its own section,
    Δ and verdict; pairing seeds across protocols is refused."""
    results = str(tmp_path)
    both = ["classification", "rotation", "exemplar"]
    for seed in (0, 1, 2):
        write_run(results, "stl", "cpu", seed, ["classification"], 50.0, protocol=1)
        write_run(results, "equal", "cpu", seed, both, 51.0 + 2 * seed, protocol=1)  # Δ 1, 3, 5: 3 ± 2 → not kept
        write_run(results, "stl", "cpu", seed, ["classification"], 40.0, protocol=2)
        write_run(results, "equal", "cpu", seed, both, 45.0 + 0.5 * seed, protocol=2)  # Δ 5, 5.5, 6: 5.5 ± 0.5
    other = dict(protocol_config(2), n_labeled=100, iterations=4)  # as a --quick run
    write_run(results, "stl", "cpu", 0, ["classification"], 30.0, protocol=other)
    runs = cifar_cpu.collect_runs(results)
    assert sorted(runs.protocol.unique())[:2] == ["other settings (n_labeled 100, width 0.5, labeled_batch 32, "
                                                  "unlabeled_batch 32, iterations 4, eval_every 250)", "protocol 1"]
    with pytest.raises(ValueError, match="one protocol"):
        cifar_cpu.paired(runs, "LS", "STL")
    # exact (==): halves and integers, means of 3 and stds exact in binary floating point
    first = cifar_cpu.summary(runs[runs.protocol == "protocol 1"]).set_index("configuration").loc["LS"]
    second = cifar_cpu.summary(runs[runs.protocol == "protocol 2"]).set_index("configuration").loc["LS"]
    assert (first.vs_stl, first.vs_stl_std, second.vs_stl, second.vs_stl_std) == (3.0, 2.0, 5.5, 0.5)
    cifar_cpu.make_all(results)
    text = open(os.path.join(results, "tables", "cifar10_ssl_cpu.md")).read()
    sections = text.split("\n## ")[1:]
    assert [s.split(":")[0].split(" (")[0] for s in sections] == ["Protocol 2", "Protocol 1", "Runs with other settings"]
    assert "NOT kept" not in sections[0] and "+5.50" in sections[0]  # 5.5 > 2 × 0.5
    assert "NOT kept" in sections[1] and "+3.00" in sections[1]  # 3 < 2 × 2
    assert "| STL | 1 (0) | 30.00" in sections[2]


def test_question_and_learned_weights_against_each_auxiliary_alone(tmp_path):
    """AuxiNash against STL, LS and Nash-MTL paired by seed, and the learned weights beside each auxiliary's effect
    alone; every expected value below is worked out by hand from the runs written here."""
    results = str(tmp_path)
    both = ["classification", "rotation", "exemplar"]
    p = {0: {"cls": 1.2, "rot": 1.1, "exemplar": 0.7},   # mean over the 2 blocks (p = 1 in the first): 1.05 > 0.85
         1: {"cls": 1.0, "rot": 0.6, "exemplar": 1.4},   # 0.8 < 1.2
         2: {"cls": 1.0, "rot": 1.0, "exemplar": 1.0}}   # a tie
    for seed, base in ((0, 50.0), (1, 52.0), (2, 51.0)):
        write_run(results, "stl", "cpu", seed, ["classification"], base)
        write_run(results, "equal", "cpu", seed, both, base + 3.0 + 0.5 * seed)            # 53, 55.5, 55
        write_run(results, "nashmtl", "cpu", seed, both, base + 4.0)                        # 54, 56, 55
        write_run(results, "auxinash", "cpu", seed, both, base + 5.0 + 0.5 * seed, p=p[seed])  # 55, 57.5, 57
        write_run(results, "equal", "cpu-rotation", seed, ["classification", "rotation"], base + 2.0)  # alone +2
        write_run(results, "equal", "cpu-exemplar", seed, ["classification", "exemplar"], base - 1.0)  # alone −1
    # OL-AUX seed 0 only: weights / main = 0.25 (Rotation), 0.5 (Exemplar-MT): the opposite order of the effects
    write_run(results, "olaux", "cpu", 0, both, 50.0, weights={"cls": 2.0, "rot": 0.5, "exemplar": 1.0})
    runs = cifar_cpu.collect_runs(results)
    lines = "\n".join(cifar_cpu.question(runs))
    # AuxiNash − STL: 5, 5.5, 6 (5.5 ± 0.5 > 1.0); − LS: 2, 2, 2 (std 0); − Nash-MTL: 1, 1.5, 2 (1.5 ± 0.5 > 1.0)
    assert "AuxiNash − STL = +5.50 ± 0.50 points over 3 seed(s) (+5.00, +5.50, +6.00), above in 3 of 3: beyond" in lines
    assert "AuxiNash − LS = +2.00 ± 0.00 points over 3 seed(s)" in lines
    # the paired t-test beside it, by hand: with 3 seeds (2 degrees of freedom) Student's t has the closed-form CDF
    # 1/2 + t / (2 √(t² + 2)), so the two-sided p is 1 − t / √(t² + 2), t = mean / (std / √3)
    def p_two_sided(t):
        return 1.0 - t / math.sqrt(t * t + 2.0)
    t_stl, t_nash = 5.5 / (0.5 / math.sqrt(3)), 1.5 / (0.5 / math.sqrt(3))  # 11√3 and 3√3
    assert f"above in 3 of 3: beyond seed noise (|mean| > 2 × std = 1.00; paired t-test p = {p_two_sided(t_stl):.3f})." \
        in lines and f"{p_two_sided(t_stl):.3f}" == "0.003"
    assert "AuxiNash − Nash-MTL = +1.50 ± 0.50 points over 3 seed(s) (+1.00, +1.50, +2.00), above in 3 of 3: beyond " \
           f"seed noise (|mean| > 2 × std = 1.00; paired t-test p = {p_two_sided(t_nash):.3f})" in lines
    assert f"{p_two_sided(t_nash):.3f}" == "0.035"
    assert "2 × std = 0.00)" in lines  # − LS: no spread, t undefined, so no t-test words
    # every other method too: OL-AUX has seed 0 only (AuxiNash 55 − OL-AUX 50)
    assert lines.endswith("\n- AuxiNash − OL-AUX = +5.00 ± – points over 1 seed(s) (+5.00), above in 1 of 1: fewer than "
                          "3 seeds, no verdict yet.")
    table = cifar_cpu.weights_against_effects(results, runs).set_index(["method", "seed"])
    assert table.loc[("auxinash", 0)].weight_rot == pytest.approx(1.05, abs=1e-12)  # (1.0 + 1.1) / 2, rounding only
    assert table.loc[("auxinash", 1)].weight_exemplar == pytest.approx(1.2, abs=1e-12)
    assert table.loc[("auxinash", 0)].alone_rot == 2.0 and table.loc[("auxinash", 0)].alone_exemplar == -1.0
    assert [table.loc[("auxinash", s)].weight_order for s in (0, 1, 2)] == ["Rotation first", "Exemplar-MT first",
                                                                             "tie"]
    assert table.loc[("olaux", 0)].weight_rot == 0.25 and table.loc[("olaux", 0)].agree == False  # noqa: E712
    text = "\n".join(cifar_cpu.weights_section(results, runs))
    assert text.index("| AuxiNash | 2 |") < text.index("| OL-AUX | 0 |")  # AuxiNash first, then the plan's order
    # Rotation alone − Exemplar-MT alone: +3 in every seed (std 0): a measured order
    assert "Rotation − Exemplar-MT paired by seed: +3.00 ± 0.00 points over 3 seed(s) (+3.00, +3.00, +3.00): beyond " \
        "seed noise" in text
    assert "- AuxiNash: the weights order the auxiliaries as their effects alone in 1 of 3 seed(s) with both known." \
        in text
    assert "- OL-AUX: the weights order the auxiliaries as their effects alone in 0 of 1 seed(s)" in text
    # without the single-auxiliary runs the order of the effects is unknown, and said so
    alone = runs[~runs.configuration.str.endswith(" only")]
    assert "in 0 of 0 seed(s) with both known (3 more without the single-auxiliary runs yet)" in "\n".join(
        cifar_cpu.weights_section(results, alone))
    assert "no seed with both single-auxiliary runs" in cifar_cpu.effects_apart(alone)
    # Exemplar-MT alone −1, +1.5, +4 (seeds 0, 1, 2), Rotation +2: differences 3, 0.5, −2: mean 0.5, std 2.5
    noisy = runs.copy()
    noisy.loc[(noisy.configuration == "LS + Exemplar-MT only") & (noisy.seed == 1), "test"] = 52.0 + 1.5
    noisy.loc[(noisy.configuration == "LS + Exemplar-MT only") & (noisy.seed == 2), "test"] = 51.0 + 4.0
    assert cifar_cpu.effects_apart(noisy) == (
        "The effects alone, Rotation − Exemplar-MT paired by seed: +0.50 ± 2.50 points over 3 seed(s) (+3.00, +0.50, "
        f"-2.00): within seed noise (|mean| ≤ 2 × std = 5.00; paired t-test p = {p_two_sided(0.5 / (2.5 / math.sqrt(3))):.3f}"
        "): the two help alike as far as 3 seeds tell, and the orders below are not a measured ranking.")
    assert f"{p_two_sided(0.5 / (2.5 / math.sqrt(3))):.3f}" == "0.762"
    # one question line per baseline, and no AuxiNash at all
    assert cifar_cpu.question(runs[runs.method != "auxinash"]) == [
        "AuxiNash against STL, LS and Nash-MTL: no finished AuxiNash run yet."]
    written = cifar_cpu.make_all(results)
    assert os.path.join(results, "figures", "cifar10_ssl_cpu_weights.png") in written
    assert "AuxiNash − Nash-MTL = +1.50" in open(os.path.join(results, "tables", "cifar10_ssl_cpu.md")).read()


def test_spearman_waits_for_the_nine_and_says_when_seeds_are_unequal():
    labels = ["STL", "LS", "PCGrad", "CAGrad", "Nash-MTL", "GCS", "OL-AUX", "AuxiLearn", "AuxiNash"]
    # a hand-made paper column whose order is the labels' order: ranks 1..9
    paper = {label: (80.0 + i, 0.1) for i, label in enumerate(labels)}
    same = pd.DataFrame({"configuration": labels, "mean": [40.0 + i for i in range(9)], "seeds": [3] * 9})
    best_first = " > ".join(labels[::-1])
    assert cifar_cpu.spearman_line(same, paper).endswith(  # identical orders: ρ = 1 exactly
        f": +1.00. Ours, best first: {best_first}; the paper's: {best_first}.")
    # per seed, by hand: seed 0 has the paper's order (ρ = 1); seed 1 puts STL (41.5) above LS (41.0), one adjacent
    # swap: Σd² = 2, ρ = 1 − 6·2 / (9·(81 − 1)) = 1 − 12/720 = 0.9833; the means (STL 40.75 < LS 41.0) keep the order
    runs = pd.DataFrame([{"configuration": c, "seed": seed, "test": 40.0 + i + (1.5 if (seed, c) == (1, "STL") else 0)}
                         for seed in (0, 1) for i, c in enumerate(labels)])
    means = runs.groupby("configuration", sort=False).test.mean()
    two = pd.DataFrame({"configuration": labels, "mean": means[labels].to_numpy(), "seeds": [2] * 9})
    assert cifar_cpu.spearman_line(two, paper, runs) == (
        "Spearman correlation of our ranking of the paper's nine methods with the paper's (5K labels): +1.00; each "
        "seed's own ranking against the paper's: seed 0 +1.00, seed 1 +0.98 (the spread that seed noise alone "
        f"gives). Ours, best first: {best_first}; the paper's: {best_first}.")
    reversed_ = same.assign(mean=same["mean"][::-1].to_numpy(), seeds=[3] * 7 + [1, 1])
    line = cifar_cpu.spearman_line(reversed_, paper)
    assert ": -1.00, provisional" in line and "(AuxiLearn, AuxiNash with fewer than 3)" in line
    assert "(8 of 9 now)" in cifar_cpu.spearman_line(same.iloc[1:], paper)


def test_ranking_figure_waits_for_the_nine(tmp_path):
    from methods import METHODS
    names = list(paper_methods())
    runs = pd.DataFrame([{"protocol": "protocol 2", "configuration": METHODS[m].label, "method": m, "seed": seed,
                          "test": 40.0 + i + seed, "hours": 0.1} for i, m in enumerate(names) for seed in (0, 1)])
    assert cifar_cpu.paper_column()  # the paper's column ships with the repository (results/paper/cifar10_ssl.csv)
    results = str(tmp_path)
    assert cifar_cpu.draw_ranking(results, runs[runs.method != names[-1]]) == []  # eight of nine: nothing drawn
    assert cifar_cpu.draw_ranking(results, runs) == [os.path.join(results, "figures", "cifar10_ssl_cpu_ranking.png")]
    assert os.path.getsize(os.path.join(results, "figures", "cifar10_ssl_cpu_ranking.png")) > 0
