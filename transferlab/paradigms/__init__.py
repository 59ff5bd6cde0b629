"""Paradigms: interchangeable strategies behind one interface (see base.py), found by name in `PARADIGMS`
(a `core.registry.Registry`).

Adding one: a module with a `@register`-ed `Paradigm` subclass, imported below.
"""

from . import baselines, bit, finetune, head, knn, linear, mlp, pixels, rff, simple_cnn  # noqa: F401  (each registers itself)
from .base import PARADIGMS, Paradigm, create_paradigm, get_paradigm_class, register, validate_params

__all__ = ["PARADIGMS", "Paradigm", "create_paradigm", "get_paradigm_class", "register", "validate_params"]
