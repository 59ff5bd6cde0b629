"""Backbones (any timm model) and the offline weight registry."""

from .backbones import Backbone, WeightsInfo, check_model_name, forward_cost, load_backbone
from .registry import OFFLINE_WEIGHTS, offline_models

__all__ = ["OFFLINE_WEIGHTS", "Backbone", "WeightsInfo", "check_model_name", "forward_cost", "load_backbone",
           "offline_models"]
