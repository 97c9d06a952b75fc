#!/usr/bin/env bash
# One H100/H200, 8 minutes at most: what the project's performance needs a GPU to show (issue 16).
#
#     bash bench/gpu_check.sh          # from anywhere; JSON under $OUT/bench when $OUT is set, else a temporary folder
#
# 1. the training-step benchmark of the plain ViT, SplitMask, BEiT and DINO at ViT-S/16 and ViT-B/16, 224 px, bf16
#    autocast, batch 128 a GPU (the paper's 2048 over 16 GPUs): eager, then compiled (torch.compile, as
#    run.compile=true);
# 2. the data-pipeline benchmark on synthetic 224 px JPEGs, with a DataLoader of 8 workers, sized for 2,500 img/s;
# 3. the CUDA-marked tests (pytest -m cuda).
# Each part has a time limit, and a part that the 8 minutes could no longer hold is skipped (said so); the step
# benchmark saves each method's row as it finishes (--sequential), so a part stopped at its limit keeps what ran.
# Assumes only the project's dependencies and a CUDA build of torch; PYTHON=... picks the interpreter (default: the
# checkout's .venv, else python3), BUDGET_S=... the total (default 480). Paste what it prints into bench/RESULTS.md.
set -u
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
BUDGET=${BUDGET_S:-480}
RESULTS=${OUT:-$(mktemp -d)}/bench
mkdir -p "$RESULTS"
START=$SECONDS

part() {  # part NAME LIMIT_S COMMAND...: run COMMAND for at most LIMIT_S seconds, and no later than the budget
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START) - 15))  # 15 s: what a stopped part takes to stop
    if ((left < 30)); then
        echo "== $name: skipped, the ${BUDGET} s budget is spent"
        return
    fi
    ((limit > left)) && limit=$left
    echo
    echo "== $name (at most $limit s): $*"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (stopped at its limit)')"
}

echo "== gpu_check: $(date -Is), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'), budget ${BUDGET} s"
echo "== results: $RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>/dev/null \
    || echo "nvidia-smi: not found"
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'device',
torch.cuda.get_device_name() if torch.cuda.is_available() else None)" || exit 1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "torch sees no CUDA device: nothing to check"; exit 1; }

STEP=(-m bench step --device cuda --bf16 --batch 128 --sequential --out "$RESULTS")
part "step, eager, ViT-S and ViT-B" 110 "$PY" "${STEP[@]}" --size small base --steps 10 --repeat 3 --warmup 3
part "data pipelines, 8 workers" 70 "$PY" -m bench data --datasets synthetic --workers 8 --samples 100 \
    --batch 64 --batches 30 --gpu-img-s 2500 --device cuda --out "$RESULTS"
part "CUDA tests" 60 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
part "step, compiled, ViT-B" 150 "$PY" "${STEP[@]}" --size base --compile --steps 10 --repeat 2 --warmup 3
part "step, compiled, ViT-S" 150 "$PY" "${STEP[@]}" --size small --compile --steps 10 --repeat 2 --warmup 3

echo
echo "== gpu_check: done in $((SECONDS - START)) s; JSON in $RESULTS:"
ls -1 "$RESULTS"
