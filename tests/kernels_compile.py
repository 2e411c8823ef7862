"""The Triton kernels compiled for GPUs on a machine without one: for a Hopper (sm_90) no spills, at most 128
registers and 16-byte loads; for a T4 (sm_75) and an A100 (sm_80) they lower there too, with 16-byte loads.

Each launcher runs on CPU tensors while Triton's driver is one that reports such a device and compiles
instead of launching: the kernel goes through Triton's passes and ptxas (both ship with triton) with the
arguments, sizes and alignment that launch would have on that GPU. This catches what the interpreter cannot:
a construct Triton does not lower for the GPU, registers spilled, gradients read in pieces narrower than
16 bytes.

Not collected by the main test run (it replaces triton's driver for the rest of its process):
tests/test_kernels.py runs this file in its own pytest process.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from fastig.kernels import accumulation, finalization, interpolation  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1: the interpreter would run the kernels instead of compiling them",
                allow_module_level=True)
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
if not (TOOLS / "cuobjdump").exists():
    pytest.skip(f"this triton has no CUDA tools in {TOOLS}", allow_module_level=True)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 4096, 768, 16), (3, 512, 768, 48), (2, 97, 1000, 5), (1, 7, 33, 3)]  # G, L, H, rows c; last two odd
# finalize reads and writes fp32 only
OPS = [(op, dtype) for op in ("interpolate", "accumulate") for dtype in DTYPES] + [("finalize", torch.float32)]


class CompilingDriver:
    """Triton's driver for a GPU that is not there, of compute capability `capability` (90: Hopper)."""

    capability = 90

    def get_current_target(self):
        return GPUTarget("cuda", self.capability, 32)

    def get_current_device(self):
        return self.capability          # Triton keeps compiled kernels per device: one per capability

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


COMPILING = CompilingDriver()
driver.set_active(COMPILING)


def _compiled(kernel, launch, capability: int = 90) -> bytes:
    """The cubin `launch()` compiles `kernel` to for a GPU of that compute capability: its launch becomes a
    warm-up, which compiles and returns."""
    COMPILING.capability = capability
    compiled = []
    run = kernel.run
    kernel.run = lambda *args, grid, warmup, **kwargs: compiled.append(run(*args, grid=grid, warmup=True, **kwargs))
    try:
        launch()
    finally:
        del kernel.run
    assert len(compiled) == 1
    return compiled[0].asm["cubin"]


def _launches(n_docs, length, hidden, rows, dtype):
    """(kernel, launch) of each op at this shape, the grads or z in `dtype`, as the engine calls them."""
    n_per_row = length * hidden
    start, difference = torch.randn(n_docs, length, hidden), torch.randn(n_docs, length, hidden)
    docs = torch.arange(rows) * n_docs // rows               # each document's rows together, as in a chunk
    steps = torch.arange(rows) % 16
    grads = torch.randn(rows, n_per_row).to(dtype)
    gradient_sum, integrand = torch.zeros(n_docs, n_per_row), torch.zeros(n_docs, 16)
    return {
        "interpolate": (interpolation._interpolate_kernel,
                        lambda: interpolation.interpolate(start, difference, docs, torch.rand(rows), dtype)),
        "accumulate": (accumulation._accumulate_kernel,
                       lambda: accumulation.accumulate(gradient_sum, integrand, grads, difference.flatten(1), docs,
                                                       steps, torch.rand(16))),
        "finalize": (finalization._finalize_kernel, lambda: finalization.finalize(difference, start)),
    }


def _inspect(cubin: bytes, tmp_path) -> tuple[dict, str]:
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)

    def dump(option):
        return subprocess.run([str(TOOLS / "cuobjdump"), option, str(path)], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    resources = dump("--dump-resource-usage")
    usage = {name: int(value) for name, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", resources)}
    return usage, dump("-sass")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("op, dtype", OPS)
def test_kernel_compiles_for_hopper_without_spills(op, shape, dtype, tmp_path):
    kernel, launch = _launches(*shape, dtype)[op]
    usage, sass = _inspect(_compiled(kernel, launch), tmp_path)
    # 8 bytes: with Triton 3.6 (the GPU image's) ptxas keeps accumulate's bit mask of run starts in one stack
    # slot across its loop over candidate rows, one L1 read a candidate; a spill that costs shows as more
    # (finalize's 4,096 values a program: 96 bytes).
    assert usage["LOCAL"] == 0 and usage["STACK"] <= 8, f"{op}: registers spilled: {usage}"
    if shape[1] * shape[2] % 16 == 0:     # Triton specializes a launch to 16-aligned rows when L*H divides by 16
        assert usage["REG"] <= 128, f"{op}: {usage['REG']} registers a thread: under 4 programs of 4 warps an SM"
        assert "LDG.E.128" in sass, f"{op}: no 16-byte load"
        assert "LDG.E.U16" not in sass, f"{op}: reads 16-bit values one at a time"


@pytest.mark.parametrize("capability", [75, 80], ids=["T4", "A100"])
@pytest.mark.parametrize("op, dtype", OPS)
def test_kernel_compiles_for_older_gpus(op, dtype, capability, tmp_path):
    """Colab's GPUs among them (a T4 gets fp16, an A100 bf16): the kernels lower there too, with 16-byte loads."""
    kernel, launch = _launches(1, 4096, 768, 16, dtype)[op]
    _, sass = _inspect(_compiled(kernel, launch, capability), tmp_path)
    assert "LDG.E.128" in sass and "LDG.E.U16" not in sass, f"{op}: not read 16 bytes at a time"
