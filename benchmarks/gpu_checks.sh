#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md in one go, for a lent GPU machine without internet:
# CUDA tests (fixture equivalence on the GPU, a training step), the core and viewer benchmarks,
# and a timed training at 128² whose G_ema comes back for KID on any machine (train_builtin.py --kid-of).
#
#   benchmarks/gpu_checks.sh OUT_DIR DATA_128 [TRAIN_MINUTES] [FIXTURES] [BUDGET_S]
#
# DATA_128: the built-in dataset rendered at 128² (or a subset of it); FIXTURES: ../shared/fixtures/original.
# BUDGET_S: wall-clock seconds for the whole script; the training is shortened to end inside it.
set -u
out=${1:?usage: gpu_checks.sh OUT_DIR DATA_128 [TRAIN_MINUTES] [FIXTURES] [BUDGET_S]}
data=${2:?the 128² dataset folder}
minutes=${3:-4}
export EPIGRAF_FIXTURES=${4:-${EPIGRAF_FIXTURES:-../shared/fixtures/original}}
budget=${5:-100000}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
run=$(mktemp -d)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_augment.py \
    tests/test_discriminator.py -k "cuda or twice" 2>&1 | tail -15
} 2>&1 | tee "$out/cuda_tests.txt"

for b in 4 32; do
  timeout 120 python3 benchmarks/bench_core.py --device cuda --batch $b --repeats 5 --out "$out/core_cuda_b$b.json"
done
timeout 150 python3 benchmarks/bench_viewer.py --device cuda --presets ffhq512 ffhq256 builtin \
  --resolutions 128 256 512 --steps 1 2 --repeats 5 --out "$out/viewer_cuda.json"

# leave 75 s for start-up, the final snapshot and the copies below
minutes=$(python3 -c "print(round(max(0.5, min($minutes, ($budget - $SECONDS - 75) / 60)), 2))")
echo "training for $minutes minutes"
timeout $(python3 -c "print(int($minutes * 60 + 120))") python3 benchmarks/train_builtin.py --minutes "$minutes" --resolution 128 \
  --data "$data" --device cuda --batch-size 32 --workers 6 --no-kid --run "$run" --out "$out/train_128_cuda.json"
python3 - "$run" "$out" <<'EOF'
import shutil, sys
from pathlib import Path
from epigraf.checkpoint import load_checkpoint, save_checkpoint
from epigraf.train.run_snapshots import latest_snapshot
run, out = Path(sys.argv[1]), Path(sys.argv[2])
ckpt = load_checkpoint(latest_snapshot(run)[0])
save_checkpoint(out / "g_ema_128.safetensors", ckpt.config, ckpt.G_ema, metadata=ckpt.metadata)
shutil.copy(run / "stats.jsonl", out / "train_128_stats.jsonl")
grids = sorted(run.glob("fakes-*.png"))
if grids:
    shutil.copy(grids[-1], out / "train_128_fakes.png")
EOF
