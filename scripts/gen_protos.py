"""Regenerates the Python code and typed stubs for protos/ into the repository root.

`python scripts/gen_protos.py [--out DIR]` writes whisperlite/v1/*_pb2.py(i) and *_pb2_grpc.py(i) under DIR
(default: the repository root); tests/test_protos.py regenerates into a temporary directory and compares.
"""

import argparse
import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    protos = sorted(PROTO_ROOT.glob("whisperlite/v1/*.proto"))
    bin_dir = pathlib.Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{pathlib.Path(protoc.__file__).parent / '_proto'}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "whisperlite" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT)
    for path in generate(parser.parse_args().out):
        print(path)
