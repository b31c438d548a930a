"""The layering of docs/architecture.md, checked on the code: every import points down.

shell -> services, trainer, data -> core -> v1 (generated). A service imports the shared plumbing
(services.common) and its own package, never another service; the trainer may use data preparation.
"""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "whisperlite"

# layer -> the layers it may import (itself included)
ALLOWED = {
    "v1": {"v1"},
    "core": {"core", "v1"},
    "data": {"data", "core", "v1"},
    "services": {"services", "core", "v1"},
    "trainer": {"trainer", "data", "core", "v1"},
    "shell": {"shell", "services", "trainer", "data", "core", "v1"},
    "__main__": {"shell"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def whisperlite_imports(path: Path) -> set[str]:
    """Every whisperlite module `path` imports, at the top or inside a function, plus the targets
    of importlib.import_module("whisperlite...") calls with a literal name."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return {name for name in found if name.startswith("whisperlite.")}


def modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def test_every_module_sits_in_a_known_layer():
    unknown = {module_name(p) for p in modules() if layer(module_name(p)) not in ALLOWED and module_name(p) != "whisperlite"}
    assert not unknown, f"modules outside the layers of docs/architecture.md: {sorted(unknown)}"


def test_every_import_points_down():
    violations = []
    for path in modules():
        source = module_name(path)
        source_layer = layer(source)
        for target in whisperlite_imports(path):
            if (PACKAGE / Path(*target.split(".")[1:])).with_suffix(".py").exists() or (PACKAGE / Path(*target.split(".")[1:])).is_dir():
                target_layer = layer(target)
            else:
                continue  # a dotted string that is not one of our modules (e.g. a logger name)
            if source_layer in ALLOWED and target_layer not in ALLOWED[source_layer]:
                violations.append(f"{source} ({source_layer}) imports {target} ({target_layer})")
    assert not violations, "imports that point up or sideways:\n" + "\n".join(violations)


def test_a_service_imports_no_other_service():
    violations = []
    for path in modules():
        source = module_name(path).split(".")
        if len(source) < 3 or source[1] != "services" or source[2] == "common":
            continue
        for target in whisperlite_imports(path):
            parts = target.split(".")
            if len(parts) > 2 and parts[1] == "services" and parts[2] not in ("common", source[2]):
                violations.append(f"{'.'.join(source)} imports {target}")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check is only worth something if it fails: a core module importing a service is caught."""
    core_file = tmp_path / "whisperlite" / "core" / "leaky.py"
    core_file.parent.mkdir(parents=True)
    core_file.write_text(
        "import importlib\n\ndef f():\n    from whisperlite.services.catalog import store\n"
        "    return importlib.import_module('whisperlite.trainer.cli')\n"
    )
    imports = whisperlite_imports(core_file)
    assert {"whisperlite.services.catalog", "whisperlite.trainer.cli"} <= imports
    assert "services" not in ALLOWED[layer("whisperlite.core.leaky")]


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_item_text_loads_neither_torch_nor_pandas():
    out = run_python(
        """
        import sys
        from whisperlite.core.item_text import item_text
        assert item_text("Red dress", "Light cotton.", max_chars=12) == "Red dress. L"
        print("torch" in sys.modules, "pandas" in sys.modules)
        """
    )
    assert out == "False False"


@pytest.mark.timeout(240)
def test_the_catalog_process_never_imports_torch(tmp_path):
    """The catalog server module, started in-process on a real milvus-lite store, answers an upsert
    and a search; torch is still not loaded."""
    port = free_port()
    out = run_python(
        f"""
        import asyncio, sys
        import grpc
        from whisperlite.services.catalog import server
        from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2

        args = server.build_parser().parse_args([
            "--data-dir", {str(tmp_path)!r}, "--dimension", "4", "--encoder-model", "test/4d",
            "--query-encoder-addr", "", "--host", "127.0.0.1", "--port", "{port}", "--metrics-port", "0",
        ])

        async def main():
            ready, stop = asyncio.Event(), asyncio.Event()
            serving = asyncio.ensure_future(server.run(args, ready=ready, stop=stop))
            await asyncio.wait_for(ready.wait(), 120)
            async with grpc.aio.insecure_channel("127.0.0.1:{port}") as channel:
                stub = catalog_pb2_grpc.CatalogServiceStub(channel)
                item = common_pb2.Item(item_id="a", title="Red dress", vector=[1, 0, 0, 0])
                await stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[item]), timeout=30)
                hits = (await stub.Search(catalog_pb2.SearchRequest(vector=[1, 0, 0, 0], top_k=1), timeout=30)).hits
                assert [hit.item.item_id for hit in hits] == ["a"], hits
            stop.set()
            await serving

        asyncio.run(main())
        print("torch" in sys.modules)
        """
    )
    assert out.splitlines()[-1] == "False"
