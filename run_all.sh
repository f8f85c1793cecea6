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
# Options:
#   --benchmarks "nyuv2 cityscapes cifar10_ssl multimnist speech_commands toy"   which benchmarks (default: all six)
#   --methods "stl equal pcgrad cagrad nashmtl gcs olaux auxilearn auxinash"
#   --seeds "0 1 2"                   seeds (default: 0 1 2; --quick: 0)
#   --ablations                       add the ablation runs (fixed p, learning rate of p, held-out aux set)
#   --nyuv2-root DIR --cityscapes-root DIR --cifar10-root DIR --mnist-root DIR
#                                     (or NYUV2_ROOT, CITYSCAPES_ROOT, CIFAR10_ROOT, MNIST_ROOT; MULTIMNIST_PRESET=cpu
#                                     for the CPU preset of Multi-MNIST)
#   --speech-commands-root DIR        (or SPEECH_COMMANDS_ROOT) the extracted Speech Commands v0.02 archive
#   --out DIR                         results root (default: results); logs in DIR/logs, named by run
#   --device DEV                      torch device passed to every run (default: the scripts' choice)
#   --force                           train every run again from scratch (old run folders are moved aside)
#   --dry-run                         print the runs and stop
#   --launcher sequential|local|slurm how to run the list (default: sequential, one after another)
#   --jobs N                          local: runs at once (default 1)
#   --gpus 0,1,...|none               local: the GPUs to spread runs over (default: every visible GPU)
#   --partition P --gpus-per-run N --cpus-per-run N --mem M --time T --account A --qos Q --max-parallel N
#                                     slurm: the job array's settings (time per job; longer runs requeue and resume)
#   --status                          where every run of the list stands; exit status 1 if any failed
#   --tables                          only write tables and figures (finished runs; --include-unfinished for all)
# A benchmark whose data is missing is reported and skipped. Launching again skips finished and running runs and
# resumes interrupted ones (every run gets --resume); see experiments/sweep.py.
# The plan itself (grids, quick settings, ablations) is Python: experiments/plan.py; this file only calls it.
set -euo pipefail
cd "$(dirname "$0")"
exec "${PYTHON:-python}" -m experiments.plan "$@"
