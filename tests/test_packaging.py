"""The wheel: one top-level package, and a client install of grpcio + protobuf alone that reaches
a running stack (built here, installed into a fresh virtual environment)."""

import email
import json
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from tests.servers import REPO

CLIENT_REQUIREMENTS = {"grpcio==1.85.1", "protobuf==7.36.2"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(REPO)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("whisperlite-*.whl")
    return built


def requirements(wheel: Path) -> dict[str, set[str]]:
    """Requires-Dist of the wheel by extra ('' for the unconditional ones)."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        message = email.message_from_bytes(archive.read(metadata))
    by_extra: dict[str, set[str]] = {}
    for line in message.get_all("Requires-Dist"):
        requirement, _, marker = line.partition(";")
        extra = marker.split("extra ==")[-1].strip().strip("'\"") if "extra ==" in marker else ""
        by_extra.setdefault(extra, set()).add(requirement.replace(" ", ""))
    return by_extra


def test_the_wheel_installs_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"whisperlite"}


def test_the_package_and_its_client_extra_need_only_grpcio_and_protobuf(wheel):
    by_extra = requirements(wheel)
    assert by_extra[""] == by_extra["client"] == CLIENT_REQUIREMENTS
    assert {"serve", "train", "dev", "admin"} <= set(by_extra)
    assert any(r.startswith("torch==") for r in by_extra["serve"]) and not any(r.startswith("torch") for r in by_extra["admin"])


@pytest.mark.timeout(600)
def test_a_client_only_install_calls_the_running_stack(wheel, tmp_path, text_only_ranker, catalog_service, shared_catalog_items):
    shared_catalog_items.append("packaging-boots")
    environment = tmp_path / "client-venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, timeout=300)
    subprocess.run([*pip, "-c", str(REPO / "constraints.txt"), *sorted(CLIENT_REQUIREMENTS)], check=True, timeout=300)
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        from whisperlite.core.clients.catalog_admin import CatalogAdminClient, Item
        from whisperlite.core.clients.ranker import RankerClient

        with CatalogAdminClient({catalog_service.address!r}, timeout_seconds=120) as catalog:
            catalog.upsert([Item("packaging-boots", "Black leather boots", price=75.0)])
        with RankerClient({text_only_ranker.address!r}, timeout_seconds=60) as ranker:
            result = ranker.recommend(user_id="u", query="black leather boots", top_k=5, max_price=80.0, request_id="pkg-1")
        assert result.request_id == "pkg-1", result
        assert "packaging-boots" in [scored.item.item_id for scored in result.items], result
        loaded = sorted(name for name in ("numpy", "torch", "pandas", "pymilvus") if name in sys.modules)
        installed = sorted(name for name in ("numpy", "torch", "pandas", "pymilvus") if importlib.util.find_spec(name))
        print(loaded, installed)
        """
    )
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[] []"
    # The `whisperlite recommend` command works from the client install too.
    command = [str(environment / "bin" / "whisperlite"), "recommend", "--ranker", text_only_ranker.address, "--query", "boots", "--json"]
    printed = subprocess.run([*command, "--request-id", "pkg-2", "--timeout", "60"], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert json.loads(printed.stdout)["request_id"] == "pkg-2"
    listed = json.loads(subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True).stdout)
    installed = {package["name"].lower().replace("_", "-") for package in listed} - {"pip", "setuptools"}
    assert installed == {"whisperlite", "grpcio", "protobuf", "typing-extensions"}  # typing-extensions: grpcio's own
