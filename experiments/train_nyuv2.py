"""NYUv2 (13-class segmentation, depth, surface normals) with SegNet: the paper's Table 1 protocol.

    python experiments/train_nyuv2.py --data-root ROOT --method auxinash --main-task seg --seed 0

Defaults are the paper's: 200 epochs, Adam 1e-4 halved after 100 epochs, batch 2, random scale-crop and flip;
the table averages the test metrics of the last 10 epochs. Tasks: seg, depth, normal.
"""
from __future__ import annotations



from experiments.training.benchmarks import nyuv2_benchmark
from experiments.training.cli import base_parser, dense_flags, run


def main(argv=None) -> str:
    parser = dense_flags(base_parser(__doc__, lr=1e-4), "NYUV2_ROOT", "data_cache/nyuv2", batch_size=2)
    return run(parser, lambda args: nyuv2_benchmark(
        args.data_root, batch_size=args.batch_size, epochs=args.epochs, meta_val_size=args.meta_val_size,
        device=args.device, seed=args.seed, width=args.width, augment=not args.no_augment,
        num_workers=args.workers), lambda args: args.lr_step, argv)


if __name__ == "__main__":
    main()
