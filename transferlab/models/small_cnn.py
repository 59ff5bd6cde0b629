"""The small networks `simple-cnn` and `small-resnet` train from scratch: their architecture alone (the
paradigms are in paradigms/simple_cnn.py, their saved form in models/modules.py).

VGG-style blocks (`convs_per_block` conv-BN-ReLU layers, then a 2×2 pool), optionally with a skip connection
around each block's convolutions (ResNet-style), then global average pooling, optional dense layers, dropout
and the classifier — the shape of study 002's baselines, as a Keras user would write them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # inputs scaled to about [-2, 2]
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def conv_bn_relu(channels: int, width: int, kernel: int, relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(channels, width, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(width)]
    return layers + [nn.ReLU(True)] if relu else layers


class ResidualBlock(nn.Module):
    """conv-BN-ReLU … conv-BN, plus the input (a 1×1 conv-BN where the width changes), then ReLU."""

    def __init__(self, channels: int, width: int, kernel: int, convs: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += conv_bn_relu(channels if i == 0 else width, width, kernel, relu=i < convs - 1)
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if channels == width else nn.Sequential(*conv_bn_relu(channels, width, 1,
                                                                                            relu=False))
        self.relu = nn.ReLU(True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def simple_cnn(widths: list[int], n_classes: int, dropout: float, *, kernel: int = 3, convs_per_block: int = 2,
               pool: str = "max", dense: list[int] | tuple[int, ...] = (), residual: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for width in widths:
        if residual:
            layers.append(ResidualBlock(channels, width, kernel, convs_per_block))
        else:
            for i in range(convs_per_block):
                layers += conv_bn_relu(channels if i == 0 else width, width, kernel)
        channels = width
        layers.append(POOLS[pool](2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    for units in dense:
        layers += [nn.Linear(channels, units), nn.ReLU(True), nn.Dropout(dropout)]
        channels = units
    if not dense:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(channels, n_classes))


def dense_weights(net: nn.Module) -> list[nn.Parameter]:
    """The dense layers' weights (what a Keras kernel_regularizer on them penalises), classifier included."""
    return [m.weight for m in net.modules() if isinstance(m, nn.Linear)]


def architecture(params: Any) -> dict[str, Any]:
    """The keyword arguments of `simple_cnn` a paradigm's params give (what the saved model records)."""
    return {"kernel": params.kernel, "convs_per_block": params.convs_per_block, "pool": params.pool,
            "dense": list(params.dense), "residual": params.residual}
