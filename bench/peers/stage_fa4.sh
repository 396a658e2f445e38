#!/usr/bin/env bash
# Make the carried parts of flash-attn-4 (CuTe DSL) for the ms-swift peer, on a machine with pip and PyPI:
# the wheels for the GPU image (Python 3.12, CUDA 13), unpacked as `pip install --target` would, packed as
# one xz tar (about 71 MB, from 257 MB) and split in two carries of under 40 MB each:
#
#   bash bench/peers/stage_fa4.sh      # writes .whl_fa4_1/ and .whl_fa4_2/ (git-ignored)
#
# Each device call carries one of the two dirs; bench/peers/install_swift.sh stages what it gets in
# /tmp/fa4_stage (kept while the machine stays warm) and unpacks into ms-swift's dir once SHA256SUMS holds.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform any"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d "$work/wheels" flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5
mkdir "$work/tree"
for wheel in "$work"/wheels/*.whl; do unzip -q -o "$wheel" -d "$work/tree"; done
tar -C "$work/tree" -cf - . | xz -T0 -6 >"$work/fa4tree.tar.xz"
(cd "$work" && split -n 2 -d fa4tree.tar.xz fa4tree.tar.xz.part- && sha256sum fa4tree.tar.xz.part-* >SHA256SUMS)
rm -rf "$root"/.whl_fa4_1 "$root"/.whl_fa4_2
mkdir -p "$root/.whl_fa4_1" "$root/.whl_fa4_2"
cp "$work/fa4tree.tar.xz.part-00" "$work/SHA256SUMS" "$root/.whl_fa4_1/"
cp "$work/fa4tree.tar.xz.part-01" "$work/SHA256SUMS" "$root/.whl_fa4_2/"
rm -rf "$work"
du -sh "$root"/.whl_fa4_*
