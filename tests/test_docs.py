"""Documentation that is generated from code must match the code."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_config_table_matches_the_service_flags():
    spec = importlib.util.spec_from_file_location("config_table", REPO / "scripts" / "config_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- config-table:start -->\n", "<!-- config-table:end -->"
    table = readme[readme.index(start) + len(start) : readme.index(end)]
    assert table.strip() == "\n".join(module.rows()), "README config table is stale: run scripts/config_table.py"
