#!/usr/bin/env bash
# The one prepared GPU run (issues 13, 19): every figure docs/benchmarks.md's GPU table needs, in one command,
# sized for a ~10-minute lease. Run on a CUDA machine from the repository root, with a venv that has a
# CUDA build of torch and requirements.txt (or `make setup` there):
#
#   PY=.venv/bin/python bash benchmarks/gpu_check.sh      # results in ${OUT:-benchmarks/out}/gpu/
#
# Prints the GPU model; predict_array's dask pipeline on 1080 x 1080 sites with the real U-Net in bf16
# and fp32 (Gpx/s, Mpx per CPU second, mean and peak GPU utilisation sampled by nvidia-smi, peak GPU
# memory) and with the identity network (the pipeline's own ceiling on this node's cores); CAREamics
# 0.3.5 on the same GPU when .venv-bench exists; training patches/s and PSNR (bf16 and fp32), the
# loader's patches/s, and the demo workflow end to end with train/predict on CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${OUT:-benchmarks/out}/gpu
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
step() { echo; echo "=== $*"; }

step "GPU"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DEST/gpu.csv"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

# GPU utilisation while a command runs: nvidia-smi samples every 200 ms into $DEST/$1.util.csv.
with_utilisation() {
    local name=$1; shift
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 >"$DEST/$name.util.csv" &
    local sampler=$!
    "$@"
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    awk -F', ' '{ n++; s += $1; if ($1 > m) m = $1; if ($2 > g) g = $2 } END { if (n) printf "GPU utilisation: mean %.0f %%, peak %d %% over %d samples; GPU memory used (nvidia-smi) peak %d MiB\n", s / n, m, n, g }' "$DEST/$name.util.csv"
}

# Whole fields as one tile (the GPU default), 8 per forward pass; the dask graph's workers default to
# torch's threads (all cores here).
for precision in bf16 fp32; do
    step "predict_array (dask graph), U-Net $precision, 600 sites of 1080x1080"
    with_utilisation "predict_$precision" timeout 150 "$PY" benchmarks/bench_predict.py --device cuda \
        --precision "$precision" --size 1080 --batch-size 8 --repeats 2 --sites 600 --careamics skip \
        --json "$DEST/predict_$precision.json"
done

step "predict_array (dask graph), identity network on CUDA: the pipeline's ceiling, 600 sites"
with_utilisation predict_identity timeout 120 "$PY" benchmarks/bench_predict.py --device cuda --identity \
    --size 1080 --batch-size 8 --repeats 2 --sites 600 --stages 16 --json "$DEST/predict_identity.json"

step "U-Net bf16 against CAREamics on the same GPU, one 1080x1080 image (needs .venv-bench: make bench-env)"
timeout 150 "$PY" benchmarks/bench_predict.py --device cuda --precision bf16 --size 1080 --batch-size 8 \
    --careamics auto --json "$DEST/predict_careamics.json"

for precision in bf16 fp32; do
    step "training $precision (400 steps, batch 128)"
    timeout 120 "$PY" benchmarks/bench_training.py --device cuda --precision "$precision" --steps 400 \
        --batch-size 128 --cell-sites 8 --methods ours-n2v --datasets cells --out "$DEST/training_$precision"
done

step "loader (no network)"
timeout 60 "$PY" benchmarks/bench_loader.py --epochs 2

step "demo workflow, train/predict on CUDA"
started=$(date +%s)
# The demo config's device is auto: train and predict pick CUDA when torch sees a GPU.
timeout 240 "$PY" -m snakemake --cores 16 --configfile config/config.yaml --config results="$DEST/demo/results" \
    >"$DEST/demo.log" 2>&1 && echo "demo workflow: $(( $(date +%s) - started )) s" || { echo "demo workflow failed"; tail -40 "$DEST/demo.log"; }
grep -h "device cuda\|Mpx/s" "$DEST"/demo/results/*/logs/*/*/*.log 2>/dev/null | tail -5
