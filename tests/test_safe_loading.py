"""Nothing the repository loads can run code (issue 34): checkpoints are read with ``weights_only=True`` and
NumPy's RNG state admitted only inside the call, and a checkpoint written at 699c080 still resumes bit-exactly;
CIFAR-10's pickled batches go through ``BatchUnpickler``; the ZCA cache is read with ``weights_only=True``; the
Speech Commands archive is checked (size, SHA-256, tarfile's ``data`` filter) before anything is extracted.

Each crafted file carries a live payload: unpickled without restriction it creates a file (checked first, so a
test cannot pass because its payload does nothing); the test then checks that file is not created."""
import hashlib
import io
import logging
import os
import pickle
import shlex
import shutil
import struct
import tarfile
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from data import cifar
from data import check as data_check
from data import speech_commands as sc
from data import synthetic
from data.common import DatasetNotFoundError, MalformedDatasetError
from experiments import train_multimnist
from experiments.storage.results_io import RunError, RunFolder, load_checkpoint, read_json
from tests.conftest import ROOT
from tests.test_speech_commands import FakeResponse, range_opener

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "checkpoint_699c080")
# the settings the fixture was made with (tests/fixtures/checkpoint_699c080/README.md)
FIXTURE_FLAGS = ["--preset", "tiny", "--n-train", "40", "--n-val", "10", "--n-test", "10", "--epochs", "2",
                 "--batch-size", "10", "--width", "0.125", "--meta-every", "1", "--log-level", "WARNING",
                 "--method", "auxinash", "--device", "cpu"]


class OpensAFile:
    """Unpickling it calls ``open(path, "w")``, which creates ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class RunsAShellCommand:
    """Unpickling it calls ``os.system("touch path")``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.path)}",)


@pytest.fixture(params=[OpensAFile, RunsAShellCommand], ids=["open", "os.system"])
def payload(request, tmp_path):
    """A live payload object and the file its unpickling would create (shown to be created by plain pickle)."""
    target = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(request.param(target)))
    assert target.exists(), "the payload must be live for the test to mean anything"
    target.unlink()
    return request.param(target), target


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """The synthetic MNIST the fixture was trained on (``data.synthetic.write_mnist``, 60 / 30 digits, seed 0)."""
    return synthetic.write_mnist(str(tmp_path_factory.mktemp("data") / "mnist"), n_train=60, n_test=30)


def multimnist_flags(mnist_root, cache):
    return ["--data-root", mnist_root, "--cache-root", str(cache), *FIXTURE_FLAGS]


def metrics(run_dir):
    return pd.read_csv(os.path.join(run_dir, "metrics.csv")).drop(columns="seconds")


def fixture_run(out, checkpoint=None):
    """The fixture copied into its run folder under ``out`` (the folder ``RunFolder`` gives its recorded
    identity), with the fixture's checkpoint or ``checkpoint``."""
    identity = read_json(os.path.join(FIXTURE, "config.json"))["identity"]
    run_dir = RunFolder(str(out), identity["benchmark"], identity["method"], identity["tag"], identity["main_task"],
                        identity["seed"]).path
    os.makedirs(run_dir)
    for name in ("config.json", "metrics.csv") + (() if checkpoint else ("checkpoint.pt",)):
        shutil.copy(os.path.join(FIXTURE, name), run_dir)
    if checkpoint:
        torch.save(checkpoint, os.path.join(run_dir, "checkpoint.pt"))
    return run_dir


# ------------------------------------------------------------------------------------------------- checkpoints

def assert_identical(a, b, where="checkpoint"):
    """Same structure, same types, same values bit for bit (tensors: dtype and bits; arrays: dtype and values)."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{k}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where


def as_numpy_1(source, target):
    """``source`` with NumPy 1.x's spelling of the array reconstruction (``numpy.core.multiarray``), as every
    checkpoint written under NumPy 1 has it."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("/data.pkl"):
                old = b"numpy._core.multiarray\n_reconstruct\n"
                assert data.count(old) == 1
                data = data.replace(old, b"numpy.core.multiarray\n_reconstruct\n")
            zout.writestr(name, data)


def test_checkpoint_from_699c080_holds_only_numpy_rng_state_beyond_tensors():
    """What the allow-list must cover, read from the fixture without unpickling it."""
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(os.path.join(FIXTURE, "checkpoint.pt"))
    assert sorted(needed) == ["numpy._core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray"]


def test_checkpoint_from_699c080_loads_exactly_as_an_unrestricted_load_and_under_numpy_1_names(tmp_path):
    """``load_checkpoint`` gives bit for bit what ``weights_only=False`` gives (the fixture is ours), under NumPy
    2's and NumPy 1's module name, and leaves torch's allow-list as it found it."""
    path = os.path.join(FIXTURE, "checkpoint.pt")
    before = set(torch.serialization.get_safe_globals())
    reference = torch.load(path, map_location="cpu", weights_only=False)
    assert_identical(load_checkpoint(path, "cpu"), reference)
    as_numpy_1(path, tmp_path / "numpy1.pt")
    assert "numpy.core.multiarray._reconstruct" in torch.serialization.get_unsafe_globals_in_checkpoint(
        str(tmp_path / "numpy1.pt"))
    assert_identical(load_checkpoint(str(tmp_path / "numpy1.pt"), "cpu"), reference)
    assert set(torch.serialization.get_safe_globals()) == before
    assert isinstance(reference["rng"]["numpy"][1], np.ndarray) and reference["rng"]["numpy"][1].dtype == np.uint32


def test_checkpoint_from_699c080_resumes_bit_exactly(mnist_root, tmp_path):
    """The fixture (round 0 of 2, trained by the code at 699c080) resumed by this code ends exactly where this
    code's uninterrupted run ends: every loss, weight, p and metric of both rounds, bit for bit (CPU, same
    data; the rows of round 0 are the fixture's own). Should a later change alter how this setting trains,
    round 0 of the uninterrupted run differs from the fixture's and this test says so; the loading itself is
    checked exactly by the test above whatever the training does."""
    flags = multimnist_flags(mnist_root, tmp_path / "cache")
    whole = train_multimnist.main(flags + ["--out", str(tmp_path / "whole")])
    run_dir = fixture_run(tmp_path / "out")
    assert train_multimnist.main(flags + ["--out", str(tmp_path / "out"), "--resume"]) == run_dir
    assert os.path.exists(os.path.join(run_dir, "status.json"))
    resumed, straight = metrics(run_dir), metrics(whole)
    kept = pd.read_csv(os.path.join(FIXTURE, "metrics.csv")).drop(columns="seconds")
    pd.testing.assert_frame_equal(resumed[resumed["round"] == 0].reset_index(drop=True), kept, check_exact=True)
    assert sorted(set(resumed["round"])) == [0, 1]
    pd.testing.assert_frame_equal(straight[straight["round"] == 0].reset_index(drop=True), kept, check_exact=True,
                                  obj="round 0 of this code's run against the fixture's (training changed?)")
    pd.testing.assert_frame_equal(resumed, straight, check_exact=True)


def test_a_checkpoint_that_would_run_code_is_refused_by_resume(payload, mnist_root, tmp_path, capsys):
    """``--resume`` stops with exit status 3, naming the file and the global, and the payload never runs."""
    thing, target = payload
    state = torch.load(os.path.join(FIXTURE, "checkpoint.pt"), weights_only=False)
    state["benchmark"] = {"generator": thing}
    run_dir = fixture_run(tmp_path / "out", checkpoint=state)
    with pytest.raises(SystemExit) as info:
        train_multimnist.main(multimnist_flags(mnist_root, tmp_path / "cache") + ["--out", str(tmp_path / "out"),
                                                                                  "--resume"])
    err = capsys.readouterr().err
    assert info.value.code == 3
    assert os.path.join(run_dir, "checkpoint.pt") in err and "nothing in it ran" in err and "--force" in err
    assert ("io.open" if isinstance(thing, OpensAFile) else "posix.system") in err
    assert not target.exists()
    with pytest.raises(RunError, match="nothing in it ran"):  # the Python API says the same
        load_checkpoint(os.path.join(run_dir, "checkpoint.pt"), "cpu")
    assert not target.exists() and not os.path.exists(os.path.join(run_dir, "status.json"))


def test_load_checkpoint_admits_no_more_than_the_rng_state_and_only_during_the_call(tmp_path):
    """A NumPy array of another dtype is refused too (only the RNG state's uint32 is admitted), the allow-list is
    torch's own again afterwards, and an entry the caller admitted itself stays admitted."""
    torch.save({"model": {}, "extra": np.zeros(3)}, tmp_path / "float64.pt")
    before = set(torch.serialization.get_safe_globals())
    with pytest.raises(RunError, match=r"float64\.pt was not loaded.*Float64DType"):
        load_checkpoint(str(tmp_path / "float64.pt"), "cpu")
    assert set(torch.serialization.get_safe_globals()) == before
    own = (np.ndarray, "numpy.ndarray")
    with torch.serialization.safe_globals([own]):
        load_checkpoint(os.path.join(FIXTURE, "checkpoint.pt"), "cpu")
        assert own in torch.serialization.get_safe_globals()
    assert set(torch.serialization.get_safe_globals()) == before


# ------------------------------------------------------------------------------------------------ CIFAR-10

def _string(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: Python 2's str
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:  # BININT1 / BININT
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def python2_batch(data: np.ndarray, labels) -> bytes:
    """A batch pickled as the original release's are (Python 2's cPickle, protocol 2, NumPy 1.x): strings as
    Python 2 ``str``, the array as ``numpy.core.multiarray._reconstruct`` + BUILD with its raw bytes, the dtype
    as ``numpy.dtype('u1', 0, 1)`` + BUILD (NumPy's ``array_reduce`` / ``arraydescr_reduce``)."""
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _string(b"b") + b"\x87R("
             + b"K\x01" + _int(len(data)) + _int(data.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + _string(b"u1") + b"K\x00K\x01\x87R(K\x03" + _string(b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + _string(data.tobytes()) + b"tb")
    return (b"\x80\x02}(" + _string(b"data") + array + _string(b"labels") + b"](" + b"".join(_int(int(y)) for y in labels)
            + b"e" + _string(b"batch_label") + _string(b"training batch 1 of 5") + b"u.")


@pytest.mark.parametrize("form", ["python 2 release", "python 3 protocol 2", "python 3 default protocol"])
def test_cifar_batches_read_as_plain_pickle_reads_them(tmp_path, form):
    """Every form a real batch comes in gives what an unrestricted ``pickle.load`` gives: the original release
    (Python 2, ``numpy.core``), and batches pickled again by Python 3 (``_codecs.encode`` for bytes at protocol 2;
    ``numpy._core`` under NumPy 2, as ../shared/datasets/make_cifar10_batches.py writes them)."""
    data = np.random.default_rng(0).integers(0, 256, (5, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5]
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": data,
             b"filenames": [f"{k}.png".encode() for k in range(5)]}
    blob = {"python 2 release": lambda: python2_batch(data, labels),
            "python 3 protocol 2": lambda: pickle.dumps(batch, protocol=2),
            "python 3 default protocol": lambda: pickle.dumps(batch)}[form]()
    (tmp_path / "data_batch_1").write_bytes(blob)
    images, read_labels = cifar.read_batch(str(tmp_path / "data_batch_1"))
    plain = pickle.loads(blob, encoding="bytes")
    assert np.array_equal(images, plain[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert np.array_equal(read_labels, np.asarray(plain[b"labels"])) and read_labels.tolist() == labels


def test_cifar_batch_that_would_run_code_is_refused(payload, tmp_path, capsys):
    """``python -m data.check cifar10`` on a crafted data_batch_1 (the issue's case) names the file and the
    global; an object array is refused as well; the payload never runs."""
    thing, target = payload
    root = tmp_path / "cifar"
    synthetic.write_cifar10(str(root), per_batch=20, n_test=20)
    crafted = root / "cifar-10-batches-py" / "data_batch_1"
    crafted.write_bytes(pickle.dumps({b"data": thing, b"labels": [0]}))
    assert data_check.main(["cifar10", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert str(crafted) in err and "nothing in it ran" in err
    assert ("io.open" if isinstance(thing, OpensAFile) else "posix.system") in err
    assert not target.exists()
    crafted.write_bytes(pickle.dumps({b"data": np.array([thing], dtype=object), b"labels": [0]}))
    with pytest.raises(MalformedDatasetError, match="data_batch_1.*Python objects"):
        cifar.read_cifar10(str(root))
    assert not target.exists()


# ------------------------------------------------------------------------------------------------ ZCA cache

@pytest.mark.parametrize("content", ["payload", "wrong shapes", "not a torch file"])
def test_a_bad_zca_cache_is_ignored_refitted_and_replaced(content, tmp_path, monkeypatch, caplog):
    """A cache file that would run code, holds other tensors or is not a torch file is named in a warning, the
    whitening is fitted again (bit-identical to ``fit_zca``: the same computation on the same images) and the
    file replaced by it. The cache is derived data (keyed by a hash of the images; an unwritable folder already
    costs only the refit), so a bad file costs the refit, not the run. The payload never runs."""
    monkeypatch.setenv("AUXINASH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar, "_ZCA_MEMORY", {})
    target = tmp_path / "payload-ran"
    path = tmp_path / "cache" / "zca-crafted.pt"
    os.makedirs(path.parent)
    if content == "payload":
        torch.save({"mean": OpensAFile(target), "matrix": torch.zeros(1)}, path)
    elif content == "wrong shapes":
        torch.save({"mean": torch.zeros(3, dtype=torch.float64), "matrix": torch.eye(3, dtype=torch.float64)}, path)
    else:
        path.write_bytes(b"not a torch file")
    images = torch.rand(20, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING):
        mean, matrix = cifar.cached_zca(images, "crafted")
    assert str(path) in caplog.text and "fitting the whitening again" in caplog.text
    assert not target.exists()
    fitted = cifar.fit_zca(images)
    assert torch.equal(mean, fitted[0]) and torch.equal(matrix, fitted[1])
    stored = torch.load(path, weights_only=True)
    assert torch.equal(stored["mean"], fitted[0]) and torch.equal(stored["matrix"], fitted[1])


# ------------------------------------------------------------------------------------ Speech Commands download

def tar_gz(members) -> bytes:
    """A .tar.gz of ``members``: (name, bytes) for a file, (name, "->", target) for a symbolic link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            info = tarfile.TarInfo(member[0])
            if member[1] == "->":
                info.type, info.linkname = tarfile.SYMTYPE, member[2]
                tar.addfile(info)
            else:
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


GOOD = [("validation_list.txt", b"zero/a_nohash_0.wav\n"), ("zero/a_nohash_0.wav", b"RIFF....")]


def published(payload: bytes):
    return len(payload), hashlib.sha256(payload).hexdigest()


def serving(payload: bytes):
    return lambda request: FakeResponse(payload, 200, {"Content-Length": str(len(payload))})


def test_the_published_archive_is_checked_and_extracted(tmp_path):
    payload = tar_gz(GOOD)
    root = tmp_path / "root"
    sc.download(str(root), opener=serving(payload), expected=published(payload))
    assert sorted(os.listdir(root)) == ["validation_list.txt", "zero"] and (root / "zero" / "a_nohash_0.wav").exists()


@pytest.mark.parametrize("damage", ["one byte altered", "one byte more", "served short as if complete"])
def test_a_damaged_download_is_named_and_never_extracted(tmp_path, damage):
    """An altered or longer archive is named and removed before extraction; one that ends early (the server
    claiming it complete) is named and kept as the part file for the next run to resume, also unextracted."""
    payload = tar_gz(GOOD)
    served = {"one byte altered": payload[:100] + bytes([payload[100] ^ 1]) + payload[101:],
              "one byte more": payload + b"\0", "served short as if complete": payload[:-10]}[damage]
    root = tmp_path / "root"
    archive = root / sc.ARCHIVE
    if damage == "served short as if complete":
        with pytest.raises(DatasetNotFoundError, match=f"stopped at {len(served)} of {len(payload)} bytes"):
            sc.download(str(root), opener=serving(served), expected=published(payload))
        assert os.listdir(root) == [sc.ARCHIVE + ".part"]
        sc.download(str(root), opener=range_opener(payload), expected=published(payload))  # resumed, checked
        assert (root / "zero" / "a_nohash_0.wav").exists()
        return
    with pytest.raises(MalformedDatasetError, match=f"{archive}.*not the published archive.*removed"):
        sc.download(str(root), opener=serving(served), expected=published(payload))
    assert os.listdir(root) == []


def test_a_truncated_archive_already_on_disk_is_named_and_removed(tmp_path):
    payload = tar_gz(GOOD)
    root = tmp_path / "root"
    os.makedirs(root)
    (root / sc.ARCHIVE).write_bytes(payload[:-10])

    def no_network(request):
        raise AssertionError("the archive is there: nothing to download")
    with pytest.raises(MalformedDatasetError, match=f"{root / sc.ARCHIVE}.*{len(payload) - 10} bytes"):
        sc.download(str(root), opener=no_network, expected=published(payload))
    assert os.listdir(root) == []


@pytest.mark.parametrize("escape", [("../escaped.txt", b"x"), ("zero/link", "->", "../../escaped.txt"),
                                    ("zero/link", "->", "/etc/passwd")], ids=["path", "relative link", "absolute link"])
def test_a_member_escaping_the_root_is_refused_before_anything_is_extracted(tmp_path, escape):
    """tarfile's ``data`` filter refuses the member; the check runs over every member first, so the harmless
    members before it are not extracted either, and the archive is removed."""
    payload = tar_gz(GOOD + [escape])
    root = tmp_path / "deep" / "root"
    with pytest.raises(MalformedDatasetError, match=f"{root / sc.ARCHIVE}.*refused"):
        sc.download(str(root), opener=serving(payload))
    assert os.listdir(root) == [] and not (tmp_path / "deep" / "escaped.txt").exists()


def test_download_flag_checks_the_published_v002_archive(tmp_path, monkeypatch):
    """``--download`` (``SpeechCommands(download_missing=True)``) passes the published size and SHA-256."""
    calls = []

    def record(root, **kwargs):
        calls.append(kwargs)
        raise DatasetNotFoundError("stop here")
    monkeypatch.setattr(sc, "download", record)
    with pytest.raises(DatasetNotFoundError, match="stop here"):
        sc.SpeechCommands(str(tmp_path), n_train=10, download_missing=True)
    assert calls == [{"expected": sc.V002_ARCHIVE}]
    # TensorFlow Datasets' url_checksums/speech_commands.txt, torchaudio's _CHECKSUMS
    assert sc.V002_ARCHIVE == (2_428_923_189, "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58")
