"""The small VGG-style network `simple-cnn` trains from scratch: its architecture alone (the paradigm is in
paradigms/simple_cnn.py, its saved form in models/modules.py)."""

from __future__ import annotations

from torch import nn

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # inputs scaled to about [-2, 2]


def simple_cnn(widths: list[int], n_classes: int, dropout: float) -> nn.Sequential:
    layers, channels = [], 3
    for width in widths:
        for _ in range(2):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
            channels = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(channels, n_classes))
