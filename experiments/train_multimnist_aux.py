"""Multi-MNIST in auxiliary mode (issue 23, part 2): main task ``left`` (the top-left digit), auxiliaries chosen by
name (``training/benchmarks/multimnist_aux.py``): ``right`` (the bottom-right digit), ``noise`` (random labels
fixed per training pair; ``--noise-tasks N`` makes N of them, ``noise1`` … ``noiseN``), ``rotation`` (predict the
pair image's rotation, 0/90/180/270°, as the CIFAR-10 SSL benchmark).

    python experiments/train_multimnist_aux.py --data-root ROOT --method stl --auxiliaries none
    python experiments/train_multimnist_aux.py --data-root ROOT --method equal --auxiliaries noise --noise-tasks 3
    python experiments/train_multimnist_aux.py --data-root ROOT --method auxinash \
        --auxiliaries right noise rotation --noise-tasks 3 --seed 1

Presets: ``few`` (the default) is the few-examples regime of the issue: 1,500 training pairs of which 500 are held
out for validation (1,000 trained on), 5,000 test pairs, Adam 1e-3, batch 64, 60 epochs. ``tiny`` is the tests'.
Any of --n-train/--n-val/--n-test/--epochs/--batch-size overrides the preset. Results go to
``<out>/multimnist_aux/<method>_<auxiliary set>/main-<left|all>/seed<k>/`` (the auxiliary set named as
``right-noise3-rotation``; ``--tag`` replaces it). Model selection: the main task's test accuracy at the epoch of
its best validation accuracy.

OL-AUX: its step size β is the ``--olaux-lr`` flag (declared default: ARML's 0.05). This script writes that default
into the flags when ``--olaux-lr`` is not given, so that its runs' identity states β explicitly (the reference runs
under results/reference/multimnist_aux were made so, while the other scripts still passed the optimiser's ``--lr``
into β; see README, "Choices and known differences").
"""
from __future__ import annotations

import logging


from experiments.training.benchmarks.multimnist_aux import AUXILIARIES, MultiMnistAuxBenchmark, auxiliary_set_label
from methods.olaux import OLAUXSettings
from experiments.training.multimnist_flags import add_pair_flags, pairs_from_flags
from experiments.training.cli import base_parser, positive_int, run
from methods import METHODS, canonical_name

log = logging.getLogger("auxinash")

PRESETS = {
    # the few-examples regime of issue 23: 1,000 training + 500 validation pairs, batch 64, 60 epochs (Adam 1e-3)
    "few": dict(n_train=1_500, n_val=500, n_test=5_000, epochs=60, batch_size=64),
    # the tests' end-to-end runs
    "tiny": dict(n_train=300, n_val=100, n_test=100, epochs=2, batch_size=64),
}
OLAUX_BETA = OLAUXSettings.lr  # ARML's OL-AUX step size, as declared


def build(args) -> MultiMnistAuxBenchmark:
    method = canonical_name(args.method)
    auxiliaries = [] if args.auxiliaries == ["none"] else list(args.auxiliaries)
    if "none" in auxiliaries:
        raise SystemExit("error: --auxiliaries none stands alone")
    if args.main_task not in (None, "left"):
        raise SystemExit("error: the main task of multimnist_aux is always 'left'")
    if not auxiliaries and method != "stl":
        raise SystemExit(f"error: --method {args.method} needs at least one auxiliary (--auxiliaries none is for STL)")
    if (args.representation or getattr(args, "fast", None)) and "rotation" in auxiliaries:
        flag = "--representation" if args.representation else "--fast"
        raise SystemExit(f"error: {flag} needs every task loss computed from the one shared representation, but the "
                         f"rotation task has its own trunk pass on the rotated image (its loss would not reach the "
                         f"shared trunk at all); drop rotation from --auxiliaries or {flag}")
    if method == "olaux" and args.olaux_lr is None:
        args.olaux_lr = OLAUX_BETA
        log.info("OL-AUX: --olaux-lr set to ARML's %g (not the optimiser's --lr)", OLAUX_BETA)
    args.tag = args.tag or auxiliary_set_label(auxiliaries, args.noise_tasks)
    data, preset = pairs_from_flags(args, PRESETS)
    return MultiMnistAuxBenchmark(data, epochs=preset["epochs"], batch_size=preset["batch_size"], device=args.device,
                                  seed=args.seed, auxiliaries=auxiliaries, noise_tasks=args.noise_tasks,
                                  width=args.width, preset=args.preset,
                                  auxiliary_forward=getattr(METHODS[method], "needs_auxiliary_losses", True))


def main(argv=None) -> str:
    parser = base_parser(__doc__, lr=1e-3)
    group = parser.add_argument_group("data, auxiliaries and schedule")
    add_pair_flags(group, PRESETS, "few",
                   "few: 1,000 + 500 validation training pairs, 60 epochs of batch 64; tiny: tests")
    group.add_argument("--auxiliaries", nargs="+", default=list(AUXILIARIES),
                       choices=list(AUXILIARIES) + ["none"],
                       help="auxiliary tasks beside the main task 'left' ('none': the main task alone, for STL)")
    group.add_argument("--noise-tasks", type=positive_int, default=1,
                       help="how many random-label tasks 'noise' stands for (noise1, noise2, ... when > 1)")
    return run(parser, build, lambda args: None, argv)


if __name__ == "__main__":
    main()
