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



from experiments.training.benchmarks import MultiMnistBenchmark
from experiments.training.cli import base_parser, run
from experiments.training.multimnist_flags import add_pair_flags, pairs_from_flags
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
    data, preset = pairs_from_flags(args, PRESETS)
    return MultiMnistBenchmark(data, epochs=preset["epochs"], batch_size=preset["batch_size"], device=args.device,
                               seed=args.seed, width=args.width, preset=args.preset)


def main(argv=None) -> str:
    parser = base_parser(__doc__, lr=1e-4)
    group = parser.add_argument_group("data and schedule")
    add_pair_flags(group, PRESETS, "paper", "paper: 120K/20K pairs, 50 epochs; cpu: the reduced CPU sweep; tiny: tests")
    group.add_argument("--weights", type=float, nargs="+", default=None,
                       help="linear scalarisation: W1 for weights (W1, 1 − W1), or two weights")
    return run(parser, build, lambda args: None, argv)


if __name__ == "__main__":
    main()
