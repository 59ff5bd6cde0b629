"""Backbones (any timm model), the weight sources they load from, and the offline weight registry."""

from .backbones import WEIGHT_SOURCES, Backbone, WeightsInfo, check_model_name, forward_cost, load_backbone
from .weights import OFFLINE_WEIGHTS, offline_models

__all__ = ["OFFLINE_WEIGHTS", "WEIGHT_SOURCES", "Backbone", "WeightsInfo", "check_model_name", "forward_cost",
           "load_backbone", "offline_models"]
