"""MkDocs hook: hand mkdocs-click transferlab's typer app as a click command.

mkdocs-click documents the click command it finds at `:module:` / `:command:`; transferlab's CLI is a typer app
(`transferlab.cli.app`), whose click command is `typer.main.get_command(app)`. Before any page is rendered this
hook publishes that command as `transferlab_cli_reference.command`, which docs/reference/cli.md names. It also puts
this checkout first on sys.path, so the reference describes the code beside it, installed or not.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

MODULE = "transferlab_cli_reference"


def on_config(config):
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    import typer.main

    from transferlab.cli import app

    module = types.ModuleType(MODULE, "transferlab's typer app as a click command, for mkdocs-click")
    module.command = typer.main.get_command(app)
    sys.modules[MODULE] = module
    return config
