"""Speech Commands (issue 22): the layout reader, balanced subsets, WAV checks, spectrograms, binary labels, the
resumable download, tiny end-to-end runs, data.check and the three tables."""
import io
import json
import math
import os
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.io import wavfile

from data import DatasetNotFoundError, MalformedDatasetError
from data import check as data_check
from data import speech_commands as sc
from data.synthetic import write_speech_commands
from experiments import train_speech_commands
from experiments.reporting import tables as make_tables
from experiments.reporting import speech_commands as tables_speech_commands
from experiments.training.benchmarks.speech_commands import BinaryCounts, SpeechCNN


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A synthetic tree: 6 training, 2 validation, 2 test clips per digit word, plus 'yes' and
    '_background_noise_' (listed once in each list)."""
    return write_speech_commands(str(tmp_path_factory.mktemp("speech") / "sc"), n_train=6, n_val=2, n_test=2)


# ---------------------------------------------------------------------------------------------------- layout

def test_layout_keeps_digit_words_and_splits_by_the_lists(tree):
    layout = sc.read_layout(tree)
    assert [len(layout[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    listed = {s: {l.strip() for l in open(os.path.join(tree, sc.LISTS[s])) if l.strip()} for s in sc.LISTS}
    assert any(e.startswith("yes/") for e in listed["val"]) and any(e.startswith("_background") for e in listed["test"])
    for split in ("val", "test"):
        assert {c[0] for c in layout[split]} == {e for e in listed[split] if e.split("/")[0] in sc.WORDS}
    assert all(c[1] in sc.WORDS and c[0].startswith(c[1] + "/") for s in layout for c in layout[s])
    train = {c[0] for c in layout["train"]}
    assert not train & (listed["val"] | listed["test"])
    assert {w: sum(c[1] == w for c in layout["train"]) for w in sc.WORDS} == {w: 6 for w in sc.WORDS}


def test_layout_errors_name_what_is_missing(tree, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="validation_list.txt"):
        sc.read_layout(str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="not found"):
        sc.read_layout(str(tmp_path / "absent"))
    broken = tmp_path / "broken"
    os.makedirs(broken / "zero")
    for word in sc.WORDS:
        os.makedirs(broken / word, exist_ok=True)
    (broken / "validation_list.txt").write_text("zero/gone_nohash_0.wav\n")
    (broken / "testing_list.txt").write_text("")
    with pytest.raises(MalformedDatasetError, match="zero/gone_nohash_0.wav"):
        sc.read_layout(str(broken))
    (broken / "testing_list.txt").write_text("zero/gone_nohash_0.wav\n")
    with pytest.raises(MalformedDatasetError, match="both"):
        sc.read_layout(str(broken))


def test_balanced_subsets_are_seeded_uniform_and_disjoint_from_val_and_test(tree):
    layout = sc.read_layout(tree)
    held_out = {c[0] for c in layout["val"] + layout["test"]}
    first = sc.balanced_subset(layout["train"], 30, seed=0)
    assert first == sc.balanced_subset(layout["train"], 30, seed=0)  # the same for every method of a seed
    assert first != sc.balanced_subset(layout["train"], 30, seed=1)  # another subset for another seed
    assert {w: sum(c[1] == w for c in first) for w in sc.WORDS} == {w: 3 for w in sc.WORDS}
    assert not {c[0] for c in first} & held_out and len(set(first)) == 30
    uneven = sc.balanced_subset(layout["train"], 23, seed=0)
    assert sorted(sum(c[1] == w for c in uneven) for w in sc.WORDS) == [2] * 7 + [3] * 3
    with pytest.raises(MalformedDatasetError, match="only 6"):
        sc.balanced_subset(layout["train"], 70, seed=0)


def test_dataset_uses_the_subset_and_the_full_evaluation_lists(tree):
    data = sc.SpeechCommands(tree, n_train=20, seed=3)
    assert len(data.clips["train"]) == 20 and len(data.clips["val"]) == 20 and len(data.clips["test"]) == 20
    assert data.clips["train"] == sc.balanced_subset(sc.read_layout(tree)["train"], 20, 3)
    assert sc.SpeechCommands(tree, n_train=20, seed=5, subset_seed=3).clips["train"] == data.clips["train"]
    train = data.split("train")["spec"]
    assert train.shape == (20, 1, 32, 32)
    # global normalisation by the training set's own statistics: 0 and 1 up to float32 sums over 20,480 values and
    # the sample std's factor √(n / (n − 1)) − 1 = 2.4e-5
    assert abs(train.mean().item()) < 1e-4 and abs(train.std().item() - 1) < 1e-3
    assert data.synthetic and "SYNTHETIC" in data.note
    capped = sc.SpeechCommands(tree, n_train=10, n_val=7, n_test=5, normalise="none")
    assert len(capped.clips["val"]) == 7 and len(capped.clips["test"]) == 5 and capped.mean == 0
    assert set(capped.clips["val"]) <= set(data.clips["val"])


# ---------------------------------------------------------------------------------------------------- WAV files

def test_read_wav_scales_pads_and_crops(tmp_path):
    path = str(tmp_path / "a.wav")
    wavfile.write(path, 16000, np.array([0, 16384, -32768, 32767], dtype=np.int16))
    wave = sc.read_wav(path)
    assert wave.dtype == np.float32 and np.allclose(wave, [0, 0.5, -1, 32767 / 32768])  # k / 32768: float32-exact
    assert sc.fit_length(wave).shape == (16000,) and np.all(sc.fit_length(wave)[4:] == 0)
    assert np.array_equal(sc.fit_length(np.arange(20000, dtype=np.float32)), np.arange(16000))


@pytest.mark.parametrize("kind, message", [("rate", "8000 Hz"), ("stereo", "2 channels"), ("float", "not integer PCM"),
                                           ("header", "cannot read"), ("text", "cannot read")])
def test_malformed_wavs_are_named(tmp_path, kind, message):
    path = str(tmp_path / f"{kind}_nohash_0.wav")
    if kind == "rate":
        wavfile.write(path, 8000, np.zeros(800, dtype=np.int16))
    elif kind == "stereo":
        wavfile.write(path, 16000, np.zeros((100, 2), dtype=np.int16))
    elif kind == "float":
        wavfile.write(path, 16000, np.zeros(100, dtype=np.float32))
    elif kind == "header":
        good = io.BytesIO()
        wavfile.write(good, 16000, np.zeros(100, dtype=np.int16))
        open(path, "wb").write(good.getvalue()[:30])  # cut inside the fmt chunk
    else:
        open(path, "w").write("not a wav file")
    with pytest.raises(MalformedDatasetError, match=message) as error:
        sc.read_wav(path)
    assert path in str(error.value)


def test_data_check_reports_counts_and_rejects_a_malformed_file(tree, tmp_path, capsys):
    assert data_check.main(["speech_commands", "--root", tree]) == 0
    out = capsys.readouterr().out
    assert "[val] 20 clips" in out and "not v0.02" in out and "zero:2" in out and "16000 Hz" in out
    broken = tmp_path / "copy"
    import shutil
    shutil.copytree(tree, broken)
    victim = sorted(os.listdir(broken / "seven"))[0]
    wavfile.write(str(broken / "seven" / victim), 44100, np.zeros(100, dtype=np.int16))
    assert data_check.main(["speech_commands", "--root", str(broken)]) == 1
    assert f"seven/{victim}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- spectrogram

def test_spectrogram_shape_and_a_value_by_hand():
    transform = sc.Spectrogram(resize=0)
    waves = torch.ones(2, 16000)
    spectra = transform(waves)
    # 1 + (16000 - 256) // 128 = 124 frames of 256 // 2 + 1 = 129 bins
    assert spectra.shape == (2, 1, 129, 124) == (2, *transform.shape())
    # a constant signal of 1: the DC bin is the sum of the periodic Hann window, Σ_n ½(1 − cos 2πn/256) = 128; a
    # float32 FFT of 256 points is within ~log2(256) · 2^-24 = 5e-7 of it, and so is its log (atol 1e-5)
    assert torch.allclose(spectra[:, 0, 0, :], torch.full((2, 124), math.log(128 + 1e-6)), atol=1e-5)
    assert spectra[0, 0, 5:, 0].max() < math.log(1e-3)  # and no energy away from DC
    assert sc.Spectrogram().shape() == (1, 32, 32) == tuple(sc.Spectrogram()(waves).shape[1:])


def test_binary_labels_are_one_vs_all():
    clips = [("zero/a.wav", "zero"), ("three/b.wav", "three"), ("zero/c.wav", "zero")]
    labels = sc.binary_labels(clips)
    assert labels["zero"].tolist() == [1, 0, 1] and labels["three"].tolist() == [0, 1, 0]
    assert labels["nine"].tolist() == [0, 0, 0] and labels["zero"].dtype == torch.int64


def test_binary_counts_accuracy_and_positive_recall():
    counts = BinaryCounts()
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # predicts 1, 0, 0, 0
    counts.update(logits, torch.tensor([1, 1, 0, 0]))
    assert counts.result() == {"acc": 75.0, "recall": 50.0}


def test_cnn_has_three_convolutions_and_one_linear_head_per_task():
    model = SpeechCNN(sc.WORDS)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 3
    assert all(isinstance(h, torch.nn.Linear) and h.out_features == 2 for h in model.heads.values())
    out = model(torch.randn(3, 1, 32, 32))
    assert set(out) == set(sc.WORDS) and out["five"].shape == (3, 2)
    assert SpeechCNN(sc.WORDS)(torch.randn(2, 1, 129, 124))["zero"].shape == (2, 2)


# ---------------------------------------------------------------------------------------------------- download

def _archive(tmp_path) -> bytes:
    source = tmp_path / "source"
    write_speech_commands(str(source), n_train=1, n_val=1, n_test=1, others=())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in sorted(os.listdir(source)):
            tar.add(str(source / name), arcname=name)
    return buffer.getvalue()


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, status: int, headers: dict) -> None:
        super().__init__(data)
        self.status, self.headers = status, headers


def range_opener(payload: bytes, honour_range: bool = True, calls: list = None):
    def opener(request):
        header = request.get_header("Range")
        calls.append(header) if calls is not None else None
        if header and honour_range:
            start = int(header.split("=")[1].rstrip("-"))
            return FakeResponse(payload[start:], 206, {"Content-Length": str(len(payload) - start)})
        return FakeResponse(payload, 200, {"Content-Length": str(len(payload))})
    return opener


def test_download_resumes_a_partial_archive_and_extracts(tmp_path):
    payload = _archive(tmp_path)
    root = tmp_path / "root"
    os.makedirs(root)
    open(root / (sc.ARCHIVE + ".part"), "wb").write(payload[:1000])
    calls = []
    sc.download(str(root), opener=range_opener(payload, calls=calls), chunk=4096)
    assert calls == ["bytes=1000-"]
    assert len(sc.read_layout(str(root))["val"]) == 10 and not os.path.exists(root / sc.ARCHIVE)
    assert not os.path.exists(root / (sc.ARCHIVE + ".part"))


def test_download_starts_over_when_the_server_ignores_the_range(tmp_path):
    payload = _archive(tmp_path)
    root = tmp_path / "root"
    os.makedirs(root)
    open(root / (sc.ARCHIVE + ".part"), "wb").write(b"garbage that is not the start of the archive")
    sc.download(str(root), opener=range_opener(payload, honour_range=False), keep_archive=True)
    assert open(root / sc.ARCHIVE, "rb").read() == payload and len(sc.read_layout(str(root))["test"]) == 10


def test_download_from_a_file_url_and_a_short_transfer_keeps_the_part(tmp_path):
    payload = _archive(tmp_path)
    served = tmp_path / sc.ARCHIVE
    served.write_bytes(payload)
    root = tmp_path / "root"
    sc.download(str(root), url=served.as_uri())
    assert len(sc.read_layout(str(root))["train"]) == 10

    def short(request):
        return FakeResponse(payload[:500], 200, {"Content-Length": str(len(payload))})
    other = tmp_path / "other"
    with pytest.raises(DatasetNotFoundError, match="resume"):
        sc.download(str(other), opener=short)
    assert os.path.getsize(other / (sc.ARCHIVE + ".part")) == 500


# ---------------------------------------------------------------------------------------------------- end to end

TINY = ["--n-train", "20", "--epochs", "2", "--batch-size", "8", "--width", "0.25", "--meta-every", "2",
        "--log-level", "WARNING", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tree, tmp_path_factory):
    """An auxiliary-learning method (AuxiNash, two main keywords, two seeds), STL and a multi-task method."""
    out = str(tmp_path_factory.mktemp("results"))
    dirs = {}
    for method, main, seed in (("auxinash", "three", 0), ("auxinash", "seven", 0), ("auxinash", "three", 1),
                               ("stl", "three", 0), ("nashmtl", None, 0)):
        argv = TINY + ["--data-root", tree, "--out", out, "--method", method, "--seed", str(seed)]
        argv += ["--main-task", main] if main else []
        dirs[(method, main, seed)] = train_speech_commands.main(argv)
    return out, dirs


def test_end_to_end_runs_write_accuracy_and_recall_per_task(runs):
    out, dirs = runs
    assert dirs[("auxinash", "three", 0)].endswith(os.path.join("speech_commands_20", "auxinash", "main-three", "seed0"))
    assert dirs[("nashmtl", None, 0)].endswith(os.path.join("speech_commands_20", "nashmtl", "main-all", "seed0"))
    for run_dir in dirs.values():
        assert os.path.exists(os.path.join(run_dir, "status.json"))
        metrics = pd.read_csv(os.path.join(run_dir, "metrics.csv"))
        for split in ("val", "test"):
            rows = metrics[metrics.split == split]
            assert len(rows) == 2
            for word in sc.WORDS:
                assert rows[f"{word}_acc"].between(0, 100).all() and rows[f"{word}_recall"].between(0, 100).all()
    config = json.load(open(os.path.join(dirs[("auxinash", "three", 0)], "config.json")))
    assert config["tasks"] == list(sc.WORDS) and config["main_task"] == "three" and config["synthetic_data"]
    assert config["n_train"] == 20 and config["subset_seed"] == 0 and config["stft_n_fft"] == 256
    p = pd.read_csv(os.path.join(dirs[("auxinash", "three", 0)], "metrics.csv"))
    assert "p_three" in p.columns  # AuxiNash learned bargaining powers over the ten tasks


def test_eval_every_groups_epochs_into_rounds(tree, tmp_path):
    run_dir = train_speech_commands.main(TINY[:2] + ["--epochs", "3", "--eval-every", "2"] + TINY[4:] + [
        "--data-root", tree, "--out", str(tmp_path), "--method", "equal"])
    metrics = pd.read_csv(os.path.join(run_dir, "metrics.csv"))
    assert sorted(set(metrics["round"])) == [0, 1] and metrics[metrics.split == "train"].step.tolist() == [6, 9]


def test_missing_dataset_exits_with_the_layout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_speech_commands.main(TINY + ["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "speech_commands_v0.02.tar.gz" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- tables

def _fake_run(results, n, method, main, seed, accuracies, val_scores):
    """A finished run whose metrics.csv holds two rounds; ``val_scores[r]`` is the validation accuracy of every
    task in round r, ``accuracies[r]`` the test accuracy."""
    run_dir = os.path.join(results, f"speech_commands_{n}", method, f"main-{main}", f"seed{seed}")
    os.makedirs(run_dir)
    rows = []
    for r, (val, test) in enumerate(zip(val_scores, accuracies)):
        for split, value in (("val", val), ("test", test)):
            rows.append({"round": r, "step": r + 1, "split": split,
                         **{f"{w}_acc": value for w in sc.WORDS}, **{f"{w}_recall": 50.0 for w in sc.WORDS}})
    pd.DataFrame(rows).to_csv(os.path.join(run_dir, "metrics.csv"), index=False)
    json.dump({"identity_digest": "d", "device_name": "cpu", "synthetic_data": False},
              open(os.path.join(run_dir, "config.json"), "w"))
    json.dump({"finished": True, "identity_digest": "d"}, open(os.path.join(run_dir, "status.json"), "w"))


def test_three_tables_from_a_tiny_results_tree(tmp_path):
    results = str(tmp_path)
    for seed, shift in ((0, 0.0), (1, 2.0)):
        for i, word in enumerate(sc.WORDS):  # AuxiNash: round 1 has the better validation accuracy
            _fake_run(results, 500, "auxinash", word, seed, [90 + i / 10 + shift, 95 + i / 10 + shift], [80, 85])
        _fake_run(results, 1000, "auxinash", "zero", seed, [97 + shift, 91], [90, 80])  # round 0 is best
    _fake_run(results, 500, "nashmtl", "all", 0, [93.0, 94.0], [70, 60])
    written = make_tables.make_tables(results)
    names = {os.path.basename(p) for p in written}
    assert {"speech_commands.md", "speech_commands_keywords_500.md", "speech_commands_keywords_1000.md"} <= names
    table5 = open(os.path.join(results, "tables", "speech_commands.md")).read()
    # AuxiNash at 500: per seed the mean over keywords of round 1 (95.45, 97.45) → 96.45 ± 1.41; paper 96.4 ± 0.1
    assert "| AuxiNash | 96.45 ± 1.41 (paper 96.4 ± 0.1) | 50.0 ± 0.0 | 2 × 10 | 98.00 ± 1.41 (paper 97.2 ± 0.1)" in table5
    assert "| Nash-MTL | 93.00 ± 0.00 (paper 95.7 ± 0.2)" in table5  # the multi-task model's best mean validation
    assert "96.8 / 95.9" in table5 and "SYNTHETIC" not in table5
    per_keyword = open(os.path.join(results, "tables", "speech_commands_keywords_500.md")).read()
    assert "paper Table 6" in per_keyword and "| AuxiNash | 96.00 ± 1.41 | 96.10 ± 1.41 |" in per_keyword
    assert "96.45 ± 1.41 (paper T5: 96.4) | 2 |" in per_keyword
    assert "paper Table 7" in open(os.path.join(results, "tables", "speech_commands_keywords_1000.md")).read()
    points = pd.read_csv(os.path.join(results, "tables", "speech_commands_runs.csv"))
    assert len(points) == 2 * 10 + 2 + 10 and set(points["round"][points.n_train == 1000]) == {0}
    last = tables_speech_commands.collect(results, 1000, selection="last")
    assert set(last.test_acc) == {91.0}


def test_tables_from_real_tiny_runs_say_synthetic(runs):
    out, _ = runs
    written = tables_speech_commands.write_tables(out)
    text = open(written[0]).read()
    assert text.startswith("SYNTHETIC SMOKE RUN") and "| AuxiNash |" in text and "| 2 × 1/2 |" in text
    assert "| Nash-MTL |" in text and "| STL |" in text
