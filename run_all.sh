#!/usr/bin/env bash
# Reproduce the paper's tables: every benchmark x method x main task x seed, then the tables and figures.
#
#   ./run_all.sh                      # the paper's settings (GPU), data roots from flags or environment
#   ./run_all.sh --quick              # every run at tiny settings on synthetic layouts, CPU, ~10 minutes;
#                                     # Multi-MNIST: preset tiny on synthetic digits, p1 and w1 in 0.1 0.5 0.9,
#                                     # Nash-MTL seeds 0 1 2 (9 runs instead of 33); Speech Commands: 20 clips,
#                                     # keywords zero and five, 2 epochs (14 runs instead of 324)
#   ./run_all.sh --dry-run            # print the run list, one command line per run
#   ./run_all.sh --launcher local --jobs 4        # 4 runs at a time on this machine, one GPU each if present
#   ./run_all.sh --launcher slurm --partition gpu --gpus-per-run 1 --time 24:00:00 [--account A] [--qos Q] \
#                [--max-parallel 32]              # one SLURM job array (submitit); returns once submitted
#   ./run_all.sh --status             # done / running / pending / failed per run, with log paths
#   ./run_all.sh --tables             # tables and figures from whatever has finished
#
# Options: ./run_all.sh --help (from experiments/orchestration/run_all.py). --benchmarks defaults to the plan's default benchmarks (all but multimnist_aux),
# --methods to every method of the registry (methods.METHODS), --seeds to "0 1 2" (--quick: 0); data roots come
# from --<benchmark>-root flags or the environment (NYUV2_ROOT, CITYSCAPES_ROOT, CIFAR10_ROOT, MNIST_ROOT,
# SPEECH_COMMANDS_ROOT; MULTIMNIST_PRESET=cpu for Multi-MNIST's CPU preset; CIFAR_CPU_PROTOCOL=<k> for an earlier
# protocol of the cifar10_ssl_cpu preset, default its last).
# A benchmark whose data is missing is reported and skipped. Launching again skips finished and running runs and
# resumes interrupted ones (every run gets --resume); see experiments/orchestration/sweep.py.
# The plan itself (grids, quick settings, ablations) is Python: experiments/orchestration/plan.py; this file only calls its driver.
set -euo pipefail
cd "$(dirname "$0")"
exec "${PYTHON:-python}" -m experiments.orchestration.run_all "$@"
