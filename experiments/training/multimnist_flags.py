"""The Multi-MNIST data flags and pairs shared by ``experiments/train_multimnist.py`` (Figure 2) and
``experiments/train_multimnist_aux.py`` (auxiliary mode): each script passes its own presets."""
from __future__ import annotations

import os

from data.multimnist import SOURCES, MultiMnist, PairSpec
from experiments.training.cli import non_negative_int, positive_int


def pairs_from_flags(args, presets):
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
    """The data flags: MNIST root, pair cache, source, preset and its overrides, shift and the pairs' seed."""
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
