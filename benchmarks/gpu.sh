#!/usr/bin/env bash
# The prepared GPU check: the sd15 benchmark and the recipe (sd15), within 8 minutes, results under $OUT.
#
#   bash benchmarks/gpu.sh --fetch-wheels   # here, once: the wheels the device image lacks, into .whl/ (git-ignored)
#   bash benchmarks/gpu.sh                  # on the device, with .whl carried: results in $OUT (or benchmarks/results/gpu)
#
# The device image has torch, transformers, accelerate, peft and safetensors but not diffusers, bitsandbytes or
# importlib_metadata: they travel as wheels. Each benchmark writes its JSON and table after every variant and
# stage, and --budget stops it cleanly, so a run cut short keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 bitsandbytes==0.50.2 importlib_metadata==10.2.0)

if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        --platform any -d .whl "${WHEELS[@]}"
    exit $?
fi

OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "error: installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, diffusers, bitsandbytes; print('torch', torch.__version__, 'diffusers', diffusers.__version__, \
'bitsandbytes', bitsandbytes.__version__, 'gpu', torch.cuda.get_device_name(0))" 2>&1 | tee "$OUT/versions.txt" || exit 1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

start=$SECONDS
# 1. sd15, what matters most: gradient checkpointing, the fused backward pass (the 8 GiB target), bf16, compile;
#    then the parts (class images: batched, compiled, fewer steps; optimizer step; validation) and the profile
python3 -m benchmarks.bench sd15 --warmup 3 --steps 10 --repeats 1 --rounds 1 --budget 230 --parts --profile \
    --only no_gradient_checkpointing gradient_checkpointing fused_backward_gradient_checkpointing bf16 compile_unet \
    --work /tmp/bench --out "$OUT" 2>&1 | tee "$OUT/sd15.log"
# 2. the recipe (64 class images, 200 steps, 2 checkpoints saved in the background) on the same random SD1.5
python3 -m benchmarks.bench recipe --model sd15 --budget 150 --work /tmp/bench --out "$OUT" 2>&1 | tee "$OUT/recipe.log"
# 3. the other switches, in what is left of 470 s
left=$(( 470 - (SECONDS - start) ))
python3 -m benchmarks.bench sd15 --warmup 3 --steps 10 --repeats 1 --rounds 1 --budget "$left" --name sd15-more \
    --only fused_backward no_channels_last compile_unet_cuda_graphs gradient_checkpointing_no_cache_latents lora \
    lora_gradient_checkpointing --work /tmp/bench --out "$OUT" 2>&1 | tee "$OUT/sd15-more.log"
echo "gpu.sh: $(( SECONDS - start )) s" | tee -a "$OUT/versions.txt"
