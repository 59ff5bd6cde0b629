"""The one registry mechanism (core/registry.py): register / get / create, the one-line "did you mean" error,
duplicate names refused, read-only Mapping behaviour — and every registry of the package is one of them."""

from __future__ import annotations

import typing
from collections.abc import Mapping

import pytest

from transferlab.core.errors import TransferlabError
from transferlab.core.registry import Registry, did_you_mean
from transferlab.data.augment import PRESETS
from transferlab.data.builtins import BUILTINS
from transferlab.models.backbones import WEIGHT_SOURCES
from transferlab.models.modules import MODULES
from transferlab.models.weights import OFFLINE_WEIGHTS
from transferlab.paradigms import PARADIGMS
from transferlab.train.optim import LOSSES, OPTIMIZERS, SCHEDULES
from transferlab.train.params import Optimizer, Schedule, TrainParams


@pytest.fixture
def colours() -> Registry:
    colours = Registry("colour")

    @colours.register
    def red(shade: int = 0) -> str:
        return f"red{shade}"

    @colours.register("light-green")
    def green(shade: int = 0) -> str:
        return f"green{shade}"

    colours.register("blue", lambda shade=0: f"blue{shade}")
    return colours


def test_the_three_ways_to_register_keep_the_entry_and_its_name(colours):
    assert colours.names() == ["red", "light-green", "blue"]  # registration order
    assert colours.get("red")() == "red0"  # bare decorator: the function's own name
    assert colours["light-green"].__name__ == "green"  # the decorator returns the function unchanged
    assert colours.create("blue", 3) == "blue3"
    assert colours.create("red", shade=2) == "red2"


def test_create_passes_a_keyword_called_name_on():
    makers = Registry("maker")
    makers.register("tag", lambda name: f"<{name}>")
    assert makers.create("tag", name="x") == "<x>"


def test_an_unknown_name_is_one_line_with_the_closest_and_all_names(colours):
    with pytest.raises(TransferlabError) as info:
        colours.get("rde")
    assert str(info.value) == "unknown colour 'rde' (did you mean 'red'?); available: blue, light-green, red"
    with pytest.raises(TransferlabError, match=r"^unknown colour 'purple'; available: blue, light-green, red$"):
        colours.create("purple")
    assert colours.get("purple", None) is None  # with a default, as dict.get


def test_registering_a_name_twice_is_refused_in_one_line(colours):
    with pytest.raises(ValueError) as info:
        colours.register("red", lambda: "another red")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("colour 'red' is registered twice (")
    assert "test_registry" in message  # where the first one was defined
    assert colours.create("red") == "red0"  # the first registration stands


def test_a_registry_reads_like_a_dict_that_cannot_be_written(colours):
    assert isinstance(colours, Mapping)
    assert "red" in colours and "purple" not in colours
    assert list(colours) == ["red", "light-green", "blue"] and len(colours) == 3
    assert [name for name, _ in colours.items()] == list(colours.keys()) == colours.names()
    assert len(list(colours.values())) == 3
    with pytest.raises(KeyError):
        colours["purple"]
    with pytest.raises(TypeError):
        colours["purple"] = lambda: "purple"  # type: ignore[index]
    assert "colour" in repr(colours) and "light-green" in repr(colours)


def test_did_you_mean():
    assert did_you_mean("ligth", ["none", "light"]) == " (did you mean 'light'?)"
    assert did_you_mean("zzz", ["none", "light"]) == ""
    assert did_you_mean(3, ["3x"]) == " (did you mean '3x'?)"  # a YAML key need not be a string


# Every registry of the package, with a typo of one of its names and what the hint should name.
REGISTRIES = {
    "paradigm": (PARADIGMS, "linaer", "linear"),
    "augmentation": (PRESETS, "ligth", "light"),
    "dataset": (BUILTINS, "cifar-10", "cifar10"),
    "optimizer": (OPTIMIZERS, "adamm", "adam"),
    "schedule": (SCHEDULES, "cosin", "cosine"),
    "loss": (LOSSES, "bcee", "bce"),
    "weight source": (WEIGHT_SOURCES, "hbu", "hub"),
    "offline model": (OFFLINE_WEIGHTS, "tf_efficientnet_lite_0", "tf_efficientnet_lite0"),
    "deploy module": (MODULES, "Afine", "Affine"),
}


@pytest.mark.parametrize("kind", REGISTRIES)
def test_every_registry_is_a_registry_with_the_one_line_hint(kind):
    registry, typo, meant = REGISTRIES[kind]
    assert isinstance(registry, Registry) and registry.kind == kind and len(registry) > 0
    with pytest.raises(TransferlabError) as info:
        registry.get(typo)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"unknown {kind} '{typo}' (did you mean '{meant}'?); available: ")
    assert message.endswith(", ".join(sorted(registry)))


def test_the_registries_hold_what_the_package_offers():
    assert {"linear", "knn", "mlp", "finetune"} <= set(PARADIGMS)
    assert all(name == cls.name for name, cls in PARADIGMS.items())
    assert list(PRESETS) == ["none", "light", "keras-style", "crop-flip-rotate", "randaugment"]
    assert set(WEIGHT_SOURCES) == {"offline", "hub", "file", "random"}
    assert all(name == cls.__name__ for name, cls in MODULES.items())


def test_the_training_params_take_their_choices_from_the_registries():
    assert typing.get_args(Optimizer) == tuple(OPTIMIZERS) == ("sgd", "adam", "adamw", "rmsprop", "amsgrad")
    assert typing.get_args(Schedule) == tuple(SCHEDULES)
    assert typing.get_args(TrainParams.model_fields["loss"].annotation) == tuple(LOSSES) == ("ce", "bce", "mse")
    with pytest.raises(ValueError, match="optimizer"):
        TrainParams(optimizer="sdg")
