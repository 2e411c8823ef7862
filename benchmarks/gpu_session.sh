#!/usr/bin/env bash
# One lent-GPU session of checks, as prepared on the CPU machine: install fastig (and a carried
# captum wheel from .whl/) into the device image, smoke-test the engine on CUDA, then run the
# benchmark suite there. Results land under $OUT (the device tool brings them back).
# Usage here: pip download captum==0.9.0 --no-deps -d .whl (an ignored folder), then with the device tool
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=570)
# Each part's time limit can be set: TESTS_S, KERNELS_S, STEP_S, COMPILE_S, LONG_S, DEFAULT_S (seconds).
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
# The layout setup.py maps (engine/ -> fastig, benchmarks/ inside it), without pip:
# the image cannot fetch setuptools for an editable install.
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r engine /tmp/pkg/fastig && cp -r benchmarks /tmp/pkg/fastig/
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
# Everything issue 24 measures, in one run of about 9 minutes (each part time-boxed, so one slow part
# cannot take the others' time; each bench run writes its own files with device and versions):
(cd tests && timeout "${TESTS_S:-80}" python3 -m pytest -q -p no:cacheprovider -p no:warnings kernels_cases.py \
    test_longformer_attention.py 2>&1 | tail -15)
timeout "${KERNELS_S:-40}" python3 -m fastig.benchmarks.kernels --out "$OUT/results" 2>&1 | tail -20
timeout "${STEP_S:-80}" python3 -m fastig bench model_step --full --repeats 5 --device cuda --out "$OUT/results" \
    2>&1 | tail -25
# 4,096 x 4 tokens, fp32 and bf16: eager, torch.compile default and reduce-overhead (CUDA graphs), first calls apart.
timeout "${COMPILE_S:-100}" python3 -m fastig bench compiled_step --full --repeats 5 --device cuda --out "$OUT/results" \
    2>&1 | tail -12
timeout "${LONG_S:-100}" python3 -m fastig bench long_document --full --repeats 1 --device cuda --out "$OUT/results" \
    2>&1 | tail -20
timeout "${DEFAULT_S:-90}" python3 -m fastig bench default_path --full --repeats 1 --device cuda --out "$OUT/results" \
    2>&1 | tail -20
ls -R "$OUT"
