"""Cases for how inputs come in and outputs go out: containers, keywords, nesting."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import zoo
from .tensor_ops import Lambda, x34


class ListInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return sum(self.fc(x) for x in xs)


class DictInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.fc(batch["image"]) * batch["scale"] + batch["nested"]["bias"]


class KwargsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        h = self.fc(x) / temperature
        return h.masked_fill(~mask, -1e4).softmax(-1) if mask is not None else h


@dataclass
class Pair:
    left: torch.Tensor
    right: torch.Tensor


zoo("input_list")(lambda: (ListInput(), [x34(), x34(), x34()]))
zoo("input_tuple")(lambda: (Lambda(lambda m, a, b: a @ b.T), (x34(), x34())))
zoo("input_dict")(lambda: (DictInput(), ({"image": x34(), "scale": torch.tensor(2.0), "nested": {"bias": torch.randn(2)}},)))
zoo("input_nested")(lambda: (Lambda(lambda m, pairs: pairs[0][0] * pairs[0][1] + pairs[1]["z"]), ([(x34(), x34()), {"z": x34()}],)))
zoo("input_kwargs")(lambda: (KwargsInput(), (x34(),), {"mask": torch.rand(3, 4) > 0.3, "temperature": 2.0}))
zoo("input_non_tensor_args")(lambda: (Lambda(lambda m, x, k, name: x.topk(k, dim=1).values * len(name)), (x34(), 2, "ab")))

zoo("output_tuple")(lambda: (Lambda(lambda m, x: (x.sin(), x.cos())), x34()))
zoo("output_list")(lambda: (Lambda(lambda m, x: [x * i for i in range(3)]), x34()))
zoo("output_dict")(lambda: (Lambda(lambda m, x: {"logits": x.relu(), "aux": {"norm": x.norm()}}), x34()))
zoo("output_nested")(lambda: (Lambda(lambda m, x: (x.exp(), [x.abs(), {"y": (x.tanh(),)}])), x34()))
zoo("output_dataclass")(lambda: (Lambda(lambda m, x: Pair(x + 1, x - 1)), x34()))
zoo("output_same_tensor_twice")(lambda: (Lambda(lambda m, x: (x * 2,) * 2), x34()))
