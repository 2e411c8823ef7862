"""The dtype the model runs in during the integration steps; everything accumulated stays fp32.

In low precision only the model's forward runs under autocast (its weights stay as they
are); z, e(x), e(b), F(x), F(b), the gradient accumulator and the integrand are fp32, and
each chunk's gradient is cast to fp32 before it is accumulated.
"""

import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .errors import InputError, caller_outside_fastig
from .options import PRECISIONS


class PrecisionWarning(UserWarning):
    """A low precision asked for on a CPU that has no matrix units for it: torch emulates them, much slower
    than fp32."""

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_UNITS = {"bf16": "AVX512-BF16 or AMX", "fp16": "AMX-FP16"}     # what multiplies each low precision natively

# fp16 keeps 5 exponent bits: gradients of a probability through a deep model reach 1e-8 and
# below and flush to zero. The target is multiplied by this before the backward pass and the
# gradient divided by it after, in fp32 (the fixed form of loss scaling); a chunk whose
# gradient still overflows is redone in fp32.
FP16_SCORE_SCALE = 2.0 ** 12


@dataclass(frozen=True)
class Precision:
    """A resolved precision ("fp32", "bf16" or "fp16") on one device type ("cpu", "cuda")."""
    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def score_scale(self) -> float:
        return FP16_SCORE_SCALE if self.name == "fp16" else 1.0

    def autocast(self):
        """The context the model's forward runs in."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve(precision: str, device: torch.device) -> Precision:
    """precision: one of PRECISIONS. "auto" is bf16 on GPUs that have it, fp16 on older GPUs,
    and fp32 on CPU, so that the default agrees with Captum to 1e-4 where most tests and
    checks run. On the 2-core EPYC (AVX512-BF16) bf16 ran a 4-layer Longformer-base step at
    512 tokens 1.6x faster than fp32 (delta 9e-4 against 1e-8); fp16 ran it 40x slower (no
    fp16 matmul units), so ask for bf16 by name there.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r} is not supported; allowed: {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = _gpu_low_precision(device) if device.type == "cuda" else "fp32"
    if device.type == "cpu" and not native_on_this_cpu(precision):
        warnings.warn(f"precision={precision!r} on this CPU, which has no {precision} matrix units "
                      f"({CPU_UNITS[precision]}): torch emulates them, 20x slower than fp32 for a 4-layer BERT on an "
                      "AVX2 EPYC; precision='fp32' (or 'auto') is the fast one here", PrecisionWarning,
                      stacklevel=caller_outside_fastig())
    return Precision(precision, device.type)


def native_on_this_cpu(precision: str) -> bool:
    """Whether this CPU multiplies matrices of this precision natively (fp32 always). fp16 without AMX-FP16
    ran a Longformer step 40x slower than fp32 even on the AVX512-BF16 EPYC."""
    if precision == "bf16":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return precision != "fp16" or torch.cpu._is_amx_fp16_supported()


def _gpu_low_precision(device: torch.device) -> str:
    """bf16 on GPUs with bf16 tensor cores (compute capability 8.0 on: A100, L4, H100; AMD's), else fp16.

    torch.cuda.is_bf16_supported() says yes on a T4 (7.5, Colab's free GPU) too, because bf16 tensors
    can be made there, but its matrix products are emulated without tensor cores; fp16 has them.
    """
    if torch.version.hip:
        return "bf16"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def default_path_precision(device: torch.device) -> str | None:
    """The low precision the default call (n_steps=None) tries where it is fast, or None (fp32 only).

    GPUs: bf16 where they have it, else fp16. CPUs: bf16 with AMX tiles. Without AMX (AVX512-BF16
    only, as on the 2-core EPYC) a Longformer step is 2.1-2.3x faster in bf16, but bf16's 1.5e-2
    error there is too close to the default's 2e-2 accuracy to pass its check reliably.
    """
    if device.type == "cuda":
        return _gpu_low_precision(device)
    if device.type == "cpu" and torch.cpu._is_amx_tile_supported():
        return "bf16"
    return None
