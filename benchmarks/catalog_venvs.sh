#!/usr/bin/env bash
# Throwaway virtual environments for the Milvus flavours that cannot share the project's .venv
# (benchmarks/catalog_stores.py runs them as subprocesses and reads their JSON):
#   lite3    milvus-lite 3.2.2 (pure Python) + pymilvus 2.5.18
#   milvus23 the embedded Milvus 2.3.5 server from PyPI `milvus` + pymilvus 2.3.7 (whose environs 9 breaks on marshmallow 4)
# Usage: benchmarks/catalog_venvs.sh [ROOT]   (default /tmp/wl-catalog-bench; safe to re-run)
set -euo pipefail
root=${1:-/tmp/wl-catalog-bench}
python=${PYTHON:-python3.11}
make_venv() {
  local name=$1; shift
  if [ ! -x "$root/$name/bin/python" ]; then
    "$python" -m venv "$root/$name"
  fi
  "$root/$name/bin/pip" install --quiet --disable-pip-version-check "$@"
  echo "$root/$name/bin/python"
}
make_venv lite3 "milvus-lite==3.2.2" "pymilvus==2.5.18" "numpy==2.4.6" "psutil==7.2.2"
make_venv milvus23 "milvus==2.3.5" "pymilvus==2.3.7" "numpy==2.4.6" "psutil==7.2.2" "setuptools<81" "marshmallow==3.26.1" "environs==9.5.0"
