"""Small models shared by the tests (the TorchLens README examples, written for this suite)."""

from __future__ import annotations

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


ALEXNET_LABELS = [
    "input_1_0", "conv2d_1_1", "relu_1_2", "maxpool2d_1_3", "conv2d_2_4", "relu_2_5", "maxpool2d_2_6",
    "conv2d_3_7", "relu_3_8", "conv2d_4_9", "relu_4_10", "conv2d_5_11", "relu_5_12", "maxpool2d_3_13",
    "adaptiveavgpool2d_1_14", "flatten_1_15", "dropout_1_16", "linear_1_17", "relu_6_18", "dropout_2_19",
    "linear_2_20", "relu_7_21", "linear_3_22", "output_1_23",
]
