import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches the code writes (the CIFAR-10 ZCA whitening) go to a temporary folder, not the user's home."""
    previous = os.environ.get("AUXINASH_CACHE")
    os.environ["AUXINASH_CACHE"] = str(tmp_path_factory.mktemp("auxinash-cache"))
    yield
    if previous is None:
        os.environ.pop("AUXINASH_CACHE", None)
    else:
        os.environ["AUXINASH_CACHE"] = previous


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def float64():
    """Run a test with float64 as torch's default dtype (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
