"""LightningDataModules for digit recognition.

``DigitsDataModule``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), offline; the default.
``MNISTDataModule``: torchvision's MNIST, FashionMNIST or KMNIST (28x28) read from ``data_dir``.

Both hold their splits as tensors (N, 1, H, W) float32, standardised with the training split's mean
and standard deviation, and split with a seeded generator, so a run is reproducible. The training order of
each epoch is a function of (seed, epoch) alone, so a run resumed from a checkpoint sees the same batches as
one that never stopped, and under DDP the ranks share each epoch's order out among them.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset, random_split

from manualbp.functional._validation import check_int

DatasetName = Literal["mnist", "fashion_mnist", "kmnist"]

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class EpochShuffler(DistributedSampler):
    """A ``DistributedSampler`` (its order a function of ``seed + epoch``, shared out among the ranks) that
    moves on to the next epoch after each pass, so that a plain loop over the loader that never calls
    ``set_epoch`` still gets a new order every epoch.

    Being a ``DistributedSampler``, Lightning keeps it under DDP rather than wrapping it in its own.
    """

    def __iter__(self) -> Iterator[int]:
        indices = super().__iter__()
        self.epoch += 1
        return indices


class TensorDataModule(pl.LightningDataModule):
    """Base of the digit DataModules: train/val/test splits held as TensorDatasets, filled in ``setup``.

    ``in_shape`` (C, H, W) and ``num_classes`` describe the data; the ``manualbp`` command links them to the model.
    """

    in_shape: tuple[int, int, int]
    num_classes: int = 10
    default_batch_size: int

    def __init__(self, batch_size: int | None, num_workers: int, seed: int) -> None:
        super().__init__()
        name = type(self).__name__
        # None stands for the module's own default: jsonargparse would carry the digits' batch size over
        # to --data=MNISTDataModule (jsonargparse issue #460) if it were a number in the signature.
        batch_size = self.default_batch_size if batch_size is None else batch_size
        check_int(name, "batch_size", batch_size, 1)
        check_int(name, "num_workers", num_workers, 0)
        check_int(name, "seed", seed, 0)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def _set_splits(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        """Standardise every split with the training images' mean and std, and store them."""
        mean, std = train[0].mean(), train[0].std()
        self.train_set, self.val_set, self.test_set = (
            TensorDataset((images - mean) / std, labels) for images, labels in (train, val, test)
        )

    def _loader(self, dataset: TensorDataset | None, shuffle: bool) -> DataLoader:
        """A loader over ``dataset``, in the order of ``_shuffler`` when ``shuffle``, else in index order.

        Its own generator (it seeds the worker processes) keeps the loader from drawing on the global RNG,
        so iterating the data does not move the random stream that dropout draws from.
        """
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self._shuffler(dataset) if shuffle else None,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=self.num_workers > 0,
        )

    def _shuffler(self, dataset: TensorDataset) -> EpochShuffler:
        """This process's share of a random order of ``dataset`` drawn from ``seed + epoch`` alone.

        Given the trainer's world size and rank (1 and 0 in a single process or with no trainer), so every
        rank cuts its share from the same order. Lightning calls ``set_epoch`` before each epoch, but a loader
        with workers draws its first indices when its iterator is made, before that call (Lightning issue
        #21938); so the sampler starts at the epoch the fit loop is about to run, after a restart the
        checkpoint's next one.
        """
        trainer = self.trainer
        world_size, rank, epoch = (
            # epoch_progress.current is a _ProcessedTracker; Lightning annotates it as its base, without processed
            (trainer.world_size, trainer.global_rank, trainer.fit_loop.epoch_progress.current.processed)  # type: ignore[attr-defined]
            if trainer is not None
            else (1, 0, 0)
        )
        sampler = EpochShuffler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        return sampler

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class DigitsDataModule(TensorDataModule):
    """scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels (values 0..16), 10 classes.

    Split with a seeded permutation into test (``test_fraction``), validation (``val_fraction``) and
    training sets. Works offline: the data ships with scikit-learn.

    Args:
        batch_size: Images per batch (None: 64).
        val_fraction: Fraction of the images held out for validation.
        test_fraction: Fraction of the images held out for testing.
        num_workers: Worker processes per data loader (0: load in the main process).
        seed: Seed of the split and of the shuffling of each epoch.
    """

    in_shape = (1, 8, 8)
    default_batch_size = 64

    def __init__(
        self,
        batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"DigitsDataModule: val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must lie in "
                "(0, 1) and leave images for training"
            )
        self.save_hyperparameters()
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        n_test = round(len(labels) * self.test_fraction)
        n_val = round(len(labels) * self.val_fraction)
        test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
        self._set_splits((images[train], labels[train]), (images[val], labels[val]), (images[test], labels[test]))


class MNISTDataModule(TensorDataModule):
    """torchvision's MNIST, FashionMNIST or KMNIST: 28x28 grey images, 10 classes.

    Reads ``data_dir`` in torchvision's layout (``<data_dir>/MNIST/raw/train-images-idx3-ubyte`` and the
    other three IDX files), downloading them first when absent and ``download`` is true. The official test
    set is the test split; the validation split is taken from the training images with a seeded split:
    ``val_size`` images (an int, capped at a twelfth of the training images, which is 5,000 of 60,000), or a
    fraction of them (a float below 1).

    Args:
        data_dir: Folder holding <Dataset>/raw/ with the four IDX files, in torchvision's layout.
        dataset: Which of the three 28x28 datasets to read.
        val_size: Training images held out for validation: a count, or a fraction below 1.
        download: Download the IDX files when they are missing from data_dir.
        batch_size: Images per batch (None: 128).
        num_workers: Worker processes per data loader (0: load in the main process).
        seed: Seed of the validation split and of the shuffling of each epoch.
    """

    in_shape = (1, 28, 28)
    default_batch_size = 128

    def __init__(
        self,
        data_dir: str = "./data",
        dataset: DatasetName = "mnist",
        val_size: int | float = 5000,
        download: bool = True,
        batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if dataset not in _TORCHVISION_CLASSES:
            raise ValueError(f"MNISTDataModule: dataset must be one of {sorted(_TORCHVISION_CLASSES)}, got {dataset!r}")
        if isinstance(val_size, float) and not 0 < val_size < 1:
            raise ValueError(f"MNISTDataModule: a fractional val_size must lie in (0, 1), got {val_size}")
        if val_size <= 0:
            raise ValueError(f"MNISTDataModule: val_size must be positive, got {val_size}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.dataset = dataset
        self.val_size = val_size
        self.download = download

    @property
    def raw_folder(self) -> Path:
        """Where the four IDX files are read from: ``data_dir/<dataset's torchvision class>/raw``."""
        return Path(self.data_dir) / _TORCHVISION_CLASSES[self.dataset] / "raw"

    def _torchvision_dataset(self, root: str | Path, train: bool, download: bool) -> Any:  # torchvision: untyped
        import torchvision

        cls = getattr(torchvision.datasets, _TORCHVISION_CLASSES[self.dataset])
        return cls(root, train=train, download=download)

    def _missing_files(self) -> list[str]:
        return [name for name in IDX_FILES if not (self.raw_folder / name).exists()]

    def _missing_error(self, cause: BaseException | None) -> DataNotFoundError:
        if not self.download:
            why, other_way = (
                "downloading was not allowed (download=False)",
                "allow the download with --data.download=true",
            )
        elif cause is not None:
            why, other_way = (
                f"the download failed ({' '.join(str(cause).split())})",
                "download on a machine with internet access",
            )
        else:
            why, other_way = (
                "they have not been downloaded (prepare_data() downloads them)",
                "call prepare_data() first",
            )
        return DataNotFoundError(
            f"MNISTDataModule: {self.dataset} not found in {self.raw_folder.resolve()}: missing "
            f"{', '.join(self._missing_files())}; {why}. Point --data.data_dir at a folder holding "
            f"{_TORCHVISION_CLASSES[self.dataset]}/raw/ with the four IDX files (torchvision's layout), or {other_way}."
        )

    def prepare_data(self) -> None:
        """Download the IDX files missing from ``raw_folder``, when ``download`` allows it.

        torchvision downloads into a temporary folder inside ``data_dir``; the missing files move into
        ``raw_folder`` (each an atomic rename) only once all four have arrived and pass ``check_idx_file``,
        and the temporary folder is removed whatever happens, so a failed download leaves no partial file, and
        no ``data_dir`` either when it did not exist before. torchvision's messages on the way (each URL
        tried) are kept back; what went wrong is in the error.
        """
        missing = self._missing_files()
        if not missing:
            return
        if not self.download:
            raise self._missing_error(None)
        created = _first_missing_folder(Path(self.data_dir))
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self.data_dir))
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                staged = self._download_checked(staging)
            self.raw_folder.mkdir(parents=True, exist_ok=True)
            for name in missing:
                os.replace(staged / name, self.raw_folder / name)
        except Exception as error:  # torchvision raises several kinds on a failed download
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise self._missing_error(error) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _download_checked(self, root: Path) -> Path:
        """Download the four IDX files with torchvision into ``root`` and check each; return their folder."""
        self._torchvision_dataset(root, train=False, download=True)  # fetches all four files, whatever train says
        folder = root / _TORCHVISION_CLASSES[self.dataset] / "raw"
        for name in IDX_FILES:
            check_idx_file(folder / name)
        return folder

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        for name in IDX_FILES:
            path = self.raw_folder / name
            if not path.exists():
                raise self._missing_error(None)
            check_idx_file(path)
        train_images, train_labels = self._load(train=True)
        test = self._load(train=False)
        n_val = self._validation_count(len(train_labels))
        generator = torch.Generator().manual_seed(self.seed)
        train_idx, val_idx = random_split(
            cast("Dataset[int]", range(len(train_labels))),  # a range serves: random_split reads it by index
            [len(train_labels) - n_val, n_val],
            generator=generator,
        )
        # a split of range(n) holds its indices themselves
        train_idx, val_idx = torch.tensor(train_idx.indices), torch.tensor(val_idx.indices)
        self._set_splits(
            (train_images[train_idx], train_labels[train_idx]), (train_images[val_idx], train_labels[val_idx]), test
        )

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        data = self._torchvision_dataset(self.data_dir, train, download=False)
        return data.data.unsqueeze(1).float() / 255.0, data.targets.long()

    def _validation_count(self, n_train: int) -> int:
        if isinstance(self.val_size, float):
            return max(1, math.floor(n_train * self.val_size))
        return max(1, min(int(self.val_size), n_train // 12))


class DataNotFoundError(FileNotFoundError):
    """The data a data module needs is not where it looks, and could not be downloaded there."""


def _first_missing_folder(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or None if ``path`` exists."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}

_IDX_ITEM_SIZES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def check_idx_file(path: str | Path) -> tuple[int, ...]:
    """Validate an uncompressed IDX file's header against its size; return the shape it declares.

    Raises ValueError naming the file when the magic number is wrong or the file is shorter or longer
    than its header promises (a truncated download, a corrupt copy).
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[0] != 0 or header[1] != 0 or header[2] not in _IDX_ITEM_SIZES:
            raise ValueError(
                f"{path}: not an IDX file (bad magic number {header.hex() or 'empty file'}); re-download it"
            )
        ndim = header[3]
        dims_bytes = f.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX file ({size} bytes, header cut short); re-download it")
    shape = tuple(int.from_bytes(dims_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + math.prod(shape) * _IDX_ITEM_SIZES[header[2]]
    if size != expected:
        state = "truncated" if size < expected else "corrupt (longer than its header says)"
        raise ValueError(
            f"{path}: {state} IDX file: its header declares shape {shape}, which needs {expected} bytes, "
            f"but the file has {size}; re-download it"
        )
    return shape
