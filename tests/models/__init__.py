"""Small models shared by the tests (the TorchLens README examples, written for this suite)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class SmallAlexNet(nn.Module):
    """AlexNet's exact layer sequence with narrow channels, for label tests."""

    def __init__(self, num_classes: int = 10, c: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, c, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c, c, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c, c, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(c * 36, 32), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class DemoNetwork(nn.Module):
    """Module ops, functional ops, a random tensor, a power, a division and a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.fc = nn.Linear(5, 5)
        self.register_buffer("example_buffer", torch.ones(5) * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 1
        x = self.relu(x)
        x = self.fc(x)
        x = F.relu(x)
        x = x + torch.randn(x.shape)
        y = x ** 2
        x = x / y
        x = x * self.example_buffer
        return x


class SimpleRecurrent(nn.Module):
    """One Linear applied four times in a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(4):
            x = self.fc(x)
            x = x + 1
            x = x * 2
        return x


class TanhLoop(nn.Module):
    """One Linear ``cell`` applied ``steps`` times, each followed by tanh: a weight-shared loop."""

    def __init__(self, d: int = 3, steps: int = 3) -> None:
        super().__init__()
        self.cell = nn.Linear(d, d)
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            x = torch.tanh(self.cell(x))
        return x


@dataclass
class EncoderOutput:
    """What a Hugging Face model returns: a dataclass of tensors (like ``transformers.ModelOutput``)."""

    last_hidden_state: torch.Tensor
    logits: torch.Tensor


class TinyHFEncoder(nn.Module):
    """A Hugging Face-style encoder, called as ``model(input_ids=..., attention_mask=...)``.

    Token and position embeddings, one attention layer whose scores get the usual
    additive mask from ``attention_mask`` (1 = token, 0 = padding), a masked mean pool
    and a classifier.
    """

    def __init__(self, vocab_size: int = 30, d: int = 8, heads: int = 2, num_labels: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.embed_tokens = nn.Embedding(vocab_size, d)
        self.embed_positions = nn.Embedding(16, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor, torch.Tensor]:
        b, n = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.embed_tokens(input_ids) + self.embed_positions(torch.arange(n, device=input_ids.device))
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.qkv(h).chunk(3, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores + (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -10000.0
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        h = self.norm(h + self.out_proj(context))
        keep = attention_mask[..., None].to(h.dtype)
        logits = self.classifier((h * keep).sum(1) / keep.sum(1))
        return EncoderOutput(h, logits) if return_dict else (h, logits)


def hf_inputs(batch: int = 2, length: int = 5) -> dict[str, torch.Tensor]:
    """``input_ids`` and an ``attention_mask`` whose second sequence ends in two padding tokens."""
    ids = torch.randint(1, 30, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


ALEXNET_LABELS = [
    "input_1_0", "conv2d_1_1", "relu_1_2", "maxpool2d_1_3", "conv2d_2_4", "relu_2_5", "maxpool2d_2_6",
    "conv2d_3_7", "relu_3_8", "conv2d_4_9", "relu_4_10", "conv2d_5_11", "relu_5_12", "maxpool2d_3_13",
    "adaptiveavgpool2d_1_14", "flatten_1_15", "dropout_1_16", "linear_1_17", "relu_6_18", "dropout_2_19",
    "linear_2_20", "relu_7_21", "linear_3_22", "output_1_23",
]


class InPlaceViews(nn.Module):
    """In-place ops on views: each also changes the view's base, which the log records as one more layer.

    ``tail(y)`` is everything after ``y = fc(x) * 1`` (labels ``mul_1_2`` for y,
    ``getitem_1_3`` / ``mul_2_4`` for the view before / after ``mul_``, ``mul_3_5`` for y
    after it). With ``retain = True``, ``seen["y"]`` is y after that op, retaining its
    gradient: a reference computed by autograd itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.retain = False
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.fc(x) * 1)

    def tail(self, y: torch.Tensor) -> torch.Tensor:
        v = y[0]
        v.mul_(3)  # the view's mul, then the log's mul of y
        if self.retain:
            y.retain_grad()
            self.seen["y"] = y
        z = y + 1
        z[1].zero_()
        z.narrow(1, 0, 2).add_(3)
        z.mul_(2)  # on z itself (no view): one record
        return z.relu().sum(0) * torch.arange(4.0) + v.exp()
