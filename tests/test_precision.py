"""Low precision: the model's forward in bf16 / fp16, everything accumulated in fp32.

What users rely on: the token ranking barely moves (Pearson >= 0.999 against fp32), the
delta stays near fp32's, the endpoints F(x), F(b) are exact fp32 values, and a chunk that
overflows is redone in fp32 rather than poisoning the result.
"""

import pytest
import torch

import fastig
from fastig.precision import default_path_precision, resolve
from fastig.reference import _pearson

from conftest import FAMILIES, make_text

# Relative rounding unit of each dtype; the delta of a low-precision run may differ from
# fp32's by a few of these times |F(x)| + |F(b)|.
EPSILON = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}


@pytest.mark.parametrize("family", FAMILIES + ("albert", "big-bird"))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_agrees_with_fp32(models, tokenizer, family, precision):
    model, text = models(family), make_text(37, seed=3)
    reference = fastig.Engine(model, tokenizer, precision="fp32").attribute(text, n_steps=24, target=1)
    result = fastig.Engine(model, tokenizer, precision=precision).attribute(text, n_steps=24, target=1)
    assert result.stats.precision == precision and result.stats.fallbacks == 0
    assert _pearson(result.token_scores[0], reference.token_scores[0]) >= 0.999
    # F(x) and F(b) come from fp32 forwards whatever the precision of the steps.
    assert torch.equal(result.output_at_input, reference.output_at_input)
    assert torch.equal(result.output_at_baseline, reference.output_at_baseline)
    scale = float(reference.output_at_input.abs() + reference.output_at_baseline.abs())
    assert abs(float(result.delta[0] - reference.delta[0])) <= 16 * EPSILON[precision] * scale
    assert result.attributions.dtype == torch.float32 and result.integrand.dtype == torch.float32


def test_overflowing_chunk_is_redone_in_fp32(models, tokenizer, monkeypatch):
    model, text = models("bert"), make_text(20)
    reference = fastig.Engine(model, tokenizer, precision="fp32").attribute(text, n_steps=12, chunk_size=5)
    classify = model.classifier.forward

    def overflow_under_autocast(hidden):
        logits = classify(hidden)
        return logits * float("inf") if torch.is_autocast_enabled("cpu") else logits

    monkeypatch.setattr(model.classifier, "forward", overflow_under_autocast)
    result = fastig.Engine(model, tokenizer, precision="fp16").attribute(text, n_steps=12, chunk_size=5)
    assert result.stats.fallbacks == 3     # every chunk of 5, 5 and 2 steps
    assert torch.equal(result.attributions, reference.attributions)
    assert torch.equal(result.delta, reference.delta)


@pytest.mark.parametrize("capability, low", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((6, 0), "fp16")],
                         ids=["H100", "A100", "T4", "P100"])
def test_auto_is_fp32_on_cpu_and_low_precision_on_gpus(monkeypatch, capability, low):
    """bf16 where the GPU has bf16 tensor cores; a T4 makes bf16 tensors (torch.cuda.is_bf16_supported() is true
    there) but would multiply them emulated, so fp16."""
    assert resolve("auto", torch.device("cpu")).name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve("auto", torch.device("cuda")).name == low
    assert default_path_precision(torch.device("cuda")) == low
    assert resolve("fp16", torch.device("cpu")).name == "fp16"


@pytest.mark.parametrize("precision, units, fast", [("bf16", ("_is_avx512_bf16_supported",), True),
                                                    ("bf16", ("_is_amx_tile_supported",), True),
                                                    ("bf16", (), False), ("fp16", ("_is_avx512_bf16_supported",), False),
                                                    ("fp16", ("_is_amx_fp16_supported",), True), ("fp32", (), True)])
def test_a_low_precision_the_cpu_emulates_is_warned_of(models, monkeypatch, precision, units, fast):
    """bf16 by name on a CPU without bf16 matrix units (an AVX2-only EPYC of CI's kind) ran 20x slower than
    fp32, and fp16 without AMX-FP16 40x on the AVX512-BF16 one, where the README advised bf16 for speed: said
    at the user's line, once per Engine; where the CPU has the units, nothing is said."""
    import warnings

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda name=name: name in units)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fastig.Engine(models("bert"), precision=precision)
    slow = [w for w in said if issubclass(w.category, fastig.PrecisionWarning)]
    assert len(slow) == (0 if fast else 1)
    if slow:
        assert slow[0].filename == __file__ and f"precision='{precision}' on this CPU" in str(slow[0].message)
