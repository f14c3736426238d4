"""Data for the experiments: scikit-learn's ``digits`` and a synthetic stand-in.

Both give ``(image, label)`` batches with images of shape ``(1, 8, 8)`` (float32 in
``[0, 1]``) so every experiment model reads either. The train/val/test split is a
pure function of ``seed``: the same seed gives the same split on every machine.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import InvalidArgumentError


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded permutation of ``range(n)`` cut into train, val and test indices.

    Example:
        >>> train, val, test = split_indices(10, 0.2, 0.2, seed=0)
        >>> len(train), len(val), len(test)
        (6, 2, 2)
        >>> sorted(torch.cat([train, val, test]).tolist()) == list(range(10))
        True
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise InvalidArgumentError(f"{name} must be in [0, 1), got {value!r}. Example: {name}=0.15.")
    if val_fraction + test_fraction >= 1.0:
        raise InvalidArgumentError(
            f"val_fraction + test_fraction must leave training data, got {val_fraction} + {test_fraction}. "
            "Example: val_fraction=0.15, test_fraction=0.15."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 scikit-learn digits as ``(N, 1, 8, 8)`` floats in [0, 1] and int64 labels.

    Example:
        >>> x, y = digits_tensors()
        >>> tuple(x.shape), int(y.max()), float(x.max())
        ((1797, 1, 8, 8), 9, 1.0)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("The digits data needs scikit-learn: pip install 'lens-train[experiments]'.") from exc
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.as_tensor(digits.target, dtype=torch.int64)


def synthetic_tensors(num_samples: int, num_classes: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-conditional Gaussian images ``(N, 1, 8, 8)``: one random prototype per class plus noise.

    Example:
        >>> x, y = synthetic_tensors(100, 4, noise=0.1, seed=0)
        >>> tuple(x.shape), sorted(set(y.tolist()))
        ((100, 1, 8, 8), [0, 1, 2, 3])
    """
    if num_samples < num_classes or num_classes < 2:
        raise InvalidArgumentError(
            f"synthetic data needs num_classes >= 2 and num_samples >= num_classes, got num_samples={num_samples}, "
            f"num_classes={num_classes}. Example: data.num_samples=512 data.num_classes=10."
        )
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 1, 8, 8, generator=gen)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=gen)]
    images = prototypes[labels] + noise * torch.randn(num_samples, 1, 8, 8, generator=gen)
    return images, labels


class ImageDataModule(L.LightningDataModule):
    """A LightningDataModule over in-memory ``(images, labels)`` with a seeded split.

    Args:
        images: ``(N, C, H, W)`` float tensor.
        labels: ``(N,)`` int64 class labels.
        batch_size: batch size of every loader.
        val_fraction: share of the samples held out for validation.
        test_fraction: share of the samples held out for testing.
        seed: fixes the split (and nothing else).
        num_workers: DataLoader workers (0 is fastest for data this small).
        train_fraction: train on this share of the training split (a subset fixed by
            ``seed``); validation and test sets stay whole. Few labels are where
            distillation from a teacher trained on all of them pays off.
        num_classes: the number of classes the caller expects (checked against the labels);
            ``None`` takes it from the labels.

    Example:
        >>> dm = ImageDataModule(torch.zeros(20, 1, 8, 8), torch.arange(20) % 2, batch_size=4)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), dm.num_classes
        ((4, 1, 8, 8), 2)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, seed: int = 0, num_workers: int = 0, num_classes: int | None = None,
                 train_fraction: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < train_fraction <= 1.0:
            raise InvalidArgumentError(f"train_fraction must be in (0, 1], got {train_fraction!r}. Example: data.train_fraction=0.1.")
        if len(images) != len(labels):
            raise InvalidArgumentError(f"images and labels differ in length: {len(images)} vs {len(labels)}.")
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size!r}. Example: data.batch_size=64.")
        self.images, self.labels = images, labels
        self.batch_size, self.num_workers = batch_size, num_workers
        self.num_classes = int(labels.max()) + 1
        if num_classes is not None and num_classes != self.num_classes:
            raise InvalidArgumentError(
                f"num_classes={num_classes} does not match the data, whose labels run 0..{self.num_classes - 1}. "
                f"Set data.num_classes={self.num_classes}."
            )
        idx = list(split_indices(len(labels), val_fraction, test_fraction, seed))
        if train_fraction < 1.0:
            keep = torch.randperm(len(idx[0]), generator=torch.Generator().manual_seed(seed + 1))
            idx[0] = idx[0][keep[: max(1, round(len(idx[0]) * train_fraction))].sort().values]
        self.train_set, self.val_set, self.test_set = (TensorDataset(images[i], labels[i]) for i in idx)

    def setup(self, stage: str | None = None) -> None:
        """Nothing to do: the data is in memory and split at construction."""

    def example_batch(self, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` validation samples: a fixed batch for captures and graphs."""
        return self.val_set.tensors[0][:n], self.val_set.tensors[1][:n]

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (the order follows Lightning's seed)."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self._loader(self.test_set, shuffle=False)

    def _loader(self, dataset: TensorDataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 8x8 ``digits`` (1797 images, 10 classes), split 70/15/15 by ``seed``.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> len(dm.train_set), len(dm.val_set), len(dm.test_set), dm.num_classes
        (1257, 270, 270, 10)
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                 num_workers: int = 0, num_classes: int = 10, train_fraction: float = 1.0) -> None:
        images, labels = digits_tensors()
        super().__init__(images, labels, batch_size, val_fraction, test_fraction, seed, num_workers, num_classes,
                         train_fraction)


class SyntheticDataModule(ImageDataModule):
    """Synthetic 8x8 class-prototype images: a fast stand-in for digits with a tunable difficulty.

    Example:
        >>> dm = SyntheticDataModule(num_samples=200, num_classes=4)
        >>> len(dm.train_set) + len(dm.val_set) + len(dm.test_set), dm.num_classes
        (200, 4)
    """

    def __init__(self, num_samples: int = 1024, num_classes: int = 10, noise: float = 0.3, batch_size: int = 64,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0, num_workers: int = 0) -> None:
        images, labels = synthetic_tensors(num_samples, num_classes, noise, seed)
        super().__init__(images, labels, batch_size, val_fraction, test_fraction, seed, num_workers, num_classes)
