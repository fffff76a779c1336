"""Data in and out: label maps against STUDY.md's table, verified fetching that fails
without leaving anything half-written, the seeded split, the labels, normalisation."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import MNIST_NAMES, REPO, SHARED_MNIST, synthetic_mnist

from misfit.core.config import DataConfig, ProtocolConfig
from misfit.core.errors import DataError
from misfit.data.labels import derive_targets, write_labels
from misfit.data.load import load_images
from misfit.data.mnist import fetch_raw
from misfit.data.split import write_split

# STUDY.md "Tasks", written out digit by digit (index = digit)
STROKES = [2, 1, 2, 2, 6, 3, 3, 2, 4, 3]  # 1->1; 0,2,3,7->2; 5,6,9->3; 8->4; 4->6
CURVED = [1, 0, 0, 1, 0, 0, 1, 0, 1, 1]  # {0,3,6,8,9}
MULTILABEL = [  # [even, prime, curved, square]
    [1, 0, 1, 1],  # 0
    [0, 0, 0, 1],  # 1
    [1, 1, 0, 0],  # 2
    [0, 1, 1, 0],  # 3
    [1, 0, 0, 1],  # 4
    [0, 1, 0, 0],  # 5
    [1, 0, 1, 0],  # 6
    [0, 1, 0, 0],  # 7
    [1, 0, 1, 0],  # 8
    [0, 0, 1, 1],  # 9
]
TASKS = ("regression", "probability", "binary", "multiclass", "multilabel")


# -- label maps ----------------------------------------------------------------------

@pytest.mark.parametrize("digit", range(10))
def test_label_map_of_each_digit(digit):
    targets = derive_targets(np.array([digit], dtype=np.uint8))
    assert sorted(targets) == sorted(TASKS)
    assert targets["regression"].tolist() == [STROKES[digit]]
    assert targets["probability"].tolist() == [CURVED[digit]]
    assert targets["binary"].tolist() == [CURVED[digit]]
    assert targets["multiclass"].tolist() == [digit]
    assert targets["multilabel"].tolist() == [MULTILABEL[digit]]


def test_label_maps_on_a_batch_keep_order_dtypes_and_shapes():
    digits = np.array([7, 0, 9, 4, 4, 1, 8, 2, 6, 3, 5], dtype=np.uint8)  # IDX labels are uint8
    targets = derive_targets(digits)
    assert targets["regression"].dtype == np.float32 and targets["regression"].shape == (11,)
    assert targets["probability"].dtype == np.float32 and targets["probability"].shape == (11,)
    assert targets["binary"].dtype == np.int64 and targets["multiclass"].dtype == np.int64
    assert targets["multilabel"].dtype == np.float32 and targets["multilabel"].shape == (11, 4)
    assert targets["regression"].tolist() == [STROKES[d] for d in digits]
    assert targets["binary"].tolist() == [CURVED[d] for d in digits]
    assert targets["multiclass"].tolist() == digits.tolist()
    assert targets["multilabel"].tolist() == [MULTILABEL[d] for d in digits]


@pytest.mark.parametrize("bad", [[10], [-1], [3, 11]])
def test_labels_outside_0_to_9_are_refused(bad):
    with pytest.raises(ValueError, match="0..9"):
        derive_targets(np.array(bad))


# -- fetch_raw: a verified copy or nothing -------------------------------------------

def member_path(mirror: Path, name: str) -> Path:
    return mirror / name if (mirror / name).exists() else mirror / f"{name}.gz"


def read_member(mirror: Path, name: str) -> bytes:
    path = member_path(mirror, name)
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def write_member(mirror: Path, name: str, payload: bytes) -> None:
    """Replace a mirror file's uncompressed content, keeping its wrapper (.gz or none)."""
    path = member_path(mirror, name)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def snapshot(directory: Path) -> dict[str, bytes] | None:
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(params=[False, True], ids=["plain", "gz"])
def mirror(request, tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "mirror"
    manifest = synthetic_mnist(directory, n_train=60, n_test=30, seed=3, compress=request.param)
    monkeypatch.setenv("MNIST_MANIFEST", str(manifest))
    return directory


def manifest_of(mirror: Path) -> dict:
    return json.loads((mirror.parent / f"{mirror.name}-manifest.json").read_text())


def test_fetch_from_a_mirror_gives_the_uncompressed_verified_files(tmp_path, mirror):
    raw = tmp_path / "data" / "raw"
    fetch_raw(raw, mirror)
    assert sorted(p.name for p in raw.iterdir()) == sorted([*MNIST_NAMES, "manifest.json"])
    expected = manifest_of(mirror)
    for name in MNIST_NAMES:
        content = (raw / name).read_bytes()
        assert content == read_member(mirror, name)
        assert hashlib.sha256(content).hexdigest() == expected[name]["sha256"]
    written = json.loads((raw / "manifest.json").read_text())
    assert written["source"] == str(mirror.parent / f"{mirror.name}-manifest.json")
    assert written["sha256"] == {name: expected[name]["sha256"] for name in MNIST_NAMES}
    assert written["shapes"] == {name: expected[name]["shape"] for name in MNIST_NAMES}
    sums = "".join(f"{expected[name]['sha256']}  {name}\n" for name in sorted(MNIST_NAMES))
    assert written["dataset_sha256"] == hashlib.sha256(sums.encode()).hexdigest()
    assert not list(raw.parent.glob(".raw.*"))


def test_a_second_fetch_replaces_the_first(tmp_path, mirror):
    raw = tmp_path / "data" / "raw"
    fetch_raw(raw, mirror)
    (raw / "stale").write_text("left from an older run")
    fetch_raw(raw, mirror)
    assert not (raw / "stale").exists()
    assert (raw / "manifest.json").exists()


def drop(name):
    def damage(mirror: Path) -> list[str]:
        member_path(mirror, name).unlink()
        return [str(mirror), f"missing {name} (or {name}.gz)"]
    return damage


def truncate(name, n_bytes):
    def damage(mirror: Path) -> list[str]:
        payload = read_member(mirror, name)
        write_member(mirror, name, payload[:-n_bytes])
        return [name, f"{len(payload) - n_bytes} bytes, expected {len(payload)}", "truncated"]
    return damage


def append(name):
    def damage(mirror: Path) -> list[str]:
        payload = read_member(mirror, name)
        write_member(mirror, name, payload + b"\0")
        return [name, f"{len(payload) + 1} bytes, expected {len(payload)}", "trailing data"]
    return damage


def magic(name, value):
    def damage(mirror: Path) -> list[str]:
        payload = read_member(mirror, name)
        write_member(mirror, name, struct.pack(">I", value) + payload[4:])
        dims = 3 if "images" in name else 1
        return [name, f"wrong magic number {value:#010x}", f"expected {0x0800 + dims:#010x}"]
    return damage


def dimensions(name):
    def damage(mirror: Path) -> list[str]:
        payload = read_member(mirror, name)
        (count,) = struct.unpack(">I", payload[4:8])
        write_member(mirror, name, payload[:4] + struct.pack(">I", count - 1) + payload[8:])
        return [name, f"IDX dimensions ({count - 1},", f"expected ({count},"]
    return damage


def flip_a_pixel(name):
    def damage(mirror: Path) -> list[str]:
        payload = bytearray(read_member(mirror, name))
        payload[-1] ^= 0xFF  # same size, valid header: only the checksum can tell
        write_member(mirror, name, bytes(payload))
        expected = manifest_of(mirror)[name]["sha256"]
        return [name, "SHA-256 of the uncompressed content is", f"expected {expected}"]
    return damage


def garbage_gz(name):
    def damage(mirror: Path) -> list[str]:
        member_path(mirror, name).unlink()
        (mirror / f"{name}.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not deflate data" * 10)
        return [str(mirror / f"{name}.gz"), "cannot decompress", "damaged or truncated"]
    return damage


def cut_gz(name):
    def damage(mirror: Path) -> list[str]:
        payload = read_member(mirror, name)
        member_path(mirror, name).unlink()
        packed = gzip.compress(payload)
        (mirror / f"{name}.gz").write_bytes(packed[: len(packed) // 2])
        return [str(mirror / f"{name}.gz"), "cannot decompress", "damaged or truncated"]
    return damage


FAULTS = [
    pytest.param(drop("train-labels-idx1-ubyte"), id="missing-file"),
    pytest.param(drop("t10k-images-idx3-ubyte"), id="missing-last-file"),
    pytest.param(truncate("t10k-images-idx3-ubyte", 100), id="truncated"),
    pytest.param(truncate("train-labels-idx1-ubyte", 59), id="truncated-into-labels"),
    pytest.param(append("train-images-idx3-ubyte"), id="trailing-data"),
    pytest.param(magic("train-images-idx3-ubyte", 0x0D03), id="wrong-magic-float"),
    pytest.param(magic("t10k-labels-idx1-ubyte", 0x0803), id="wrong-magic-dims"),
    pytest.param(dimensions("train-labels-idx1-ubyte"), id="wrong-dimensions"),
    pytest.param(flip_a_pixel("t10k-images-idx3-ubyte"), id="checksum-mismatch"),
    pytest.param(garbage_gz("train-images-idx3-ubyte"), id="damaged-gz"),
    pytest.param(cut_gz("t10k-labels-idx1-ubyte"), id="truncated-gz"),
]


@pytest.mark.parametrize("existed", [False, True], ids=["fresh", "over-good-copy"])
@pytest.mark.parametrize("damage", FAULTS)
def test_a_damaged_mirror_raises_and_leaves_no_trace(tmp_path, mirror, damage, existed):
    raw = tmp_path / "data" / "raw"
    raw.parent.mkdir()
    if existed:
        fetch_raw(raw, mirror)
    before = snapshot(raw)
    fragments = damage(mirror)
    with pytest.raises(DataError) as caught:
        fetch_raw(raw, mirror)
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in {caught.value}"
    assert snapshot(raw) == before
    assert not list(raw.parent.glob(".raw.*"))
    assert sorted(p.name for p in raw.parent.iterdir()) == (["raw"] if existed else [])


@pytest.mark.parametrize("existed", [False, True], ids=["fresh", "over-good-copy"])
def test_a_mirror_directory_that_does_not_exist(tmp_path, mirror, existed):
    raw = tmp_path / "data" / "raw"
    raw.parent.mkdir()
    if existed:
        fetch_raw(raw, mirror)
    before = snapshot(raw)
    absent = tmp_path / "no-such-mirror"
    with pytest.raises(DataError) as caught:
        fetch_raw(raw, absent)
    assert f"MNIST_MIRROR={absent}: no such directory" in str(caught.value)
    assert "four MNIST IDX files" in str(caught.value)
    assert snapshot(raw) == before
    assert not list(raw.parent.glob(".raw.*"))


def test_a_bad_manifest_is_named(tmp_path, mirror, monkeypatch):
    broken = tmp_path / "broken-manifest.json"
    broken.write_text(json.dumps({"train-images-idx3-ubyte": {"sha256": "0" * 64}}))
    monkeypatch.setenv("MNIST_MANIFEST", str(broken))
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match=f"MNIST_MANIFEST={broken}: not a manifest"):
        fetch_raw(raw, mirror)
    assert not raw.exists()


def test_the_offline_copy_is_official_mnist(tmp_path, monkeypatch):
    # the official identity, as shipped next to the copy, not as written in the code
    monkeypatch.delenv("MNIST_MANIFEST", raising=False)
    sums_file = SHARED_MNIST / "SHA256SUMS.uncompressed"
    official = dict(reversed(line.split()) for line in sums_file.read_text().splitlines())
    assert sorted(official) == sorted(MNIST_NAMES)
    raw = tmp_path / "raw"
    fetch_raw(raw, SHARED_MNIST)
    for name in MNIST_NAMES:
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == official[name]
    written = json.loads((raw / "manifest.json").read_text())
    assert written["source"] == "official MNIST"
    assert written["sha256"] == official
    assert written["shapes"] == {"train-images-idx3-ubyte": [60000, 28, 28], "train-labels-idx1-ubyte": [60000],
                                 "t10k-images-idx3-ubyte": [10000, 28, 28], "t10k-labels-idx1-ubyte": [10000]}
    # the data set's one digest is that of its sha256sum listing
    assert written["dataset_sha256"] == hashlib.sha256(sums_file.read_bytes()).hexdigest()

    # the study's own draw on the real images: 2,000 / 3,000 of the 60,000, all 10,000 test images
    split_dir = tmp_path / "split"
    data = DataConfig(**yaml.safe_load((REPO / "params.yaml").read_text())["data"])
    write_split(raw, split_dir, heldout_dir_of(split_dir), data)
    parts = load_split(split_dir)
    assert [len(parts[s]["indices"]) for s in ("train", "valid", "test")] == [2000, 3000, 10000]
    assert not set(parts["train"]["indices"].tolist()) & set(parts["valid"]["indices"].tolist())
    assert np.array_equal(parts["test"]["labels"], parse_idx(raw / "t10k-labels-idx1-ubyte"))
    # every digit is in a random 2,000 of MNIST, each between 5% and 15% of them
    counts = np.bincount(parts["train"]["labels"], minlength=10)
    assert counts.min() > 100 and counts.max() < 300, counts


# -- split ---------------------------------------------------------------------------

def parse_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture
def raw(tmp_path, monkeypatch) -> Path:
    manifest = synthetic_mnist(tmp_path / "mirror", n_train=600, n_test=300, seed=5)
    monkeypatch.setenv("MNIST_MANIFEST", str(manifest))
    directory = tmp_path / "data" / "raw"
    fetch_raw(directory, tmp_path / "mirror")
    return directory


def data_config(seed=0, n_train=200, n_valid=300, n_test=100) -> DataConfig:
    return DataConfig(subset_seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test)


def heldout_dir_of(split_dir: Path) -> Path:
    """Where these tests have write_split put the test split: beside the train/valid one."""
    return split_dir.parent / f"{split_dir.name}-test"


def load_split(split_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for split, directory in (("train", split_dir), ("valid", split_dir), ("test", heldout_dir_of(split_dir))):
        with np.load(directory / f"{split}.npz") as arrays:
            out[split] = {key: arrays[key] for key in arrays.files}
    return out


def test_split_sizes_and_contents(raw, tmp_path):
    split_dir = tmp_path / "data" / "split"
    write_split(raw, split_dir, heldout_dir_of(split_dir), data_config())
    parts = load_split(split_dir)
    train_images, train_labels = parse_idx(raw / "train-images-idx3-ubyte"), parse_idx(raw / "train-labels-idx1-ubyte")
    test_images, test_labels = parse_idx(raw / "t10k-images-idx3-ubyte"), parse_idx(raw / "t10k-labels-idx1-ubyte")
    for split, n in (("train", 200), ("valid", 300), ("test", 100)):
        assert sorted(parts[split]) == ["images", "indices", "labels"]
        assert parts[split]["images"].shape == (n, 28, 28) and parts[split]["images"].dtype == np.uint8
        assert parts[split]["labels"].shape == (n,) and parts[split]["indices"].shape == (n,)
    train_idx, valid_idx = parts["train"]["indices"], parts["valid"]["indices"]
    assert len(set(train_idx.tolist())) == 200 and len(set(valid_idx.tolist())) == 300
    assert not set(train_idx.tolist()) & set(valid_idx.tolist())
    assert 0 <= min(train_idx.min(), valid_idx.min()) and max(train_idx.max(), valid_idx.max()) < 600
    # a random draw, not the first 500 images in order
    assert sorted(np.concatenate([train_idx, valid_idx]).tolist()) != list(range(500))
    assert parts["test"]["indices"].tolist() == list(range(100))
    for split, images, labels in (("train", train_images, train_labels), ("valid", train_images, train_labels),
                                  ("test", test_images, test_labels)):
        idx = parts[split]["indices"]
        assert np.array_equal(parts[split]["images"], images[idx])
        assert np.array_equal(parts[split]["labels"], labels[idx])
    assert not list(split_dir.parent.glob(".split.*"))
    assert not list(split_dir.rglob("test*")), "the train stage's split holds no test image"


def test_split_is_seeded(raw, tmp_path):
    indices = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_split(raw, tmp_path / name, heldout_dir_of(tmp_path / name), data_config(seed=seed))
        parts = load_split(tmp_path / name)
        indices[name] = (parts["train"]["indices"].tolist(), parts["valid"]["indices"].tolist())
    assert indices["a"] == indices["b"]
    assert indices["a"][0] != indices["c"][0] and indices["a"][1] != indices["c"][1]


def test_indices_csv_matches_the_arrays(raw, tmp_path):
    split_dir = tmp_path / "split"
    write_split(raw, split_dir, heldout_dir_of(split_dir), data_config())
    parts = load_split(split_dir)
    for directory, splits in ((split_dir, (("train", "train"), ("valid", "train"))),
                              (heldout_dir_of(split_dir), (("test", "t10k"),))):
        with open(directory / "indices.csv", newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["split", "source_file", "index", "label"]
        expected = []
        for split, source in splits:
            expected += [[split, f"{source}-images-idx3-ubyte", str(i), str(label)]
                         for i, label in zip(parts[split]["indices"].tolist(), parts[split]["labels"].tolist())]
        assert rows[1:] == expected


def test_split_manifest_digests(raw, tmp_path):
    split_dir = tmp_path / "split"
    write_split(raw, split_dir, heldout_dir_of(split_dir), data_config())
    parts = load_split(split_dir)
    manifest = json.loads((split_dir / "manifest.json").read_text())
    test_manifest = json.loads((heldout_dir_of(split_dir) / "manifest.json").read_text())
    raw_manifest = json.loads((raw / "manifest.json").read_text())
    for written in (manifest, test_manifest):
        assert written["dataset_sha256"] == raw_manifest["dataset_sha256"]
        assert written["dataset_source"] == raw_manifest["source"]
        assert written["raw_sha256"] == raw_manifest["sha256"]
    assert sorted(manifest["splits"]) == ["train", "valid"] and sorted(test_manifest["splits"]) == ["test"]
    for split, entry in {**manifest["splits"], **test_manifest["splits"]}.items():
        arrays = parts[split]
        assert entry["n"] == len(arrays["indices"])
        content = hashlib.sha256()
        for key in ("images", "labels", "indices"):
            content.update(arrays[key].tobytes())
        assert entry["sha256"] == content.hexdigest()
        assert entry["indices_sha256"] == hashlib.sha256(arrays["indices"].astype("<i8").tobytes()).hexdigest()
    assert manifest["splits"]["train"]["sha256"] != manifest["splits"]["valid"]["sha256"]


@pytest.mark.parametrize(("config", "fragment"), [
    (data_config(n_test=301), "data.n_test = 301 exceeds the 300 test images"),
    (data_config(n_train=400, n_valid=201), "data.n_train + data.n_valid = 601 exceeds the 600 training images"),
], ids=["n_test", "n_train+n_valid"])
def test_split_larger_than_the_data_writes_nothing(raw, tmp_path, config, fragment):
    split_dir = tmp_path / "data" / "split"
    with pytest.raises(DataError, match=fragment.replace("+", r"\+")):
        write_split(raw, split_dir, heldout_dir_of(split_dir), config)
    assert not split_dir.exists() and not heldout_dir_of(split_dir).exists()
    assert not list(split_dir.parent.glob(".split*"))


# -- labels --------------------------------------------------------------------------

def test_write_labels_keys_shapes_and_values(raw, tmp_path):
    split_dir, labels_dir = tmp_path / "split", tmp_path / "labels"
    write_split(raw, split_dir, heldout_dir_of(split_dir), data_config())
    write_labels(split_dir, labels_dir, heldout_dir_of(split_dir), tmp_path / "test_labels.npz",
                 tmp_path / "label_summary.json")
    parts = load_split(split_dir)
    assert sorted(p.name for p in labels_dir.iterdir()) == ["train.npz", "valid.npz"]
    summary = json.loads((tmp_path / "label_summary.json").read_text())
    for split, n in (("train", 200), ("valid", 300), ("test", 100)):
        digits = parts[split]["labels"].tolist()
        with np.load(tmp_path / "test_labels.npz" if split == "test" else labels_dir / f"{split}.npz") as arrays:
            assert sorted(arrays.files) == sorted(TASKS)
            assert arrays["regression"].shape == (n,) and arrays["regression"].dtype == np.float32
            assert arrays["probability"].shape == (n,) and arrays["probability"].dtype == np.float32
            assert arrays["binary"].shape == (n,) and arrays["binary"].dtype == np.int64
            assert arrays["multiclass"].shape == (n,) and arrays["multiclass"].dtype == np.int64
            assert arrays["multilabel"].shape == (n, 4) and arrays["multilabel"].dtype == np.float32
            assert arrays["regression"].tolist() == [STROKES[d] for d in digits]
            assert arrays["probability"].tolist() == [CURVED[d] for d in digits]
            assert arrays["multiclass"].tolist() == digits
            assert arrays["multilabel"].tolist() == [MULTILABEL[d] for d in digits]
        assert summary[split]["n"] == n
        assert summary[split]["multiclass"]["class_counts"] == [digits.count(d) for d in range(10)]
        assert summary[split]["probability"]["positive_share"] == pytest.approx(
            sum(CURVED[d] for d in digits) / n)


# -- normalisation -------------------------------------------------------------------

def test_load_images_matches_torchvision_bit_for_bit(raw, tmp_path):
    from PIL import Image
    from torchvision import transforms

    split_dir = tmp_path / "split"
    write_split(raw, split_dir, heldout_dir_of(split_dir), data_config())
    protocol = ProtocolConfig(**yaml.safe_load((REPO / "params.yaml").read_text())["protocol"])
    assert (protocol.normalize_mean, protocol.normalize_std) == (0.5, 0.5)
    images = load_images(split_dir, "valid", protocol)
    pixels = load_split(split_dir)["valid"]["images"]
    assert images.shape == (300, 1, 28, 28) and images.dtype == torch.float32
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    for i in (0, 1, 17, 299):
        expected = reference(Image.fromarray(pixels[i]))
        assert torch.equal(images[i], expected), i
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images[pixels[:, None] == 255], torch.ones(int((pixels == 255).sum())))
    assert torch.equal(images[pixels[:, None] == 0], -torch.ones(int((pixels == 0).sum())))


def test_errors_name_the_mirror_file_not_a_staging_copy(tmp_path, mirror):
    name = "t10k-images-idx3-ubyte"
    flip_a_pixel(name)(mirror)
    with pytest.raises(DataError) as caught:
        fetch_raw(tmp_path / "data" / "raw", mirror)
    assert str(caught.value).startswith(str(mirror / name)), str(caught.value)
    assert ".raw." not in str(caught.value)
    assert not (tmp_path / "data").exists()  # not even the parent is left behind


def test_split_without_download_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="run the download stage first"):
        write_split(tmp_path / "raw", tmp_path / "split", tmp_path / "test", data_config())
    assert not (tmp_path / "split").exists()
