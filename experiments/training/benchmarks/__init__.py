"""Benchmarks: what the shared loop trains on, one module each. Each builds its model, streams its training
batches round by round (an epoch, or a block of iterations), draws meta-validation batches, computes the K task
losses of a batch and evaluates. The loop never asks which benchmark it runs.
"""
from .base import Batch, Benchmark, is_synthetic
from .cifar_ssl import CIFAR_TASKS, VIEW_OF_TASK, CifarSSLBenchmark
from .dense import CITYSCAPES_TASKS, NYUV2_TASKS, DenseBenchmark, cityscapes_benchmark, nyuv2_benchmark
from .multimnist import MULTIMNIST_TASKS, MultiMnistBenchmark
from .multimnist_aux import MultiMnistAuxBenchmark
from .speech_commands import SPEECH_TASKS, SpeechCNN, SpeechCommandsBenchmark
from .toy import ToyBenchmark

# benchmark name → its tasks, where they are fixed: the columns of its tables (experiments/reporting/tables.py)
BENCHMARK_TASKS = {"nyuv2": NYUV2_TASKS, "cityscapes": CITYSCAPES_TASKS, "multimnist": MULTIMNIST_TASKS,
                   "speech_commands": SPEECH_TASKS}

__all__ = ["BENCHMARK_TASKS", "Batch", "Benchmark", "is_synthetic", "CIFAR_TASKS", "VIEW_OF_TASK",
           "CifarSSLBenchmark", "CITYSCAPES_TASKS", "NYUV2_TASKS", "DenseBenchmark", "cityscapes_benchmark",
           "nyuv2_benchmark", "ToyBenchmark", "MULTIMNIST_TASKS", "MultiMnistBenchmark", "MultiMnistAuxBenchmark",
           "SPEECH_TASKS", "SpeechCNN", "SpeechCommandsBenchmark"]
