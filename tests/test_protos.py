"""The committed generated code (and typed stubs) must be exactly what the protos generate today."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_in_sync_with_protos(tmp_path):
    generated = _generator().generate(tmp_path)
    names = {path.name for path in generated}
    assert {"ranker_pb2.py", "ranker_pb2_grpc.py", "ranker_pb2.pyi", "ranker_pb2_grpc.pyi", "catalog_pb2.pyi"} <= names
    committed = REPO / "whisperlite" / "v1"
    for path in generated:
        assert (committed / path.name).read_text() == path.read_text(), f"{path.name} is stale: run `make protos`"
    stale = {p.name for p in committed.glob("*_pb2*.py*")} - names
    assert not stale, f"generated files without a proto: {stale}"
