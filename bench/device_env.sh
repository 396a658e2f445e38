# Source on a GPU machine without a package index, from the repo root: vlft's pinned wheels (carried in
# .whl/, made by bench/stage_wheels.sh) into /tmp/site once per machine, vlft itself installed editable
# without dependencies, and any carried flash-attn-4 parts staged for bench/peers/install_swift.sh.
#   source bench/device_env.sh
if [ ! -f /tmp/site/.installed ] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && touch /tmp/site/.installed
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "vlft: editable install failed"
for dir in .whl_fa4_*/; do
    [ -d "$dir" ] && mkdir -p /tmp/fa4_stage && cp -n "$dir"* /tmp/fa4_stage/ 2>/dev/null
done
python3 -c "import torch, transformers, peft, vlft; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '|', torch.cuda.get_device_name())"
