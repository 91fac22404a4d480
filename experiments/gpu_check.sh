#!/usr/bin/env bash
# One-command GPU check of pruning cost and decode speed (< 10 min on one H100/H200-class GPU); everything it
# writes is under one folder:
#
#   bash experiments/gpu_check.sh [--out DIR] [--device cuda] [--tiny] [--head-scaling alpha|split|none]
#
# --head-scaling: the exchange rate of every prune (default alpha, as the results/cost.csv and speed.csv rows;
# split, numerical's default, adds per-layer float64 refit-error curves: docs/cost.md).
#
#   DIR/env.txt               GPU, driver, library versions, git commit
#   DIR/cost.csv, cost.md     prune SmolLM2 (real weights, all 30 layers, 128 x 2048 WikiText-2) and a random
#                             LLaMA-7B-shape model (all 32 layers, 32 x 2048 random tokens) on the device in
#                             bf16, compensation sequential and dense: stage times, peak device memory, peak
#                             RSS, ratios to one dense calibration pass measured in the same process
#   DIR/cost.png              the same as a figure
#   DIR/speed_*.csv/.png      decode tokens/s and TTFT, dense vs 20% / 50% pruned, batch 1 and 16, 64-token
#                             prompts, 128 new tokens (paper Figure 5 protocol), with the bytes-ratio limit
#                             (limit_speedup) and speedup / limit beside each row
#   DIR/speed.md              the speed rows as a table
#   DIR/log.txt               everything the steps printed
#
# --tiny --device cpu runs the same steps on a tiny random shape in seconds (what tests/test_bench_cost.py
# runs); it checks the plumbing, not the numbers.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="gpu_check_out"; device="cuda"; tiny=0; scaling="alpha"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --head-scaling) scaling="$2"; shift 2 ;;
    *) echo "numprune: error: unknown argument $1 (use --out DIR, --device DEV, --tiny, --head-scaling HS)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
py="${PYTHON:-python}"
cd "$here"
exec > >(tee -a "$out/log.txt") 2>&1

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  echo "git $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  "$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
} > "$out/env.txt"
cat "$out/env.txt"

if [ "$tiny" = 1 ]; then
  dtype=fp32; threads=1
  cost_runs=("--model tiny --nsamples 4 --seqlen 32")
  speed_runs=("tiny --config tiny --new-tokens 4 --reps 1")
else
  dtype=bf16; threads=8
  cost_runs=("--model smollm2 --nsamples 128 --seqlen 2048" "--model llama-7b --nsamples 32 --seqlen 2048")
  speed_runs=("smollm2 --model smollm2 --new-tokens 128 --reps 5 --rounds 2"
              "llama-7b --config llama-7b --new-tokens 128 --reps 5 --rounds 2")
fi

for args in "${cost_runs[@]}"; do
  # shellcheck disable=SC2086
  "$py" experiments/bench_cost.py $args --compensation sequential,dense --ratio 0.5 --dtype "$dtype" \
    --head-scaling "$scaling" --device "$device" --threads "$threads" --out "$out/cost.csv"
done
"$py" experiments/report_cost.py cost --csv "$out/cost.csv" --png "$out/cost.png" > "$out/cost.md"

for run in "${speed_runs[@]}"; do
  name="${run%% *}"; args="${run#* }"
  # shellcheck disable=SC2086
  "$py" experiments/bench_speed.py $args --device "$device" --dtype "$dtype" --ratios 0,0.2,0.5 --round-to 64 \
    --head-scaling "$scaling" --batches 1,16 --prompt-len 64 --threads "$threads" --work-dir "$out/models" \
    --out "$out/speed_$name.csv" --png "$out/speed_$name.png"
done
"$py" experiments/report_cost.py speed "$out"/speed_*.csv > "$out/speed.md"
rm -rf "$out/models"
cat "$out/cost.md" "$out/speed.md"
echo "gpu_check: wrote $out"
