"""`simple-cnn`: a small VGG-style network trained from scratch, the baseline every transfer row must beat.

Three blocks of two 3×3 conv-BN-ReLU layers and a 2×2 max-pool (32, 64, 128 channels), global average
pooling, dropout and a linear classifier. It needs no backbone: images are resized to `image_size`.
"""

from __future__ import annotations

from pydantic import Field

from ..core.seeding import torch_seeded
from ..data.views import make_view
from ..models.backbones import Normalized
from ..models.modules import SimpleCnnModel
from ..models.small_cnn import MEAN, STD, simple_cnn
from ..train.params import FromScratchParams, Optimizer
from .base import register
from .trained import TrainedParadigm


class SimpleCnnParams(FromScratchParams):
    image_size: int = Field(64, ge=16)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    optimizer: Optimizer = "adamw"
    lr: float = Field(3e-3, gt=0)


@register
class SimpleCnn(TrainedParadigm):
    name = "simple-cnn"
    Params = SimpleCnnParams
    needs_backbone = False

    def view(self):
        return make_view(self.deploy_view(None))[0]

    def deploy_steps(self):
        model = SimpleCnnModel(self.params.widths, self.n_classes, self.params.dropout)
        model.net.load_state_dict(self.model_.state_dict())
        return [model.eval()], False

    def deploy_view(self, backbone):
        size = self.params.image_size
        return {"steps": [["resize", size], ["center_crop", size]]}

    def build_model(self) -> Normalized:
        with torch_seeded(self.seed):  # timm-free: torch's default init
            net = simple_cnn(self.params.widths, self.n_classes, self.params.dropout)
        return Normalized(net, mean=MEAN, std=STD)
