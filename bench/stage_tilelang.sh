#!/usr/bin/env bash
# Make the carried parts of tilelang for fla on Hopper, on a machine with pip and PyPI. fla 0.6.0 refuses the
# gated delta rule's backward on Hopper with Triton >= 3.4 and < 3.7.1 (the GPU image's torch 2.11 has Triton
# 3.6.0; fla-org/flash-linear-attention#640) unless tilelang is installed. The wheels (Python 3.12), unpacked as
# `pip install --target` would, packed as one xz tar and split in two carries:
#
#   bash bench/stage_tilelang.sh      # writes .whl_tl_1/ and .whl_tl_2/ (git-ignored)
#
# Each device call carries one of the two dirs (beside .whl on one of them); bench/device_env.sh stages what it
# gets in /tmp/tl_stage (kept while the machine stays warm) and unpacks into /tmp/site once SHA256SUMS holds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform any"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d "$work/wheels" tilelang==0.1.15 apache-tvm-ffi==0.1.12 z3-solver==4.15.4.0
mkdir "$work/tree"
for wheel in "$work"/wheels/*.whl; do unzip -q -o "$wheel" -d "$work/tree"; done
tar -C "$work/tree" -cf - . | xz -T0 -6 >"$work/tltree.tar.xz"
(cd "$work" && split -n 2 -d tltree.tar.xz tltree.tar.xz.part- && sha256sum tltree.tar.xz.part-* >SHA256SUMS)
rm -rf "$root"/.whl_tl_1 "$root"/.whl_tl_2
mkdir -p "$root/.whl_tl_1" "$root/.whl_tl_2"
cp "$work/tltree.tar.xz.part-00" "$work/SHA256SUMS" "$root/.whl_tl_1/"
cp "$work/tltree.tar.xz.part-01" "$work/SHA256SUMS" "$root/.whl_tl_2/"
rm -rf "$work"
du -sh "$root"/.whl_tl_*
