"""Prints the configuration table (flag, env var, default, meaning) of every service as markdown.

README.md carries its output between the `config-table` markers; tests/test_docs.py keeps them equal.
"""

import argparse
import importlib
import os
import re
from unittest import mock

from whisperlite.core.topology import SERVICES

ENV = re.compile(r"\s*\(env ([A-Z_]+)\)")


def rows() -> list[str]:
    lines = ["| service | flag | env var | default | meaning |", "|---|---|---|---|---|"]
    for spec in SERVICES:
        service = spec.name
        # Defaults are read from the environment when the parser is built: document the built-in ones.
        with mock.patch.dict(os.environ, clear=True):
            parser = importlib.import_module(spec.module).build_parser()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            match = ENV.search(action.help or "")
            if not match:
                raise ValueError(f"{service} {action.option_strings}: the help must name its variable as (env NAME)")
            meaning = " ".join(ENV.sub("", action.help).split()).replace("|", "\\|")
            default = "" if action.default in (None, "") else f"`{action.default}`"
            lines.append(f"| {service} | `{action.option_strings[-1]}` | `{match.group(1)}` | {default} | {meaning} |")
    return lines


if __name__ == "__main__":
    print("\n".join(rows()))
