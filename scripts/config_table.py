"""Prints the configuration table (flag, env var, default, meaning) of every service as markdown.

README.md carries its output between the `config-table` markers; tests/test_docs.py keeps them equal.
"""

import importlib
import re

SERVICES = {
    "query-encoder": "services.query_encoder.server",
    "catalog": "services.catalog.server",
    "ranker": "services.ranker.server",
}
ENV = re.compile(r"\s*\(env ([A-Z_]+)\)")


def rows() -> list[str]:
    lines = ["| service | flag | env var | default | meaning |", "|---|---|---|---|---|"]
    for service, module in SERVICES.items():
        parser = importlib.import_module(module).build_parser()
        for action in parser._actions:
            match = ENV.search(action.help or "")
            if not action.option_strings or not match:
                continue
            meaning = " ".join(ENV.sub("", action.help).split()).replace("|", "\\|")
            default = "" if action.default in (None, "") else f"`{action.default}`"
            lines.append(f"| {service} | `{action.option_strings[-1]}` | `{match.group(1)}` | {default} | {meaning} |")
    return lines


if __name__ == "__main__":
    print("\n".join(rows()))
