"""The digit DataModules, on data the tests make themselves (no network, no shared folders)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from manualbp.data import IDX_FILES, DigitsDataModule, EpochShuffler, MNISTDataModule, check_idx_file


def write_idx(path: Path, array: torch.Tensor) -> None:
    """An uncompressed IDX file of unsigned bytes, as MNIST ships them."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def make_mnist(root: Path, folder: str = "MNIST", n_train: int = 120, n_test: int = 30) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=g))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(n) % 10)
    return raw


def test_mnist_from_idx_files_with_capped_validation(tmp_path):
    make_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.val_set) == 120 // 12  # val_size=5000 capped at a twelfth of the training images
    assert len(dm.train_set) == 120 - 10 and len(dm.test_set) == 30
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.long
    train_images = dm.train_set.tensors[0]
    assert abs(train_images.mean().item()) < 1e-5 and abs(train_images.std().item() - 1) < 1e-5
    assert torch.equal(dm.test_set.tensors[1], torch.arange(30) % 10)


def test_mnist_fractional_validation_and_other_datasets(tmp_path):
    make_mnist(tmp_path, folder="FashionMNIST")
    dm = MNISTDataModule(data_dir=str(tmp_path), dataset="fashion_mnist", val_size=0.25, download=False)
    dm.setup()
    assert len(dm.val_set) == 30 and len(dm.train_set) == 90


def test_mnist_split_is_seeded(tmp_path):
    make_mnist(tmp_path)
    splits = []
    for seed in (0, 0, 1):
        dm = MNISTDataModule(data_dir=str(tmp_path), download=False, val_size=0.5, seed=seed)
        dm.setup()
        splits.append(dm.val_set.tensors[0])
    assert torch.equal(splits[0], splits[1]) and not torch.equal(splits[0], splits[2])


def test_missing_files_say_where_which_and_how(tmp_path):
    raw = make_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert str(raw.resolve()) in message
    assert "t10k-labels-idx1-ubyte" in message and "train-images-idx3-ubyte" not in message
    assert "--data.data_dir" in message and "--data.download" in message


@pytest.mark.parametrize("damage", ["truncate", "append", "magic"])
def test_corrupt_idx_file_is_named(tmp_path, damage):
    raw = make_mnist(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[:-100], "append": data + b"\0", "magic": b"\x12\x34" + data[2:]}[damage])
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        dm.setup()


def _fake_download(fail_with: BaseException | None):
    """A stand-in for torchvision's MNIST.download (no network): writes the four IDX files into the dataset's
    raw folder, or, with ``fail_with``, one whole file and half of the next, then raises it."""

    def download(dataset) -> None:
        raw = Path(dataset.raw_folder)
        if fail_with is None:
            make_mnist(Path(dataset.root))
            return
        raw.mkdir(parents=True)
        write_idx(raw / "train-images-idx3-ubyte", torch.zeros(12, 28, 28))
        (raw / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x0c\0\0")  # 2 of 12 labels
        raise fail_with

    return download


@pytest.mark.parametrize(
    "failure", [RuntimeError("connection reset by peer"), KeyboardInterrupt()], ids=["error", "interrupt"]
)
def test_failed_download_leaves_nothing_in_the_data_folder(tmp_path, monkeypatch, failure):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _fake_download(failure))
    data_dir = tmp_path / "data"
    dm = MNISTDataModule(data_dir=str(data_dir))
    with pytest.raises(FileNotFoundError if isinstance(failure, Exception) else KeyboardInterrupt) as error:
        dm.prepare_data()
    assert list(data_dir.rglob("*")) == []
    if isinstance(failure, Exception):
        message = str(error.value)
        assert "the download failed (connection reset by peer)" in message
        assert all(name in message for name in IDX_FILES) and str(dm.raw_folder.resolve()) in message


def test_download_adds_only_the_missing_files_once_all_are_checked(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _fake_download(None))
    raw = make_mnist(tmp_path)
    (raw / "t10k-images-idx3-ubyte").unlink()
    kept = {name: (raw / name).stat().st_ino for name in IDX_FILES if (raw / name).exists()}
    dm = MNISTDataModule(data_dir=str(tmp_path), batch_size=16)
    dm.prepare_data()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST"]  # the download folder is gone
    assert sorted(p.name for p in raw.iterdir()) == sorted(IDX_FILES)
    assert {name: (raw / name).stat().st_ino for name in kept} == kept  # the files that were there stay
    dm.setup()
    assert len(dm.test_set) == 30


def test_missing_file_without_prepare_data_says_so(tmp_path):
    raw = make_mnist(tmp_path)
    (raw / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="missing train-labels-idx1-ubyte; they have not been downloaded"):
        MNISTDataModule(data_dir=str(tmp_path)).setup()


def test_check_idx_file_returns_the_declared_shape(tmp_path):
    raw = make_mnist(tmp_path, n_train=7)
    assert check_idx_file(raw / "train-images-idx3-ubyte") == (7, 28, 28)
    assert check_idx_file(raw / "train-labels-idx1-ubyte") == (7,)


def test_digits_splits_shapes_and_normalisation():
    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    sizes = len(dm.train_set), len(dm.val_set), len(dm.test_set)
    assert sum(sizes) == 1797 and sizes[2] == round(1797 * 0.2) and sizes[1] == round(1797 * 0.1)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 8, 8) and set(labels.tolist()) <= set(range(10))
    assert abs(dm.train_set.tensors[0].mean().item()) < 1e-5
    other = DigitsDataModule(seed=1)
    other.setup()
    assert not torch.equal(dm.test_set.tensors[1], other.test_set.tensors[1])


def test_training_order_is_a_function_of_seed_and_epoch():
    dm = DigitsDataModule()
    dm.setup()
    n = len(dm.train_set)
    sampler = dm.train_dataloader().sampler
    epoch0, epoch1 = list(sampler), list(sampler)  # a plain loop that never calls set_epoch
    assert sorted(epoch0) == sorted(epoch1) == list(range(n)) and epoch0 != epoch1
    restarted = DigitsDataModule()
    restarted.setup()
    resumed = restarted.train_dataloader().sampler
    resumed.set_epoch(1)  # what Lightning does when a fit resumes at epoch 1
    assert list(resumed) == epoch1
    shares = [EpochShuffler(dm.train_set, num_replicas=2, rank=rank, seed=0) for rank in (0, 1)]
    for share in shares:
        share.set_epoch(1)
    assert [i for pair in zip(*map(list, shares)) for i in pair] == epoch1  # DDP ranks split one order


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="dataset must be one of"):
        MNISTDataModule(dataset="cifar")
    with pytest.raises(ValueError, match="fractional val_size"):
        MNISTDataModule(val_size=1.5)
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=0.5, test_fraction=0.6)
