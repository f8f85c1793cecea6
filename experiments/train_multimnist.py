"""Multi-MNIST with fixed task preferences (the paper's Sec. 6.2, Figure 2): task 1 = the top-left digit
("left"), task 2 = the bottom-right one ("right"), both main tasks; a shared LeNet variant with one head each.

    python experiments/train_multimnist.py --method auxinash --p 0.25          # AuxiNash, fixed p = (0.25, 0.75)
    python experiments/train_multimnist.py --method nashmtl --seed 3           # Nash-MTL, p = (1, 1)
    python experiments/train_multimnist.py --method ls --weights 0.25          # Σ w_k L_k, w = (0.25, 0.75)
    python experiments/train_multimnist.py --preset cpu ...                    # the small CPU preset

Presets: ``paper`` (the default) is the paper's protocol: 120K training pairs of which 12K are held out for
validation, 20K test pairs, Adam 1e-4, batch 256, 50 epochs. ``cpu`` is the reduced setting this repository
runs its reference sweep with on a 2-core CPU (see ``PRESETS``). Any of --n-train/--n-val/--n-test/--epochs/
--batch-size overrides its preset. Without MNIST's 60K training digits (``--source auto``) the pairs come from
the 10K test digits (8K for training and validation pairs, the other 2K for test pairs; the run's config.json
says so in ``data_note``).

``--p P1`` fixes AuxiNash's bargaining powers at (P1, 1 − P1) (not learned) and, without ``--tag``, files the
run under ``auxinash_p<P1>``; ``--weights W1`` does the same for linear scalarisation (``equal_w<W1>``).
Model selection: both tasks' test accuracy at the epoch of the best mean validation accuracy.
"""
from __future__ import annotations

import os


from data.multimnist import SOURCES, MultiMnist, PairSpec
from experiments.training.benchmarks import MultiMnistBenchmark
from experiments.training.cli import base_parser, non_negative_int, positive_int, run
from methods import canonical_name

PRESETS = {
    # the paper's protocol (Sec. 6.2)
    "paper": dict(n_train=120_000, n_val=12_000, n_test=20_000, epochs=50, batch_size=256),
    # the reference sweep on a shared 2-core CPU: 33 runs in under an hour, one at a time (see the README):
    # 27K training + 3K validation pairs, 5K test pairs, 9 epochs (954 steps of 256)
    "cpu": dict(n_train=30_000, n_val=3_000, n_test=5_000, epochs=9, batch_size=256),
    # the tests' end-to-end sweep
    "tiny": dict(n_train=300, n_val=100, n_test=100, epochs=2, batch_size=64),
}
P1_VALUES = (0.01, 0.1, 0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 0.8, 0.9, 0.99)  # the paper's Figure 2


def preference_tag(value: float, prefix: str) -> str:
    return f"{prefix}{value:g}"


def build(args) -> MultiMnistBenchmark:
    method = canonical_name(args.method)
    if args.weights is not None:
        if method != "equal":
            raise SystemExit("error: --weights is linear scalarisation's: use it with --method ls (or equal)")
        if len(args.weights) == 1:
            if not 0 <= args.weights[0] <= 1:
                raise SystemExit(f"error: --weights W1 takes W1 in [0, 1], got {args.weights[0]}")
            args.tag = args.tag or preference_tag(args.weights[0], "w")
            args.weights = [args.weights[0], 1 - args.weights[0]]
        elif len(args.weights) == 2 and min(args.weights) >= 0 and sum(args.weights) > 0:
            args.tag = args.tag or preference_tag(args.weights[0] / sum(args.weights), "w")
        else:
            raise SystemExit(f"error: --weights takes W1 or two non-negative weights, got {args.weights}")
    if args.p is not None:
        if method != "auxinash":
            raise SystemExit("error: --p sets AuxiNash's bargaining powers: use it with --method auxinash")
        if len(args.p) == 1:
            args.tag = args.tag or preference_tag(args.p[0], "p")
        elif len(args.p) == 2 and min(args.p) > 0:  # AuxiNash rescales p; the folder names p₁'s share
            args.tag = args.tag or preference_tag(args.p[0] / sum(args.p), "p")
    data, preset = build_pairs(args, PRESETS)
    return MultiMnistBenchmark(data, epochs=preset["epochs"], batch_size=preset["batch_size"], device=args.device,
                               seed=args.seed, width=args.width, preset=args.preset)


def build_pairs(args, presets):
    """The Multi-MNIST pairs of ``add_pair_flags``' flags, and the preset with the flags' overrides applied."""
    preset = dict(presets[args.preset])
    for key in preset:
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    spec = PairSpec(n_train=preset["n_train"], n_val=preset["n_val"], n_test=preset["n_test"], shift=args.shift,
                    seed=args.data_seed)
    data = MultiMnist(args.data_root, args.cache_root, spec, source=args.source, device=args.device,
                      seed=args.seed, download=args.download, meta_val_size=args.meta_val_size)
    return data, preset


def add_pair_flags(group, presets, default_preset: str, preset_help: str) -> None:
    """The Multi-MNIST data flags shared by this script and ``train_multimnist_aux.py``: MNIST root, pair cache,
    source, preset and its overrides, shift and the pairs' seed."""
    group.add_argument("--data-root", default=os.environ.get("MNIST_ROOT", "data_cache/mnist"),
                       help="folder holding MNIST/raw/*-idx?-ubyte[.gz] (torchvision's layout), raw/, or the files "
                            "themselves (env MNIST_ROOT)")
    group.add_argument("--cache-root", default=os.environ.get("MULTIMNIST_CACHE", "data_cache/multimnist"),
                       help="where the constructed pairs are cached (env MULTIMNIST_CACHE)")
    group.add_argument("--download", action="store_true", help="download MNIST with torchvision if absent")
    group.add_argument("--source", default="auto", choices=SOURCES,
                       help="standard: train pairs from the 60K training digits; test-digits: the offline variant "
                            "from the 10K test digits; auto: standard when the training digits are present")
    group.add_argument("--preset", default=default_preset, choices=sorted(presets), help=preset_help)
    group.add_argument("--n-train", type=positive_int, default=None, help="training pairs incl. validation (preset)")
    group.add_argument("--n-val", type=positive_int, default=None, help="validation pairs held out of them (preset)")
    group.add_argument("--n-test", type=positive_int, default=None, help="test pairs (preset)")
    group.add_argument("--epochs", type=positive_int, default=None, help="epochs (preset)")
    group.add_argument("--batch-size", type=positive_int, default=None, help="batch size (preset)")
    group.add_argument("--shift", type=non_negative_int, default=2, help="largest random shift of each digit, pixels")
    group.add_argument("--data-seed", type=non_negative_int, default=0,
                       help="seed of the pair construction (same for all runs)")


def main(argv=None) -> str:
    parser = base_parser(__doc__, lr=1e-4)
    group = parser.add_argument_group("data and schedule")
    add_pair_flags(group, PRESETS, "paper", "paper: 120K/20K pairs, 50 epochs; cpu: the reduced CPU sweep; tiny: tests")
    group.add_argument("--weights", type=float, nargs="+", default=None,
                       help="linear scalarisation: W1 for weights (W1, 1 − W1), or two weights")
    return run(parser, build, lambda args: None, argv)


if __name__ == "__main__":
    main()
