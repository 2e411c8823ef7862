#!/usr/bin/env bash
# One lent-GPU session of checks, as prepared on the CPU machine: install fastig (and a carried
# captum wheel from .whl/) into the device image, smoke-test the engine on CUDA, then run the
# benchmark parts issue 24 measures. Results land under $OUT (the device tool brings them back).
# Usage here: pip download captum==0.9.0 --no-deps -d .whl (an ignored folder), then with the device tool
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
# The parts run in order of what issue 24's done-when needs, under one deadline (TOTAL_S, default 560 s
# after the install): each gets its own box or the time left, whichever is less, and a part with under
# 20 s left is skipped, so the parts that matter most are never starved by a slow one. A bench part stopped
# by its box (SIGTERM, then SIGKILL 15 s later) writes the rows it measured (files named ...-stopped). Boxes
# from the H200 run of 2026-11-26: long_document --full took 2.5 min (an H100, with less memory bandwidth,
# gets 200 s), model_step --full 2.9 min at 10 repeats. PARTS="a b" runs only those.
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
deadline=$((SECONDS + ${TOTAL_S:-560}))
parts=" ${PARTS:-smoke long_document model_step step_profile kernels tests compiled_step default_path} "

# part NAME BOX COMMAND...: COMMAND within min(BOX, time left), the last lines of its output shown.
part() {
    local name=$1 box=$2 left=$((deadline - SECONDS))
    shift 2
    [[ $parts == *" $name "* ]] || return 0
    if [ "$left" -lt 20 ]; then echo "== $name: skipped, ${left} s left"; return 0; fi
    [ "$box" -gt "$left" ] && box=$left
    echo "== $name: up to $box s"
    local started=$SECONDS
    timeout -k 15 "$box" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $status after $((SECONDS - started)) s$([ $status -eq 124 ] && echo ', timed out')"
}
bench() { python3 -m fastig bench "$@" --device cuda --out "$OUT/results"; }

part smoke 45 python3 - <<'PY'
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
# 4,096 tokens, 250 steps: Captum's batch sweep and best, fastig fp32 / bf16 / fp16 (done-when: bf16 <= 1.5 s,
# Pearson >= 0.999; fp32 >= 3x Captum's best).
part long_document 200 bench long_document --full --repeats 1
# One step by attention and BERT's (done-when: bf16 >= 40% of the measured bf16 peak).
part model_step 150 bench model_step --full --repeats 3
# Where the bf16 and fp32 step's time goes, kernel by kernel: what the next change on CPU should aim at.
part step_profile 60 bench step_profile --full --repeats 3
# The accumulate kernel's bandwidth finding its documents' rows itself (3 launches a call) (done-when: >= 70% of copy).
part kernels 40 python3 -m fastig.benchmarks.kernels --out "$OUT/results"
part tests 80 bash -c "cd tests && python3 -m pytest -q -p no:cacheprovider -p no:warnings kernels_cases.py \
    test_longformer_attention.py"
# 4,096 x 4 tokens, fp32 and bf16: eager, torch.compile default and reduce-overhead (CUDA graphs), first calls apart.
part compiled_step 120 bench compiled_step --full --repeats 5
part default_path 120 bench default_path --full --repeats 1
ls -R "$OUT"
# Last, so that the reply's tail carries it: each done-when target, met or not, from this run's results.
python3 -m fastig.benchmarks.done_when "$OUT/results"
