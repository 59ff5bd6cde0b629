"""MkDocs hook: the paradigm parameter tables of docs/reference/paradigms.md, generated from the code.

The marker `<!-- paradigm-params -->` on that page becomes one section per registered paradigm
(`transferlab.paradigms.PARADIGMS`, in registration order), each with a table of its `Params` model: field,
type, default (default factories evaluated) and description, read from pydantic at build time. Paradigms that
train weights share `TrainParams`; it gets its own table, and each of them lists only what it adds or whose
default it changes. A paradigm added to the registry therefore appears on the page by itself.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path

MARKER = "<!-- paradigm-params -->"
# The README's order; a paradigm not named here follows, in registration order.
ORDER = ["knn", "linear", "rff", "mlp", "pixels", "majority", "all-negative", "head", "finetune", "bit", "scratch",
         "simple-cnn"]
INPUTS = {"features": "frozen features (one cached backbone pass per image)",
          "images": "uint8 images (it trains weights)",
          "labels": "the training labels only (no image is decoded)"}


def on_config(config):
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, paradigm_sections())


def paradigm_sections() -> str:
    from transferlab.paradigms import PARADIGMS
    from transferlab.train.params import TrainParams

    ordered = sorted(PARADIGMS.values(), key=lambda cls: ORDER.index(cls.name) if cls.name in ORDER else len(ORDER))
    frozen = [cls for cls in ordered if cls.input != "images"]
    trained = [cls for cls in ordered if cls.input == "images"]
    out = ["## Frozen features and reference rows", ""]
    for cls in frozen:
        out += section(cls, fields(cls.Params))
    out += ["## Training weights", "",
            "Every paradigm that trains weights runs the one training loop, so they share its options "
            "(`TrainParams`, below); each section after it lists only the parameters that paradigm adds or "
            "whose default it changes.", "",
            "### Training options", "", table(fields(TrainParams)), ""]
    shared = TrainParams.model_fields
    for cls in trained:
        own = {name: field for name, field in fields(cls.Params).items()
               if name not in shared or default(field) != default(shared[name])}
        out += section(cls, own, note="Also every [training option](#training-options).")
    return "\n".join(out)


def section(cls, own: dict, note: str = "") -> list[str]:
    if cls.input == "features" and not cls.needs_backbone:
        given = "vectors from its own encoder (no backbone)"
    else:
        given = f"{INPUTS.get(cls.input, cls.input)}; {'needs a backbone' if cls.needs_backbone else 'no backbone'}"
    lines = [f"### `{cls.name}`", "", summary(cls), "", f"Input: {given}. {note}".rstrip(), ""]
    lines += [table(own) if own else "No parameters.", ""]
    return lines


def summary(cls) -> str:
    """The paradigm's own docstring, else its module's: the first paragraph, on one line."""
    doc = cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def fields(model) -> dict:
    return dict(model.model_fields)


def table(model_fields: dict) -> str:
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for name, field in model_fields.items():
        rows.append(f"| `{name}` | {type_text(field.annotation)} | {code(default_text(field))} | "
                    f"{prose(field.description or '')} |")
    return "\n".join(rows)


def default(field):
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        return field.default_factory()
    return None if field.default is PydanticUndefined else field.default


def default_text(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = default(field)
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def type_text(annotation) -> str:
    """An annotation as a reader of YAML would say it, in Markdown: int or list of int, one of `cosine`, `euclidean`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(code(str(a)) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or none" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def code(text: str) -> str:
    return f"`{text}`" if text else ""


def prose(text: str) -> str:
    """A description in a table cell: pipes escaped, angle brackets shown rather than read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
