"""Cached activations for partial fine-tuning: frozen stages run once, not once per epoch.

With no input augmentation, the frozen bottom of the network maps each image to the same activation
every epoch; computing it once and training only the top is exact and several times faster (see
benchmarks/partial_finetune.py). Supported for timm models built stem → `blocks` → head (EfficientNet,
MobileNet, ...); `split_at_first_trainable_block` returns None for others, which then train as usual.
"""

from __future__ import annotations

import torch
from torch import nn


class Tail(nn.Module):
    """The upper blocks and the head of a stem → blocks → head timm model, from block `first` on."""

    def __init__(self, net: nn.Module, first: int):
        super().__init__()
        self.net, self.first = net, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.net.blocks[self.first:]:
            x = block(x)
        return self.net.forward_head(self.net.bn2(self.net.conv_head(x)))


def split_at_first_trainable_block(net: nn.Module) -> tuple[nn.Sequential, Tail] | None:
    """(frozen bottom, trainable top) when every trainable parameter sits at or above some block k > 0."""
    if not all(hasattr(net, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head")):
        return None
    trainable = [name for name, p in net.named_parameters() if p.requires_grad]
    top = ("blocks.", "conv_head.", "bn2.", "classifier.")
    if not trainable or not all(name.startswith(top) for name in trainable):
        return None
    in_blocks = [int(name.split(".")[1]) for name in trainable if name.startswith("blocks.")]
    first = min(in_blocks) if in_blocks else len(net.blocks)
    if first == 0:
        return None
    return nn.Sequential(net.conv_stem, net.bn1, *net.blocks[:first]).eval(), Tail(net, first)


@torch.no_grad()
def activations(bottom: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    bottom.to(device).eval()
    return torch.cat([bottom(chunk.to(device)).cpu() for chunk in images.split(batch_size)])
