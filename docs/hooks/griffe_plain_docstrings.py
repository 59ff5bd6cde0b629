"""Griffe extension: transferlab's docstrings are plain text; make Markdown show them as written.

Loaded by mkdocstrings (mkdocs.yml, handlers.python.options.extensions). It changes what the site shows, not
the code. Two things in the docstrings would otherwise be misread as Markdown or HTML:

- Doctest lines (`>>> transferlab.run(...)   # doctest: +SKIP`) stand outside any "Examples:" section, where
  `>>>` opens nested quotes and `["key"]` reads as a link. Each run of lines from a `>>>` line to the next
  blank line becomes a fenced `pycon` block, without its doctest flags.
- Placeholders in angle brackets (`runs/<name>-mini`, `OUT/deploy/<run id>/`) read as HTML tags and vanish.
  Outside code spans and fences, `<` is written as `&lt;` (and a `>` that starts a line as `&gt;`).

It runs once the package is loaded, after griffe-pydantic has turned `Field(description=...)` into docstrings.
"""

from __future__ import annotations

import re

import griffe

DOCTEST_FLAGS = re.compile(r"\s*#\s*doctest:[^\n]*$")
CODE_SPAN = re.compile(r"(`+[^`]*`+)")


def fence_doctests(text: str) -> str:
    out: list[str] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if block and not line.strip():
            out += [""] * bool(out and out[-1].strip()) + ["```pycon", *block, "```"]
            block = []
        if block or line.lstrip().startswith(">>>"):
            block.append(DOCTEST_FLAGS.sub("", line))
        else:
            out.append(line)
    return "\n".join(out[:-1] if out and out[-1] == "" else out)


def escape_brackets(text: str) -> str:
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            parts = CODE_SPAN.split(line)
            line = "".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))
            line = re.sub(r"^(\s*)>", r"\1&gt;", line)
        out.append(line)
    return "\n".join(out)


def plain(text: str) -> str:
    return escape_brackets(fence_doctests(text) if ">>>" in text else text)


class PlainDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = plain(obj.docstring.value)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
