#!/usr/bin/env bash
# Builds the llama.cpp peer (llama-server, llama-batched-bench, llama-bench) from the
# llama.cpp source vendored in the llama-cpp-python sdist, into a cache folder outside the repo.
# Never writes inside the repository; idempotent (exits early when all binaries exist).
#
#   bench/peers/build_llama_cpp.sh            # build (about 10+ minutes on 2 cores)
#   BANTERBOX_PEERS_DIR=/some/dir bench/...   # build elsewhere
#   BUILD_JOBS=4 bench/...                    # more compile jobs (default 2)
set -euo pipefail

VERSION="0.3.36"  # llama-cpp-python release; pinned so every run measures the same peer
TARGETS=(llama-server llama-batched-bench llama-bench)
PEERS_DIR="${BANTERBOX_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/banterbox/peers}"
ROOT="${PEERS_DIR}/llama.cpp-${VERSION}"
SDIST="${ROOT}/llama_cpp_python-${VERSION}.tar.gz"
SRC="${ROOT}/llama_cpp_python-${VERSION}/vendor/llama.cpp"
BUILD="${ROOT}/build"
BIN="${ROOT}/bin"
JOBS="${BUILD_JOBS:-2}"
PYTHON="${PYTHON:-python3}"

all_built() {
    local target
    for target in "${TARGETS[@]}"; do
        [[ -x "${BIN}/${target}" ]] || return 1
    done
}

if all_built; then
    echo "llama.cpp ${VERSION} already built in ${BIN}"
    exit 0
fi

mkdir -p "${ROOT}"
if [[ ! -f "${SDIST}" ]]; then
    "${PYTHON}" -m pip download --no-deps --no-binary :all: \
        "llama-cpp-python==${VERSION}" -d "${ROOT}"
fi
if [[ ! -f "${SRC}/CMakeLists.txt" ]]; then
    tar -xzf "${SDIST}" -C "${ROOT}"
fi

generator=()
if command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi

# The UI switches keep the build offline: by default llama-server fetches its web UI from a
# Hugging Face bucket at build time. We only need its HTTP API.
cmake -S "${SRC}" -B "${BUILD}" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF

cmake --build "${BUILD}" --config Release -j "${JOBS}" --target "${TARGETS[@]}"

mkdir -p "${BIN}"
for target in "${TARGETS[@]}"; do
    cp "${BUILD}/bin/${target}" "${BIN}/${target}"
done
echo "llama.cpp ${VERSION} built: ${BIN}"
