"""Cityscapes with SegNet: the paper's Table 2 protocol (19-class segmentation, 10-class part segmentation,
disparity at 128×256, from ``python -m data.prepare cityscapes``); the MTAN release (7/19-class segmentation
and depth) also works.

    python experiments/train_cityscapes.py --data-root ROOT --method auxinash --main-task seg --seed 0

Defaults are the paper's: 200 epochs, Adam 1e-4 halved after 100 epochs, batch 8, random scale-crop and flip;
the table averages the test metrics of the last 10 epochs. Tasks: seg, part_seg, disp (MTAN: seg, depth).
"""
from __future__ import annotations



from experiments.training.benchmarks import cityscapes_benchmark
from experiments.training.cli import base_parser, dense_flags, run


def main(argv=None) -> str:
    parser = dense_flags(base_parser(__doc__, lr=1e-4), "CITYSCAPES_ROOT", "data_cache/cityscapes", batch_size=8)
    parser.add_argument("--mtan-classes", type=int, default=19, choices=[7, 19],
                        help="segmentation classes when the root holds the MTAN release")
    return run(parser, lambda args: cityscapes_benchmark(
        args.data_root, mtan_classes=args.mtan_classes, batch_size=args.batch_size, epochs=args.epochs,
        meta_val_size=args.meta_val_size, device=args.device, seed=args.seed, width=args.width,
        augment=not args.no_augment, num_workers=args.workers), lambda args: args.lr_step, argv)


if __name__ == "__main__":
    main()
