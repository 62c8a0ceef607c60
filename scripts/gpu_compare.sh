#!/usr/bin/env bash
# The seed's comparison at full width on one CUDA GPU: AlexNet, ResNet-18 and DenseNet-121, each
# with undersampling, oversampling + augmentation and a cost-weighted loss, by 5-fold
# patient-level cross-validation. Folds train in JOBS processes sharing the card (one small
# network leaves an accelerator mostly idle), each with mixed precision.
#
#   scripts/gpu_compare.sh DATA OUT [more `idcscan compare` options]
#
# JOBS (default 9) and EPOCHS (default 12) set the pace; PYTHON the interpreter. Nothing is
# exported (--no-export): the report is OUT/comparison.md with a confusion matrix per
# configuration and the pooled ROC/PR curves. Re-running with the same OUT resumes.
# Fails at once, with the reason, where torch sees no CUDA device.
set -euo pipefail
usage="usage: scripts/gpu_compare.sh DATA OUT [compare options]"
data=${1:?$usage}
out=${2:?$usage}
shift 2
python=${PYTHON:-python3}

"$python" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_compare: torch sees no CUDA device; this comparison needs one")
card = torch.cuda.get_device_properties(0)
print(
    f"torch {torch.__version__}, CUDA {torch.version.cuda}, {card.name}, "
    f"{card.total_memory / 2**30:.0f} GiB, {card.multi_processor_count} multiprocessors"
)
PY

exec "$python" -m idcscan.cli compare --data "$data" --out "$out" \
    --archs alexnet resnet18 densenet121 --balance undersample oversample weighted \
    --augment stain --width 1 --epochs "${EPOCHS:-12}" --max-per-patient 150 --folds 5 \
    --seed 0 --device cuda --jobs "${JOBS:-9}" --threads 1 --no-progress --no-export --resume "$@"
