"""What several command groups print the same way."""

from __future__ import annotations

import json
from typing import Any

import click

__all__ = ["echo_json"]


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON (``--json`` of the status commands)."""
    click.echo(json.dumps(value, indent=2, default=str))
