# Source on a GPU machine without a package index, from the repo root: vlft's pinned wheels (carried in
# .whl/, made by bench/stage_wheels.sh) into /tmp/site once per machine, vlft itself installed editable
# without dependencies, and any carried flash-attn-4 parts staged for bench/peers/install_swift.sh.
#   source bench/device_env.sh
if [ ! -f /tmp/site/.installed ] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && touch /tmp/site/.installed
fi
if [ ! -f /tmp/site/.av ] && compgen -G ".whl_av/*.whl" >/dev/null; then  # video tests
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl_av/*.whl && touch /tmp/site/.av
fi
if [ ! -f /tmp/site/.bnb ] && compgen -G ".whl_bnb/*.whl" >/dev/null; then  # bench/qlora_memory.py
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl_bnb/*.whl && touch /tmp/site/.bnb
fi
if [ ! -f /tmp/site/.ds ] && compgen -G ".whl_ds/*.whl" >/dev/null; then  # ZeRO rows beside FSDP2
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl_ds/*.whl && touch /tmp/site/.ds
fi
if [ ! -f /tmp/site/.mcore ] && compgen -G ".whl_mcore/*.whl" >/dev/null; then  # bench/convert_mcore.py
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl_mcore/*.whl && touch /tmp/site/.mcore
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "vlft: editable install failed"
for dir in .whl_fa4_*/; do
    [ -d "$dir" ] && mkdir -p /tmp/fa4_stage && cp -n "$dir"* /tmp/fa4_stage/ 2>/dev/null
done
for dir in .whl_tl_*/; do  # tilelang for fla on Hopper (bench/stage_tilelang.sh), unpacked once whole
    [ -d "$dir" ] && mkdir -p /tmp/tl_stage && cp -n "$dir"* /tmp/tl_stage/ 2>/dev/null
done
if [ -f /tmp/tl_stage/SHA256SUMS ] && [ ! -f /tmp/site/.tilelang ] && (cd /tmp/tl_stage && sha256sum -c --quiet SHA256SUMS 2>/dev/null); then
    cat /tmp/tl_stage/tltree.tar.xz.part-* | xz -d | tar -C /tmp/site -xf - && touch /tmp/site/.tilelang
fi
python3 -c "import torch, transformers, peft, vlft; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '|', torch.cuda.get_device_name())"
