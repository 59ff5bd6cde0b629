"""Cached activations for partial fine-tuning: the frozen bottom of a network runs once, not once per epoch.

With no input augmentation, a frozen prefix of the network maps each image to the same activation every
epoch; computing it once and training only the rest is exact and several times faster (see
benchmarks/partial_finetune.py). This works for any network whose forward is a chain of its own modules:
timm's `forward_features` (or, without it, the whole forward, as torchvision's ResNet / VGG / AlexNet run)
as its top-level children in call order, containers of blocks (`blocks`, `layer3`, `stages`, `features`)
opened one level so a cut can fall between blocks. A dry run checks that the chain computes what the
network computes; where it does not (functional steps between modules, a module called twice, ViT's
position embedding), or where the first module already trains, `split_at_frozen_prefix` returns None and
the network trains with its full forward. torch.fx would split more graphs, but timm's models do not all
trace, and this check makes a wrong split impossible rather than unlikely.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCK_CONTAINERS = (nn.Sequential, nn.ModuleList)


class Top(nn.Module):
    """The units of the chain from `first` on, then the network's own head (timm's `forward_head`)."""

    def __init__(self, net: nn.Module, units: list[tuple[str, nn.Module]], first: int):
        super().__init__()
        self.net, self.first = net, units[first][0] if first < len(units) else "head"
        self.units = [module for _, module in units[first:]]  # plain list: `net` registers them already

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_chain(self.units, x)
        head = getattr(self.net, "forward_head", None)
        return head(x) if head is not None else x


def run_chain(units: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for unit in units:
        if x.ndim > 2 and _starts_with_linear(unit):  # torchvision's torch.flatten(x, 1) before its classifier
            x = x.flatten(1)
        x = unit(x)
    return x


def _starts_with_linear(module: nn.Module) -> bool:
    for leaf in module.modules():
        if isinstance(leaf, nn.Linear):
            return True
        if isinstance(leaf, nn.Conv2d | nn.Conv1d | nn.BatchNorm2d | nn.LayerNorm):
            return False
    return False


def chain_of(net: nn.Module, input_hw: tuple[int, int]) -> list[tuple[str, nn.Module]] | None:
    """The network's feature path (timm's `forward_features`, else its forward) as its modules in call order,
    verified on a dry run; None when it is not such a chain."""
    trunk = getattr(net, "forward_features", None) or net.forward
    calls: list[str] = []
    hooks = [child.register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name))
             for name, child in net.named_children()]
    was_training = net.training
    net.eval()
    try:
        x = torch.randn(2, 3, *input_hw, generator=torch.Generator().manual_seed(0),
                        device=next(net.parameters()).device)
        with torch.no_grad():
            expected = trunk(x)
            for hook in hooks:
                hook.remove()
            if len(calls) != len(set(calls)) or not calls:
                return None
            units = []
            for name in calls:
                child = net.get_submodule(name)
                opened = isinstance(child, BLOCK_CONTAINERS) and len(child) > 0
                units += [(f"{name}.{i}", block) for i, block in child.named_children()] if opened else [(name, child)]
            try:
                same = torch.allclose(run_chain([m for _, m in units], x), expected, rtol=1e-4, atol=1e-5)
            except (RuntimeError, TypeError):  # shapes the chain cannot take: not a chain
                return None
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return units if same else None


def split_at_frozen_prefix(net: nn.Module, input_hw: tuple[int, int]) -> tuple[nn.Module, Top] | None:
    """(frozen bottom, trainable top) when the units before the first one with a trainable parameter are
    frozen and there is at least one of them; None otherwise (train with the full forward)."""
    units = chain_of(net, input_hw)
    if units is None:
        return None
    trains = [any(p.requires_grad for p in module.parameters()) for _, module in units]
    first = trains.index(True) if True in trains else len(units)
    if first == 0:
        return None
    return Chain([module for _, module in units[:first]]).eval(), Top(net, units, first)


class Chain(nn.Module):
    """Modules applied in turn (with `run_chain`'s flatten before a classifier)."""

    def __init__(self, units: list[nn.Module]):
        super().__init__()
        self.units = nn.ModuleList(units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_chain(list(self.units), x)


@torch.no_grad()
def activations(bottom: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    bottom.to(device).eval()
    return torch.cat([bottom(chunk.to(device)).cpu() for chunk in images.split(batch_size)])
