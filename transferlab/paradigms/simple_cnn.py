"""`simple-cnn` and `small-resnet`: small networks trained from scratch, the baselines every transfer row must
beat.

By default three blocks of two 3×3 conv-BN-ReLU layers and a 2×2 max-pool (32, 64, 128 channels), global
average pooling, dropout and a linear classifier. The blocks (`widths`, `convs_per_block`, `kernel`, `pool`),
dense layers after the pooling (`dense`, with `dropout` after each and an `l2` penalty on their weights,
Keras's kernel_regularizer) are configurable: study 002's VGG-like baseline had under 140 000 parameters.
`small-resnet` is the same with a skip connection around each block (002's ResNet-like net). Neither needs a
backbone: images are resized to `image_size`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..core.seeding import torch_seeded
from ..data.views import make_view
from ..models.backbones import Normalized
from ..models.modules import SimpleCnnModel
from ..models.small_cnn import MEAN, STD, architecture, dense_weights, simple_cnn
from ..train.params import LR_HELP, FromScratchParams, LearningRate, Optimizer
from .base import register
from .trained import TrainedParadigm


class SimpleCnnParams(FromScratchParams):
    image_size: int = Field(64, ge=16)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1, description="channels of "
                              "each block (each block ends in a 2×2 pool)")
    convs_per_block: int | list[int] = Field(2, description="conv-BN-ReLU layers per block: one number, or one "
                                             "per block (e.g. [2, 2, 3, 3, 3])")
    batch_norm: bool = Field(True, description="BatchNorm after each convolution (false: conv with bias → ReLU, "
                             "as a plain Keras Conv2D stack)")
    top: Literal["avg", "flatten"] = Field("avg", description="after the blocks: global average pooling, or "
                                           "Flatten of the last map (Keras's Flatten; many more dense weights)")
    kernel: int = Field(3, ge=1, description="convolution kernel size (odd: the padding keeps the size)")
    pool: Literal["max", "avg"] = Field("max", description="the 2×2 pooling that ends each block")
    dense: list[int] = Field(default_factory=list, description="hidden dense layers after global average "
                             "pooling, e.g. [128]")
    dropout: float = Field(0.3, ge=0, lt=1, description="before the classifier (after each dense layer)")
    l2: float = Field(0.0, ge=0, description="L2 penalty on the dense layers' weights, added to the loss "
                      "(Keras's kernel_regularizer; weight_decay acts on every weight instead)")
    residual: bool = Field(False, description="a skip connection around each block's convolutions")
    optimizer: Optimizer = "adamw"
    lr: LearningRate = Field(3e-3, description=LR_HELP)

    @model_validator(mode="after")
    def _fits_the_image(self):
        if 2 ** len(self.widths) > self.image_size:
            raise ValueError(f"{len(self.widths)} blocks halve the image {len(self.widths)} times, more than "
                             f"image_size {self.image_size} allows; use fewer widths or a larger image_size")
        convs = self.convs_per_block if isinstance(self.convs_per_block, list) else [self.convs_per_block]
        if any(n < 1 for n in convs):
            raise ValueError(f"convs_per_block: every block needs at least one convolution, not {self.convs_per_block}")
        if isinstance(self.convs_per_block, list) and len(self.convs_per_block) != len(self.widths):
            raise ValueError(f"convs_per_block: {len(self.convs_per_block)} numbers for {len(self.widths)} blocks "
                             "(widths); give one per block, or one number for all")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel {self.kernel}: use an odd size (the padding keeps the image size)")
        return self


class SmallResnetParams(SimpleCnnParams):
    residual: bool = Field(True, description="small-resnet: always on")

    @model_validator(mode="after")
    def _always_residual(self):
        if not self.residual:
            raise ValueError("small-resnet has skip connections by definition; use simple-cnn for none")
        return self


@register
class SimpleCnn(TrainedParadigm):
    name = "simple-cnn"
    Params = SimpleCnnParams
    needs_backbone = False

    def view(self):
        return make_view(self.deploy_view(None))[0]

    def penalty(self, model):
        """`l2` × the squared dense weights (Keras's kernel_regularizer), or None without `l2`."""
        l2, weights = self.params.l2, dense_weights(model)
        return (lambda: l2 * sum(w.pow(2).sum() for w in weights)) if l2 else None

    def deploy_steps(self):
        p = self.params
        model = SimpleCnnModel(p.widths, self.n_classes, p.dropout, architecture(p))
        model.net.load_state_dict(self.model_.state_dict())
        return [model.eval()], False

    def deploy_view(self, backbone):
        size = self.params.image_size
        return {"steps": [["resize", size], ["center_crop", size]]}

    def build_model(self, input_hw) -> Normalized:
        with torch_seeded(self.seed):  # timm-free: torch's default init
            net = simple_cnn(self.params.widths, self.n_classes, self.params.dropout, **architecture(self.params))
        return Normalized(net, mean=MEAN, std=STD)


@register
class SmallResnet(SimpleCnn):
    name = "small-resnet"
    Params = SmallResnetParams
