"""Structured values: rebuilt with their types (namedtuple, dataclass, ModelOutput-like)."""

from collections import OrderedDict, namedtuple
from dataclasses import dataclass

import torch

from lens_train.train.structures import main_tensor, map_tensors, select_item, tensor_leaves, zip_tensors


@dataclass
class FakeModelOutput(OrderedDict):
    logits: torch.Tensor = None
    hidden: tuple = None

    def __post_init__(self) -> None:
        for k in ("logits", "hidden"):
            if getattr(self, k) is not None:
                self[k] = getattr(self, k)


def test_structures_keep_types() -> None:
    Pair = namedtuple("Pair", "a b")
    value = FakeModelOutput(torch.ones(2), (torch.zeros(1), Pair(torch.ones(1), 3)))
    doubled = map_tensors(value, lambda t: t * 2)
    assert type(doubled) is FakeModelOutput and isinstance(doubled.hidden[1], Pair)
    assert torch.equal(doubled["logits"], torch.full((2,), 2.0)) and doubled.hidden[1].b == 3
    assert len(tensor_leaves(value)) == 3
    assert main_tensor(value) is value.logits and select_item(value, "hidden") is value.hidden
    stacked = zip_tensors([value, doubled], torch.stack)
    assert stacked.logits.shape == (2, 2)
