#!/usr/bin/env bash
# One lent-GPU session of checks, as prepared on the CPU machine: install fastig (and a carried
# captum wheel from .whl/) into the device image, smoke-test the engine on CUDA, then run the
# benchmark suite there. Results land under $OUT (the device tool brings them back).
# Usage on the device machine: bash benchmarks/gpu_session.sh (KERNELS_ONLY=1: the Triton kernels;
# STEPS=1: Longformer attention tests and the model-step scenario; default: quick suite + long_document).
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
# The layout setup.py maps (engine/ -> fastig, kernels/ and benchmarks/ inside it), without pip:
# the image cannot fetch setuptools for an editable install.
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r engine /tmp/pkg/fastig && cp -r kernels benchmarks /tmp/pkg/fastig/
export PYTHONPATH=/tmp/pkg:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch, transformers, captum; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'captum', captum.__version__)"
python3 -c "import triton; print('triton', triton.__version__)" 2>/dev/null
mkdir -p "$OUT/results"
timeout 60 python3 - <<'PY' 2>&1 | tee "$OUT/smoke.log"
import torch, fastig
from fastig.benchmarks.common import ModelSpec, random_ids
spec = ModelSpec("longformer", 2, 256, 4, 64, 1024, 0.3, 0)
model = spec.build()
for precision in ("fp32", "bf16"):
    engine = fastig.Engine(model, precision=precision, device="cuda")
    result = engine.attribute(random_ids(model, 3, 512), n_steps=32)
    s = result.stats
    print(precision, "delta", result.delta.tolist(), "chunk", s.chunk_size, "calls", s.model_calls,
          "peak GB", s.memory.peak_memory_bytes / 1e9, "probe", s.memory.probe, "recompute", s.memory.recompute_layers)
default = fastig.Engine(model, device="cuda").attribute(random_ids(model, 3, 512))
print("default call", [(d.evaluations, d.precision, d.estimated_error) for d in default.documents])
PY
if [ "${STEPS:-0}" = 1 ]; then   # banded Longformer attention on CUDA: its tests, then the model step by attention
    (cd tests && timeout 150 python3 -m pytest -q -p no:cacheprovider -p no:warnings test_longformer_attention.py \
        2>&1 | tail -15)
    timeout "${STEP_S:-300}" python3 -m fastig bench model_step --full --repeats 10 --device cuda --out "$OUT/results" \
        2>&1 | tail -40
    ls -R "$OUT"; exit 0
fi
if [ "${KERNELS_ONLY:-0}" = 1 ]; then
    (cd tests && timeout 150 python3 -m pytest -q -p no:cacheprovider kernels_cases.py 2>&1 | tail -15)
    timeout 90 python3 -m fastig.benchmarks.kernels --out "$OUT/results"
    ls -R "$OUT"; exit 0
fi
# The quick comparisons with Captum (2.3 min on the H200); the model step has its own run above (STEPS=1).
timeout "${QUICK_S:-200}" python3 -m fastig bench quick long_document short_documents steps_sweep length_sweep --quick \
    --device cuda --out "$OUT/results" 2>&1 | tail -60
timeout "${FULL_S:-270}" python3 -m fastig bench long_document --full --repeats 1 --device cuda --out "$OUT/results" \
    2>&1 | tail -40
ls -R "$OUT"
