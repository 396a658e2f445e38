#!/usr/bin/env bash
# Install the ms-swift 4.6 benchmark peer into a directory of its own (default /tmp/swift_site) from
# carried wheels, leaving the machine's site-packages untouched. Then run it with that directory alone
# on PYTHONPATH (bench/peers/swift_sft.py does):
#
#   bash bench/peers/install_swift.sh [TARGET]
#   PYTHONPATH=/tmp/swift_site python3 -m swift.cli.sft --model ... --dataset ...
#
# .whl_swift/  ms-swift 4.6.0 and what `swift sft` imports that the GPU image (Python 3.12, torch 2.11,
#              transformers 5.17, peft 0.21, no datasets) lacks or has in a version ms-swift refuses:
#              peft 0.20.0, trl 0.29.1, datasets 4.8.4 (+ dill, multiprocess), modelscope 1.37.1,
#              pydantic 2 (+ core, annotated-types, typing-inspection), json-repair, binpacking,
#              qwen-vl-utils. The image's transformers 5.17 satisfies ms-swift's <5.20 pin.
# .whl_fa4_*/  optional flash-attn-4 (CuTe DSL) and its CUDA 13 libraries, made by stage_fa4.sh: one xz
#              tar (~71 MB) split in two carries. Each call stages what it brings in /tmp/fa4_stage (kept
#              while the machine stays warm); once every part that SHA256SUMS names is there, the tar is
#              unpacked into the target dir.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${1:-/tmp/swift_site}
pip_install() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
}

if compgen -G "$root/.whl_swift/*.whl" >/dev/null; then
    pip_install "$root"/.whl_swift/*.whl
fi

stage=/tmp/fa4_stage
for dir in "$root"/.whl_fa4_*/; do
    [ -d "$dir" ] || continue
    mkdir -p "$stage"
    cp -n "$dir"* "$stage"/ 2>/dev/null || true
done
if [ -f "$stage/SHA256SUMS" ] && [ ! -d "$target/flash_attn/cute" ]; then
    if (cd "$stage" && sha256sum --quiet --status -c SHA256SUMS 2>/dev/null); then
        cat "$stage"/fa4tree.tar.xz.part-* | xz -d | tar -x -C "$target"
        echo "flash-attn-4 installed into $target"
    else
        echo "flash-attn-4: staged $(ls "$stage" | wc -l) file(s) in $stage; the rest come with the next call"
    fi
fi

PYTHONPATH="$target" python3 - <<'EOF'
import importlib.metadata as m
import swift, peft, trl, datasets, transformers, torch
print(f"ms-swift {swift.__version__}: peft {peft.__version__}, trl {trl.__version__}, "
      f"datasets {datasets.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
names = {d.metadata["Name"].lower().replace("_", "-") for d in m.distributions()}
print("flash attention:", ", ".join(n for n in sorted(names) if n.startswith("flash-attn")) or "none")
EOF
