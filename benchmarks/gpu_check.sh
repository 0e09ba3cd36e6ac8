#!/usr/bin/env bash
# The one prepared GPU run (issue 13): every figure the README's GPU table needs, in one command,
# sized for a ~10-minute lease. Run on a CUDA machine from the repository root, with a venv that has a
# CUDA build of torch and requirements.txt (or `make setup` there):
#
#   PY=.venv/bin/python bash benchmarks/gpu_check.sh      # results in ${OUT:-benchmarks/out}/gpu/
#
# Prints the GPU model, prediction Gpx/s (bf16 and fp32, one JUMP-sized channel extrapolated),
# training patches/s and PSNR (bf16 and fp32), the loader's patches/s, CAREamics on the same GPU when
# .venv-bench exists, peak GPU memory (in each predict JSON), and the demo workflow end to end with train/predict on CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${OUT:-benchmarks/out}/gpu
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
step() { echo; echo "=== $*"; }

step "GPU"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DEST/gpu.csv"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

for precision in bf16 fp32; do
    step "predict $precision (1080x1080 sites, whole-field tiles)"
    timeout 150 "$PY" benchmarks/bench_predict.py --device cuda --precision "$precision" --size 1080 \
        --tile-size 1280 --batch-size 8 --sites 200 --careamics skip --json "$DEST/predict_$precision.json"
done

for precision in bf16 fp32; do
    step "training $precision (400 steps, batch 128)"
    timeout 120 "$PY" benchmarks/bench_training.py --device cuda --precision "$precision" --steps 400 \
        --batch-size 128 --cell-sites 8 --methods ours-n2v --datasets cells --out "$DEST/training_$precision"
done

step "loader (no network)"
timeout 60 "$PY" benchmarks/bench_loader.py --epochs 2

step "predict bf16 against CAREamics on the same GPU (needs .venv-bench: make bench-env)"
timeout 150 "$PY" benchmarks/bench_predict.py --device cuda --precision bf16 --size 1080 --tile-size 1280 \
    --batch-size 8 --careamics auto --json "$DEST/predict_careamics.json"

step "demo workflow, train/predict on CUDA"
started=$(date +%s)
# The demo config's device is auto: train and predict pick CUDA when torch sees a GPU.
timeout 240 "$PY" -m snakemake --cores 16 --configfile config/config.yaml --config results="$DEST/demo/results" \
    >"$DEST/demo.log" 2>&1 && echo "demo workflow: $(( $(date +%s) - started )) s" || { echo "demo workflow failed"; tail -40 "$DEST/demo.log"; }
grep -h "device cuda\|Mpx/s" "$DEST"/demo/results/*/logs/*/*/*.log 2>/dev/null | tail -5
