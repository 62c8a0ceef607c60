#!/usr/bin/env bash
# The GPU worker, proven on a fresh CUDA machine in under 8 minutes: every figure printed, each
# as a ratio to the ceiling measured in the same run.
#
#   benchmarks/gpu_check.sh            (from the repository root, idcscan installed)
#
# 1. the card (nvidia-smi); onnxruntime-gpu installed in place of onnxruntime, at the same
#    version (ORT_GPU_WHEELS=DIR installs from a folder of wheels: an offline machine);
# 2. a session that really runs on CUDA (onnxruntime falls back to the CPU quietly otherwise);
# 3. bare CUDA ceilings: FP32 with host arrays, FP32 with IO binding, FP16 (benchmarks/gpu_ceilings.py);
# 4. `idcscan score` of the full-size slide on the CUDA provider, with the card's utilisation;
# 5. the full-slide benchmark through real workers on CUDA: one process, then WORKERS (default 4)
#    sharing the card;
# 6. one training epoch with mixed precision (benchmarks/train_throughput.py --device cuda).
#
# SCALE (default 1) shrinks the slide; PYTHON names the interpreter; GPU_CHECK_INSTALL=0 never
# installs anything. Without a usable CUDA GPU it stops at once, exit 1, with one line saying why:
# it never measures the CPU in the GPU's place.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
scale=${SCALE:-1}
workers=${WORKERS:-4}
started=$SECONDS

fail() {
    echo "gpu_check: $*" >&2
    exit 1
}
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - started)); }

command -v nvidia-smi >/dev/null || fail "no NVIDIA GPU here (nvidia-smi not found)"
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null |
    head -1) || true
[ -n "$card" ] || fail "nvidia-smi sees no GPU"
step "card: $card"

has_cuda() {
    "$python" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' \
        2>/dev/null
}
if ! has_cuda; then
    [ "${GPU_CHECK_INSTALL:-1}" != 0 ] || echo "gpu_check: onnxruntime-gpu absent; not installing (GPU_CHECK_INSTALL=0)"
    if [ "${GPU_CHECK_INSTALL:-1}" != 0 ]; then
        step "installing onnxruntime-gpu"
        version=$("$python" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))' 2>/dev/null) ||
            version=""
        pin="${version:+==$version}"
        "$python" -m pip uninstall -q -y onnxruntime >/dev/null 2>&1 || true
        if [ -n "${ORT_GPU_WHEELS:-}" ]; then
            "$python" -m pip install -q --no-index --find-links "$ORT_GPU_WHEELS" "onnxruntime-gpu$pin" ||
                fail "could not install onnxruntime-gpu$pin from $ORT_GPU_WHEELS"
        else
            # The extras bring CUDA and cuDNN as pip wheels (onnxruntime.preload_dlls loads them).
            "$python" -m pip install -q "onnxruntime-gpu[cuda,cudnn]$pin" ||
                "$python" -m pip install -q "onnxruntime-gpu$pin" ||
                fail "could not install onnxruntime-gpu$pin (offline? set ORT_GPU_WHEELS to a folder of wheels)"
        fi
    fi
fi

step "onnxruntime on CUDA"
"$python" -m benchmarks.gpu_ceilings probe  # exits 1 with the reason unless CUDA really runs

step "bare CUDA ceilings (tiles/s)"
"$python" -m benchmarks.gpu_ceilings ceilings

step "the full-size slide"
slide=$("$python" -m benchmarks.full_slide --scale "$scale" --build-only | tail -1)

step "idcscan score on CUDA, the card's utilisation sampled every 200 ms"
out=$(mktemp -d)
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 >"$out/busy" &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
score_start=$(date +%s.%N)
IDCSCAN_EXECUTION_PROVIDER=cuda "$python" -m idcscan.cli score "$slide" --out "$out/score" --json \
    >"$out/score.json"
score_end=$(date +%s.%N)
kill "$sampler" 2>/dev/null || true
"$python" - "$out" "$score_start" "$score_end" <<'PY'
import json, sys
from pathlib import Path

out, start, end = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
summary = json.loads((out / "score.json").read_text())
busy = [float(v) for v in (out / "busy").read_text().split() if v.strip()]
print(json.dumps({
    "process_s": round(end - start, 2),
    "seconds": summary.get("seconds"),
    "tiles": summary.get("tissue_tiles"),
    "tiles_per_s": summary.get("tiles_per_s"),
    "gpu_busy_mean_pct": round(sum(busy) / len(busy), 1) if busy else None,
    "gpu_busy_samples": len(busy),
}, indent=2))
PY

step "one worker on CUDA, the full-size slide end to end"
IDCSCAN_EXECUTION_PROVIDER=cuda "$python" -m benchmarks.full_slide --scale "$scale" --repeats 3

step "$workers workers sharing the card"
IDCSCAN_EXECUTION_PROVIDER=cuda "$python" -m benchmarks.full_slide --scale "$scale" --repeats 2 \
    --workers "$workers"

step "one training epoch, mixed precision"
if "$python" -c 'import torch' 2>/dev/null; then
    "$python" -m benchmarks.train_throughput --device cuda --archs resnet18 --width 1 \
        --train-steps 50 --eval-repeats 1
else
    echo "training: skipped, torch is not installed (pip install -e '.[train]')"
fi
step "done"
