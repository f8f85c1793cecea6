#!/usr/bin/env bash
# Reproduce the paper's tables: every benchmark x method x main task x seed, then the tables and figures.
#
#   ./run_all.sh                      # the paper's settings (GPU), data roots from flags or environment
#   ./run_all.sh --quick              # every run at tiny settings on synthetic layouts, CPU, ~10 minutes;
#                                     # Multi-MNIST: preset tiny on synthetic digits, p1 and w1 in 0.1 0.5 0.9,
#                                     # Nash-MTL seeds 0 1 2 (9 runs instead of 33)
#   ./run_all.sh --dry-run            # print the run list, one command line per run
#   ./run_all.sh --launcher local --jobs 4        # 4 runs at a time on this machine, one GPU each if present
#   ./run_all.sh --launcher slurm --partition gpu --gpus-per-run 1 --time 24:00:00 [--account A] [--qos Q] \
#                [--max-parallel 32]              # one SLURM job array (submitit); returns once submitted
#   ./run_all.sh --status             # done / running / pending / failed per run, with log paths
#   ./run_all.sh --tables             # tables and figures from whatever has finished
#
# Options:
#   --benchmarks "nyuv2 cityscapes cifar10_ssl multimnist toy"   which benchmarks (default: all five;
#                                     multimnist_aux, issue 23's auxiliary-mode Multi-MNIST, only when named)
#   --methods "stl equal pcgrad cagrad nashmtl gcs olaux auxilearn auxinash"
#   --seeds "0 1 2"                   seeds (default: 0 1 2; --quick: 0)
#   --ablations                       add the ablation runs (fixed p, learning rate of p, held-out aux set)
#   --nyuv2-root DIR --cityscapes-root DIR --cifar10-root DIR --mnist-root DIR
#                                     (or NYUV2_ROOT, CITYSCAPES_ROOT, CIFAR10_ROOT, MNIST_ROOT; MULTIMNIST_PRESET=cpu
#                                     for the CPU preset of Multi-MNIST)
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
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
BENCHMARKS="nyuv2 cityscapes cifar10_ssl multimnist toy"
METHODS="stl equal pcgrad cagrad nashmtl gcs olaux auxilearn auxinash"
MULTI_TASK=" equal pcgrad cagrad nashmtl "
SEEDS="" SEEDS_GIVEN=0
ABLATIONS=0 QUICK=0 DRY=0 FORCE="" STATUS=0 TABLES=0 INCLUDE_UNFINISHED=""
SWEEP=(--launcher sequential)
OUT=results
DEVICE=""
NYUV2_ROOT=${NYUV2_ROOT:-data_cache/nyuv2}
CITYSCAPES_ROOT=${CITYSCAPES_ROOT:-data_cache/cityscapes}
CIFAR10_ROOT=${CIFAR10_ROOT:-data_cache/cifar10}
MNIST_ROOT=${MNIST_ROOT:-data_cache/mnist}
while [ $# -gt 0 ]; do
  case "$1" in
    --benchmarks) BENCHMARKS="$2"; shift 2 ;;
    --methods) METHODS="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; SEEDS_GIVEN=1; shift 2 ;;
    --ablations) ABLATIONS=1; shift ;;
    --quick) QUICK=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --force) FORCE="--force"; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --device) DEVICE="--device $2"; shift 2 ;;
    --nyuv2-root) NYUV2_ROOT="$2"; shift 2 ;;
    --cityscapes-root) CITYSCAPES_ROOT="$2"; shift 2 ;;
    --cifar10-root) CIFAR10_ROOT="$2"; shift 2 ;;
    --mnist-root) MNIST_ROOT="$2"; shift 2 ;;
    --launcher|--jobs|--gpus|--partition|--gpus-per-run|--cpus-per-run|--mem|--time|--account|--qos|--max-parallel)
      [ $# -ge 2 ] || { echo "$1 needs a value (see --help)" >&2; exit 2; }
      SWEEP+=("$1" "$2"); shift 2 ;;
    --status) STATUS=1; shift ;;
    --tables) TABLES=1; shift ;;
    --include-unfinished) INCLUDE_UNFINISHED="--include-unfinished"; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$TABLES" = 1 ]; then
  exec $PYTHON experiments/sweep.py --tables --out "$OUT" $INCLUDE_UNFINISHED
fi
LIST_ONLY=$DRY  # --dry-run and --status list every run, whether its data is here or not
[ "$STATUS" = 1 ] && LIST_ONLY=1

if [ "$QUICK" = 1 ]; then
  SEEDS=${SEEDS:-0}
  SYNTHETIC="$OUT/.synthetic"
  if [ "$LIST_ONLY" = 0 ] && [ ! -e "$SYNTHETIC/mnist/SYNTHETIC" ]; then  # the MNIST marker is written last
    echo "quick mode: writing small synthetic datasets under $SYNTHETIC"
    $PYTHON -m data.synthetic --small "$SYNTHETIC"
  fi
  NYUV2_ROOT="$SYNTHETIC/nyuv2" CITYSCAPES_ROOT="$SYNTHETIC/cityscapes" CIFAR10_ROOT="$SYNTHETIC/cifar10"
  MNIST_ROOT="$SYNTHETIC/mnist"
  MULTIMNIST_SETTINGS="--cache-root $SYNTHETIC/multimnist_pairs"  # the pairs stay with the synthetic digits
  PREFERENCES="0.1 0.5 0.9" NASH_SEEDS="0 1 2"
  DENSE_SETTINGS="--epochs 2 --width 0.0625 --batch-size 2 --workers 0 --meta-every 2"
  CIFAR_SETTINGS="--iterations 4 --eval-every 2 --labeled-batch 8 --unlabeled-batch 8 --width 0.125 --val-size 100 --meta-every 2"
  CIFAR_LABELS="100"
  TOY_SETTINGS="--epochs 50"
else
  SEEDS=${SEEDS:-"0 1 2"}
  DENSE_SETTINGS="" CIFAR_SETTINGS="" TOY_SETTINGS="" CIFAR_LABELS="5000 10000" MULTIMNIST_SETTINGS=""
  PREFERENCES="0.01 0.1 0.2 0.25 0.4 0.5 0.6 0.75 0.8 0.9 0.99" NASH_SEEDS="0 1 2 3 4 5 6 7 8 9 10"  # Figure 2
fi

RUNS=()
SKIPPED=0
add() { RUNS+=("$PYTHON $* --out $OUT --resume $FORCE $DEVICE"); }
dense_tasks() {  # the tasks of a dense benchmark (the MTAN Cityscapes release has seg and depth only)
  if [ "$1" = cityscapes ] && [ -d "$2/train/depth" ]; then echo "seg depth"
  elif [ "$1" = cityscapes ]; then echo "seg part_seg disp"
  else echo "seg depth normal"; fi
}

for benchmark in $BENCHMARKS; do
  case "$benchmark" in
    nyuv2|cityscapes)
      root=$([ "$benchmark" = nyuv2 ] && echo "$NYUV2_ROOT" || echo "$CITYSCAPES_ROOT")
      if [ ! -d "$root/train" ] && [ "$LIST_ONLY" = 0 ]; then
        echo "SKIPPED $benchmark: no dataset at $root (see README, section Data)" >&2; SKIPPED=$((SKIPPED + 1)); continue
      fi
      tasks=$(dense_tasks "$benchmark" "$root")
      script="experiments/train_$benchmark.py --data-root $root $DENSE_SETTINGS"
      for seed in $SEEDS; do
        for method in $METHODS; do
          if [[ "$MULTI_TASK" == *" $method "* ]]; then add "$script --method $method --seed $seed"
          else for task in $tasks; do add "$script --method $method --main-task $task --seed $seed"; done; fi
        done
        if [ "$ABLATIONS" = 1 ]; then
          add "$script --method auxinash --main-task seg --meta-val-size 0.1 --tag aux-set --seed $seed"
          add "$script --method stl --main-task seg --meta-val-size 0.1 --tag partial --seed $seed"
          if [ "$benchmark" = nyuv2 ]; then
            for task in $tasks; do
              for p in 0.7 0.8 0.9; do add "$script --method auxinash --main-task $task --p $p --tag fixed-p$p --seed $seed"; done
              for lr in 1e-3 1e-2; do add "$script --method auxinash --main-task $task --meta-lr $lr --tag meta-lr$lr --seed $seed"; done
            done
          fi
        fi
      done ;;
    cifar10_ssl)
      if [ ! -d "$CIFAR10_ROOT/cifar-10-batches-py" ] && [ "$LIST_ONLY" = 0 ]; then
        echo "SKIPPED cifar10_ssl: no cifar-10-batches-py/ under $CIFAR10_ROOT (see README, section Data)" >&2
        SKIPPED=$((SKIPPED + 1)); continue
      fi
      for seed in $SEEDS; do for labels in $CIFAR_LABELS; do for method in $METHODS; do
        add "experiments/train_cifar_ssl.py --data-root $CIFAR10_ROOT $CIFAR_SETTINGS --n-labeled $labels --method $method --seed $seed"
      done; done; done ;;
    multimnist)  # Figure 2: AuxiNash over 11 fixed p1 and LS over 11 weights (first seed), Nash-MTL over 11 seeds
                 # (--quick: 3 of each, see the top)
      mnist_root=$MNIST_ROOT
      found=""
      for folder in "$mnist_root" "$mnist_root/raw" "$mnist_root/MNIST/raw"; do
        if compgen -G "$folder/t10k-images-idx3-ubyte*" >/dev/null; then found=1; fi
      done
      if [ -z "$found" ] && [ "$LIST_ONLY" = 0 ]; then
        echo "SKIPPED multimnist: no MNIST IDX files under $mnist_root (--mnist-root or MNIST_ROOT; see README, section Data)" >&2
        SKIPPED=$((SKIPPED + 1)); continue
      fi
      preset=${MULTIMNIST_PRESET:-$([ "$QUICK" = 1 ] && echo tiny || echo paper)}  # paper, cpu or tiny
      script="experiments/train_multimnist.py --data-root $mnist_root --preset $preset $MULTIMNIST_SETTINGS"
      first_seed=${SEEDS%% *}
      for method in $METHODS; do
        case "$method" in
          auxinash) for p in $PREFERENCES; do
                      add "$script --method auxinash --p $p --seed $first_seed"; done ;;
          nashmtl) for seed in $NASH_SEEDS; do add "$script --method nashmtl --seed $seed"; done ;;
          equal) for w in $PREFERENCES; do
                   add "$script --method ls --weights $w --seed $first_seed"; done ;;
        esac
      done ;;
    multimnist_aux)  # issue 23: main task left; STL, Equal with each auxiliary alone, every method with all of them
      mnist_root=$MNIST_ROOT
      found=""
      for folder in "$mnist_root" "$mnist_root/raw" "$mnist_root/MNIST/raw"; do
        if compgen -G "$folder/t10k-images-idx3-ubyte*" >/dev/null; then found=1; fi
      done
      if [ -z "$found" ] && [ "$LIST_ONLY" = 0 ]; then
        echo "SKIPPED multimnist_aux: no MNIST IDX files under $mnist_root (--mnist-root or MNIST_ROOT)" >&2
        SKIPPED=$((SKIPPED + 1)); continue
      fi
      script="experiments/train_multimnist_aux.py --data-root $mnist_root --preset $([ "$QUICK" = 1 ] && echo tiny || echo few) $MULTIMNIST_SETTINGS"
      all_aux="--auxiliaries right noise rotation --noise-tasks 3"
      for seed in $SEEDS; do
        for single in "right" "noise" "noise --noise-tasks 3" "rotation"; do
          [[ " $METHODS " == *" equal "* ]] && add "$script --method equal --auxiliaries $single --seed $seed"
        done
        for method in $METHODS; do
          case "$method" in
            stl) add "$script --method stl --auxiliaries none --seed $seed" ;;
            olaux) add "$script --method olaux $all_aux --olaux-lr 0.05 --seed $seed" ;;  # ARML's beta, not --lr
            *) add "$script --method $method $all_aux --seed $seed" ;;
          esac
        done
      done ;;
    toy)  # one invocation for every seed (its table is mean ± std over them); 5 seeds unless --seeds or --quick
      toy_seeds=$SEEDS
      if [ "$QUICK" = 0 ] && [ "$SEEDS_GIVEN" = 0 ]; then toy_seeds="0 1 2 3 4"; fi
      RUNS+=("$PYTHON experiments/train_toy.py $TOY_SETTINGS --methods $METHODS --seeds $toy_seeds --out $OUT $FORCE") ;;
    *) echo "unknown benchmark: $benchmark" >&2; exit 2 ;;
  esac
done

if [ "${#RUNS[@]}" = 0 ]; then
  echo "no runs: every requested benchmark was skipped ($SKIPPED); see the messages above" >&2; exit 1
fi
if [ "$DRY" = 1 ]; then printf '%s\n' "${RUNS[@]}"; exit 0; fi
if [ "$STATUS" = 1 ]; then
  printf '%s\n' "${RUNS[@]}" | $PYTHON experiments/sweep.py --status --out "$OUT" --runs -; exit $?
fi
echo "${#RUNS[@]} runs (logs in $OUT/logs)"
failed=0
printf '%s\n' "${RUNS[@]}" | $PYTHON experiments/sweep.py --out "$OUT" --runs - "${SWEEP[@]}" || failed=1
case " ${SWEEP[*]} " in
  *" slurm "*) echo "follow the runs with: ./run_all.sh --status (same flags); tables with: ./run_all.sh --tables"
               exit $failed ;;
esac
$PYTHON experiments/sweep.py --tables --out "$OUT" || true
echo "tables: $OUT/tables, figures: $OUT/figures$([ "$failed" = 0 ] || echo '; some runs FAILED (see above)')"
[ "$failed" = 0 ]
