"""Speech Commands (the paper's Sec. 6.6, Tables 5–7): ten one-vs-all keyword tasks ("zero" … "nine"), each a
binary task with its own linear head on a shared 3-layer spectrogram CNN.

    python experiments/train_speech_commands.py --method auxinash --main-task three --n-train 500 --seed 0
    python experiments/train_speech_commands.py --method nashmtl --n-train 1000 --seed 2   # one model, ten tasks
    python experiments/train_speech_commands.py --data-root ROOT --download ...           # fetch v0.02 first

Auxiliary-learning methods (and STL) train one model per main keyword (``--main-task``; the other nine are its
auxiliaries); multi-task methods one model for all ten. The paper's protocol: 500 or 1,000 training clips spread
uniformly over the ten words (``--n-train``), validation and test the digit clips of v0.02's lists (3,643 and
4,107), Adam 1e-3, 200 epochs, 3 seeds. The training subset is drawn with the run's seed (``--subset-seed`` fixes
it): the same clips for every method of a seed, other clips for another seed.

The paper leaves the STFT, the CNN's sizes, the batch size and the model selection open; the defaults here are
TensorFlow's "Simple audio recognition" tutorial's (STFT 256 / hop 128, 32×32 resize, global normalisation,
batch 64, a 32 → 64 channel CNN; see ``data/speech_commands.py`` and ``training/benchmarks/speech_commands.py``),
each behind a flag. Results: ``<out>/speech_commands_<n-train>/<method>/main-<word or all>/seed<k>/``; metrics.csv
holds per round and split every task's accuracy and positive-class recall (``<word>_acc``, ``<word>_recall``).
"""
from __future__ import annotations

import os

from data.speech_commands import Spectrogram, SpeechCommands
from experiments.training.benchmarks.speech_commands import CHANNELS, SpeechCommandsBenchmark
from experiments.training.cli import base_parser, non_negative_int, positive_float, positive_int, run

ENV = "SPEECH_COMMANDS_ROOT"


def build(args) -> SpeechCommandsBenchmark:
    if args.n_fft > 16_000 or args.hop > 16_000:
        raise SystemExit("error: --n-fft and --hop must not exceed a clip's 16000 samples")
    transform = Spectrogram(n_fft=args.n_fft, hop=args.hop, log_eps=args.log_eps, resize=args.resize)
    data = SpeechCommands(args.data_root, args.n_train, seed=args.seed, subset_seed=args.subset_seed,
                          transform=transform, normalise=args.normalise, device=args.device,
                          download_missing=args.download, meta_val_size=args.meta_val_size, n_val=args.n_val,
                          n_test=args.n_test)
    return SpeechCommandsBenchmark(data, args.n_train, epochs=args.epochs, batch_size=args.batch_size,
                                   device=args.device, seed=args.seed, eval_every=args.eval_every,
                                   channels=args.channels, width=args.width)


def main(argv=None) -> str:
    parser = base_parser(__doc__, lr=1e-3)
    group = parser.add_argument_group("data and schedule")
    group.add_argument("--data-root", default=os.environ.get(ENV, "data_cache/speech_commands"),
                       help=f"the extracted v0.02 archive: word folders and the two split lists (env {ENV})")
    group.add_argument("--download", action="store_true",
                       help="download and extract the official archive into --data-root if absent (resumes)")
    group.add_argument("--n-train", type=positive_int, default=500, help="training clips, uniform over the 10 words")
    group.add_argument("--subset-seed", type=non_negative_int, default=None,
                       help="seed of the training subset (default: the run's --seed)")
    group.add_argument("--n-val", type=positive_int, default=None, help="cap on validation clips (tests; default all)")
    group.add_argument("--n-test", type=positive_int, default=None, help="cap on test clips (tests; default all)")
    group.add_argument("--epochs", type=positive_int, default=200)
    group.add_argument("--batch-size", type=positive_int, default=64,
                       help="paper silent; 64 as the TensorFlow tutorial")
    group.add_argument("--eval-every", type=positive_int, default=1,
                       help="epochs between evaluations of the validation and test clips (1: every epoch)")
    spectro = parser.add_argument_group("spectrogram and CNN (paper silent; TensorFlow tutorial defaults)")
    spectro.add_argument("--n-fft", type=positive_int, default=256, help="STFT length (periodic Hann window)")
    spectro.add_argument("--hop", type=positive_int, default=128, help="STFT hop, samples")
    spectro.add_argument("--log-eps", type=positive_float, default=1e-6, help="log(|STFT| + eps)")
    spectro.add_argument("--resize", type=non_negative_int, default=32,
                         help="bilinear resize of the spectrogram to R×R (0: keep 129×124)")
    spectro.add_argument("--normalise", default="global", choices=["global", "none"],
                         help="global: subtract the training subset's mean, divide by its std")
    spectro.add_argument("--channels", type=positive_int, nargs=3, default=list(CHANNELS),
                         help="channels of the three convolutional layers")
    return run(parser, build, lambda args: None, argv)


if __name__ == "__main__":
    main()
