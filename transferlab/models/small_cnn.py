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


def conv_bn_relu(channels: int, width: int, kernel: int, relu: bool = True,
                 batch_norm: bool = True) -> list[nn.Module]:
    """conv → BN → ReLU (without BN the convolution has a bias, as Keras's Conv2D)."""
    layers = [nn.Conv2d(channels, width, kernel, padding=kernel // 2, bias=not batch_norm)]
    layers += [nn.BatchNorm2d(width)] if batch_norm else []
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


def simple_cnn(widths: list[int], n_classes: int, dropout: float, *, kernel: int = 3,
               convs_per_block: int | list[int] = 2, pool: str = "max", dense: list[int] | tuple[int, ...] = (),
               residual: bool = False, batch_norm: bool = True, top: str = "avg",
               image_size: int | None = None) -> nn.Sequential:
    """Blocks of `convs_per_block` (one number, or one per block) conv[-BN]-ReLU layers each ending in a 2×2 pool;
    then `top`: global average pooling, or `flatten` of the last map (Keras's Flatten: needs `image_size`)."""
    layers: list[nn.Module] = []
    channels = 3
    convs = convs_per_block if isinstance(convs_per_block, list) else [convs_per_block] * len(widths)
    for width, n_convs in zip(widths, convs, strict=True):
        if residual:
            layers.append(ResidualBlock(channels, width, kernel, n_convs))
        else:
            for i in range(n_convs):
                layers += conv_bn_relu(channels if i == 0 else width, width, kernel, batch_norm=batch_norm)
        channels = width
        layers.append(POOLS[pool](2))
    if top == "flatten":
        side = image_size // 2 ** len(widths)
        layers.append(nn.Flatten())
        channels *= side * side
    else:
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
    chosen = {"kernel": params.kernel, "convs_per_block": params.convs_per_block, "pool": params.pool,
              "dense": list(params.dense), "residual": params.residual}
    if not params.batch_norm or params.top != "avg":  # models saved before these options existed lack them
        chosen.update(batch_norm=params.batch_norm, top=params.top, image_size=params.image_size)
    return chosen
