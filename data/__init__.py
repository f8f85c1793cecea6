"""The one place the benchmark scripts get their data from: NYUv2, Cityscapes, semi-supervised CIFAR-10,
Multi-MNIST, Speech Commands."""
from .cifar import CifarSSL, read_cifar10
from .cityscapes import detect_layout, load_cityscapes
from .common import DatasetNotFoundError, MalformedDatasetError, make_loader, meta_val_split, set_epoch
from .mnist import read_idx, read_mnist
from .multimnist import OFFLINE_NOTE, MultiMnist, PairSpec
from .nyuv2 import load_nyuv2
from .speech_commands import SpeechCommands, read_layout, read_wav

__all__ = ["CifarSSL", "read_cifar10", "load_cityscapes", "detect_layout", "load_nyuv2", "DatasetNotFoundError",
           "MalformedDatasetError", "make_loader", "meta_val_split", "set_epoch", "read_idx", "read_mnist",
           "OFFLINE_NOTE", "MultiMnist", "PairSpec", "SpeechCommands", "read_layout", "read_wav"]
