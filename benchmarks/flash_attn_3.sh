# FlashAttention-3 for the benchmarks on a Hopper GPU whose image lacks it (the device tool's: torch 2.11).
#
#   bash benchmarks/flash_attn_3.sh fetch                 # here: fills .fa3/ (~54 MB) from PyPI
#   source benchmarks/flash_attn_3.sh install /tmp/fa3    # on the GPU machine, before the benchmark
#
# The kernels are flash-attention's hopper/ build as xformers 0.0.34 ships it (xformers/flash_attn_3/_C.so). That
# extension uses only torch's stable C ABI, so it loads into torch 2.10 and later; it was built against CUDA 12,
# hence libcudart.so.12 from nvidia-cuda-runtime-cu12. Only the extension is taken, installed as the package
# flash_attn_3 the trainer looks for (train/attention.py), xz-compressed to fit the device tool's 64 MiB transfer.
# `install` extends PYTHONPATH and LD_LIBRARY_PATH of the calling shell.

fa3_fetch() {
    set -euo pipefail
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$tmp" xformers==0.0.34 nvidia-cuda-runtime-cu12==12.9.79
    mkdir -p .fa3
    unzip -q -o "$tmp"/xformers-0.0.34-*.whl 'xformers/flash_attn_3/_C.so' -d "$tmp"
    xz -T0 -6 -c "$tmp/xformers/flash_attn_3/_C.so" >.fa3/flash_attn_3_C.so.xz
    cp "$tmp"/nvidia_cuda_runtime_cu12-*.whl .fa3/
    rm -rf "$tmp"
    du -sh .fa3
}

fa3_install() {
    local dest=$1
    if [ ! -f "$dest/flash_attn_3/_C.so" ]; then
        mkdir -p "$dest/flash_attn_3" && touch "$dest/flash_attn_3/__init__.py" \
            && xz -d -c .fa3/flash_attn_3_C.so.xz >"$dest/flash_attn_3/_C.so" \
            && python3 -m pip install -q --no-index --no-deps --no-compile --target "$dest" .fa3/nvidia_cuda_runtime_cu12-*.whl \
            || return 1
    fi
    export PYTHONPATH="$dest${PYTHONPATH:+:$PYTHONPATH}"
    export LD_LIBRARY_PATH="$dest/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

case "${1:-}" in
    fetch) (fa3_fetch) ;;
    install) fa3_install "${2:?install needs a directory}" ;;
    *) echo "usage: bash $0 fetch | source $0 install DIR" >&2; false ;;
esac
