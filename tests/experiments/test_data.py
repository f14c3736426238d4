"""Data modules: seeded splits, real digits, synthetic data, loaders."""

import pytest
import torch

from lens_train.errors import InvalidArgumentError
from lens_train.experiments.data import DigitsDataModule, ImageDataModule, SyntheticDataModule, split_indices


def test_split_is_a_partition_fixed_by_seed() -> None:
    a = split_indices(100, 0.1, 0.2, seed=3)
    b = split_indices(100, 0.1, 0.2, seed=3)
    c = split_indices(100, 0.1, 0.2, seed=4)
    assert [len(t) for t in a] == [70, 10, 20]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert sorted(torch.cat(a).tolist()) == list(range(100))


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_split_rejects_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(InvalidArgumentError, match="fraction"):
        split_indices(10, val, test, seed=0)


def test_digits_are_the_real_sklearn_digits() -> None:
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(batch_size=16, seed=0)
    raw = load_digits()
    # Every split sample is one of the original images, scaled to [0, 1], with its label.
    x, y = dm.train_set.tensors
    index = {tuple(img.flatten().tolist()): lab for img, lab in zip(raw.images / 16.0, raw.target)}
    for img, lab in zip(x[:50], y[:50]):
        assert index[tuple(img.flatten().double().tolist())] == lab
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1257, 270, 270)


def test_digits_split_depends_only_on_seed() -> None:
    a, b = DigitsDataModule(seed=1), DigitsDataModule(seed=1, batch_size=7)
    assert torch.equal(a.test_set.tensors[1], b.test_set.tensors[1])
    assert not torch.equal(a.test_set.tensors[1], DigitsDataModule(seed=2).test_set.tensors[1])


def test_loaders_batch_and_order() -> None:
    dm = SyntheticDataModule(num_samples=100, num_classes=5, batch_size=8)
    batches = list(dm.val_dataloader())
    assert [len(b[0]) for b in batches] == [8, 7]
    assert torch.equal(torch.cat([b[1] for b in batches]), dm.val_set.tensors[1])
    x, y = dm.example_batch(3)
    assert torch.equal(x, dm.val_set.tensors[0][:3]) and y.dtype == torch.int64


def test_synthetic_classes_are_separable_by_prototype() -> None:
    dm = SyntheticDataModule(num_samples=400, num_classes=4, noise=0.05, seed=0)
    x, y = dm.train_set.tensors
    means = torch.stack([x[y == c].mean(0) for c in range(4)]).flatten(1)
    nearest = torch.cdist(x.flatten(1), means).argmin(1)
    assert (nearest == y).float().mean() > 0.99


def test_num_classes_is_checked_against_labels() -> None:
    with pytest.raises(InvalidArgumentError, match=r"data.num_classes=2"):
        ImageDataModule(torch.zeros(10, 1, 8, 8), torch.arange(10) % 2, num_classes=3)


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        SyntheticDataModule(batch_size=0)
    with pytest.raises(InvalidArgumentError, match="num_samples"):
        SyntheticDataModule(num_samples=3, num_classes=10)


def test_train_fraction_keeps_a_seeded_subset_and_whole_eval_sets() -> None:
    from lens_train.experiments import DigitsDataModule

    full, part = DigitsDataModule(), DigitsDataModule(train_fraction=0.1)
    assert len(part.train_set) == round(len(full.train_set) * 0.1)
    assert torch.equal(part.test_set.tensors[1], full.test_set.tensors[1])
    assert torch.equal(part.train_set.tensors[0], DigitsDataModule(train_fraction=0.1).train_set.tensors[0])
    kept = {tuple(x.flatten().tolist()) for x in full.train_set.tensors[0]}
    assert all(tuple(x.flatten().tolist()) in kept for x in part.train_set.tensors[0])
    with pytest.raises(InvalidArgumentError, match="train_fraction must be in"):
        DigitsDataModule(train_fraction=0.0)
