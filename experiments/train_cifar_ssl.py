"""Semi-supervised CIFAR-10 (the ARML protocol): WRN-28-2, main task 10-class classification on 5K (or 10K)
labelled images, auxiliaries Rotation and Exemplar-MT on every training image: the paper's Table 4.

    python experiments/train_cifar_ssl.py --data-root ROOT --method auxinash --n-labeled 5000 --seed 0

Defaults are the paper's: Adam 5e-3, batches of 128 labelled + 128 unlabelled images, 50K iterations,
validation and test accuracy every 1,000 iterations; the table reports the test accuracy at the best
validation accuracy (early stopping).

Input pipeline and auxiliaries as ARML's SSL code (``--cifar-pipeline arml``, the default): GCN + ZCA inputs,
flip / 2-pixel reflect crop / noise 0.15 in every training forward pass, Exemplar-MT on raw pooled features with
ARML's student view and an EMA teacher whose decay warms up as min(1 − 1/(t+1), 0.95), ARML's WRN-28-2
(LeakyReLU 0.1); see ``data/cifar.py`` and ``experiments/training/benchmarks/cifar_ssl.py``. ``--cifar-pipeline legacy``
runs this repository's earlier pipeline (per-channel mean/std, 4-pixel zero-pad crop, one shared trunk pass, a
projection head, constant EMA decay, ReLU WRN). STL forwards the labelled images only.
"""
from __future__ import annotations

import os


from data import CifarSSL
from data.cifar import PIPELINES, TASKS
from experiments.training.benchmarks import CifarSSLBenchmark
from experiments.training.benchmarks.cifar_ssl import ROTATIONS
from experiments.training.cli import base_parser, run
from methods import METHODS, canonical_name


def build(args) -> CifarSSLBenchmark:
    if (args.representation or getattr(args, "fast", None)) and args.cifar_pipeline == "arml":
        flag = "--representation" if args.representation else "--fast"
        raise SystemExit(f"error: {flag} needs one shared representation of all tasks, but the ARML "
                         "pipeline runs a separate trunk pass per task; use --cifar-pipeline legacy with it")
    data = CifarSSL(args.data_root, n_labeled=args.n_labeled, val_size=args.val_size,
                    meta_val_size=args.meta_val_size, tasks=args.tasks, seed=args.seed, device=args.device,
                    download=args.download, pipeline=args.cifar_pipeline)
    # methods that never use the auxiliary losses (STL) declare it; the benchmark then skips their passes
    auxiliary_forward = getattr(METHODS[canonical_name(args.method)], "needs_auxiliary_losses", True)
    return CifarSSLBenchmark(data, iterations=args.iterations, eval_every=args.eval_every,
                             labeled_batch=args.labeled_batch, unlabeled_batch=args.unlabeled_batch,
                             device=args.device, seed=args.seed, width=args.width, data_root=args.data_root,
                             rotation=args.rotation, auxiliary_forward=auxiliary_forward)


def main(argv=None) -> str:
    parser = base_parser(__doc__, lr=5e-3)
    group = parser.add_argument_group("data and schedule")
    group.add_argument("--data-root", default=os.environ.get("CIFAR10_ROOT", "data_cache/cifar10"),
                       help="folder holding cifar-10-batches-py/ (env CIFAR10_ROOT)")
    group.add_argument("--download", action="store_true", help="download CIFAR-10 with torchvision if absent")
    group.add_argument("--n-labeled", type=int, default=5000, help="labelled training images (paper: 5000, 10000)")
    group.add_argument("--val-size", type=int, default=5000, help="validation images for early stopping")
    group.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                       help="tasks; the first is the main task")
    group.add_argument("--iterations", type=int, default=50_000)
    group.add_argument("--eval-every", type=int, default=1000, help="iterations between evaluations")
    group.add_argument("--labeled-batch", type=int, default=128)
    group.add_argument("--unlabeled-batch", type=int, default=128)
    group.add_argument("--cifar-pipeline", choices=PIPELINES, default="arml",
                       help="'arml': ARML's SSL code (build_dataset.py GCN + ZCA, transform.py flip / reflect crop / "
                            "noise in each forward pass, s4l.py Exemplar-MT and EMA warm-up, wrn.py LeakyReLU WRN); "
                            "'legacy': this repository's earlier pipeline (mean/std normalisation, zero-pad crop, one "
                            "shared pass, projection head, ReLU WRN)")
    group.add_argument("--rotation", choices=ROTATIONS, default="random",
                       help="'random': each image rotated by one random angle of {0, 90, 180, 270} degrees (the "
                            "paper's text); 'all4': all four rotations of every image (ARML s4l.py rotate_loss)")
    return run(parser, build, lambda args: None, argv)


if __name__ == "__main__":
    main()
