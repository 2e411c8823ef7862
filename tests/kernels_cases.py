"""The Triton kernels against their torch references, on CUDA or (TRITON_INTERPRET=1) on this CPU.

Not collected by the main test run (triton must see TRITON_INTERPRET before it is imported):
tests/test_kernels.py runs this file in its own pytest process. On a GPU machine run it
directly: python -m pytest -q tests/kernels_cases.py
"""

import os

import pytest
import torch

from fastig.kernels.accumulation import accumulate, accumulate_reference
from fastig.kernels.finalization import finalize, finalize_reference
from fastig.kernels.interpolation import interpolate, interpolate_reference

from conftest import assert_close, make_text

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"
# Kernel and reference both compute in fp32 and differ by summation order and fused
# multiply-adds; a low-precision output may then round to the neighbouring value.
TOLERANCES = {torch.float32: (1e-6, 1e-6), torch.bfloat16: (2**-7, 1e-6), torch.float16: (2**-10, 1e-6)}
SHAPES = [  # documents G, length L, hidden H, rows c
    (1, 1, 32, 1), (3, 7, 768, 3), (3, 97, 1000, 16), (1, 4096, 768, 1), (2, 97, 32, 3)]
# The interpreter runs each program as Python: accumulate on the 4,096-token document (6,144 programs) took 45 s
# a dtype there, and 97 x 1000 already spans 190 programs of columns. On CUDA every shape runs.
ACCUMULATE_SHAPES = SHAPES if DEVICE == "cuda" else [shape for shape in SHAPES if shape[1] < 4096]


def _random(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def _rows(n_docs: int, rows: int, n_steps: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(docs, steps) of `rows` consecutive (document, step) pairs starting inside the first document."""
    pairs = torch.arange(n_steps // 2, n_steps // 2 + rows, device=DEVICE) % (n_docs * n_steps)
    return pairs // n_steps, pairs % n_steps


@pytest.mark.parametrize("dtype", TOLERANCES)
@pytest.mark.parametrize("n_docs, length, hidden, rows", SHAPES)
def test_interpolate(n_docs, length, hidden, rows, dtype):
    start, difference = _random(n_docs, length, hidden), _random(n_docs, length, hidden)
    docs, _ = _rows(n_docs, rows)
    alphas = torch.rand(rows, device=DEVICE)
    rtol, atol = TOLERANCES[dtype]
    got = interpolate(start, difference, docs, alphas, dtype)
    assert got.dtype == dtype and got.shape == (rows, length, hidden)
    assert_close(got.float(), interpolate_reference(start, difference, docs, alphas, dtype).float(),
                 rtol=rtol, atol=atol, what=f"z {dtype}")


def test_interpolate_reads_non_contiguous_inputs():
    start = _random(7, 3, 64).transpose(0, 1)             # [3, 7, 64] viewed, not contiguous
    difference = _random(3, 64, 7).transpose(1, 2)
    docs, alphas = torch.tensor([2, 0, 2], device=DEVICE), torch.rand(3, device=DEVICE)
    assert not start.is_contiguous() and not difference.is_contiguous()
    assert_close(interpolate(start, difference, docs, alphas), interpolate_reference(start, difference, docs, alphas),
                 rtol=1e-6, atol=1e-6, what="z")


def _accumulated(op, n_docs, n_per_row, grads, docs, steps, weights, difference):
    gradient_sum = torch.ones(n_docs, n_per_row, device=DEVICE)     # accumulates onto what is there
    integrand = torch.full((n_docs, len(weights)), float("nan"), device=DEVICE)
    op(gradient_sum, integrand, grads, difference, docs, steps, weights)
    return gradient_sum, integrand


@pytest.mark.parametrize("dtype", TOLERANCES)
@pytest.mark.parametrize("n_docs, length, hidden, rows", ACCUMULATE_SHAPES)
def test_accumulate(n_docs, length, hidden, rows, dtype):
    n_per_row = length * hidden
    grads = _random(rows, n_per_row, dtype=dtype)
    docs, steps = _rows(n_docs, rows)
    weights, difference = torch.rand(16, device=DEVICE), _random(n_docs, n_per_row)
    got = _accumulated(accumulate, n_docs, n_per_row, grads, docs, steps, weights, difference)
    expected = _accumulated(accumulate_reference, n_docs, n_per_row, grads, docs, steps, weights, difference)
    assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5, what="gradient sum")
    written = torch.zeros_like(expected[1], dtype=torch.bool)
    written[docs, steps] = True
    assert torch.isnan(got[1][~written]).all()                        # only the chunk's (document, step) pairs
    scale = float(expected[1][written].abs().max())
    assert_close(got[1][written], expected[1][written], rtol=1e-5, atol=1e-5 * scale, what="integrand")


def test_accumulate_when_a_document_comes_back():
    grads, difference = _random(5, 300), _random(2, 300)
    docs, steps = torch.tensor([0, 0, 1, 1, 0], device=DEVICE), torch.tensor([0, 1, 0, 1, 2], device=DEVICE)
    weights = torch.rand(3, device=DEVICE)
    got = _accumulated(accumulate, 2, 300, grads, docs, steps, weights, difference)
    expected = _accumulated(accumulate_reference, 2, 300, grads, docs, steps, weights, difference)
    assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5, what="gradient sum")
    assert_close(got[1][:, :2], expected[1][:, :2], rtol=1e-5, atol=1e-4, what="integrand")


@pytest.mark.parametrize("docs", [[2, 0, 2, 1, 0, 0, 3], [0, 2, 4, 1, 3, 5], [3, 3, 3], [i * 7 % 5 for i in range(150)]],
                         ids=["interleaved", "target-major", "one-document", "150-rows-interleaved"])
def test_accumulate_finds_the_documents_rows_in_any_order(docs):
    """The kernel finds each document's rows itself: anywhere in the chunk (also more than one read of SCAN rows
    away, and in another program's 16 rows), several runs of rows starting among one program's rows."""
    docs = torch.tensor(docs, device=DEVICE)
    steps = torch.arange(len(docs), device=DEVICE) % 4
    grads, difference, weights = _random(len(docs), 700), _random(6, 700), torch.rand(4, device=DEVICE)
    got = _accumulated(accumulate, 6, 700, grads, docs, steps, weights, difference)
    expected = _accumulated(accumulate_reference, 6, 700, grads, docs, steps, weights, difference)
    assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5, what="gradient sum")
    assert_close(got[1][docs, steps], expected[1][docs, steps], rtol=1e-5, atol=1e-4, what="integrand")


@pytest.mark.skipif(DEVICE != "cuda", reason="a host sync is a CUDA notion")
def test_accumulate_does_not_wait_for_the_device():
    grads, difference = _random(8, 4096), _random(2, 4096)
    docs, steps = _rows(2, 8)
    gradient_sum, integrand = torch.zeros(2, 4096, device=DEVICE), torch.zeros(2, 16, device=DEVICE)
    weights = torch.rand(16, device=DEVICE)
    accumulate(gradient_sum, integrand, grads, difference, docs, steps, weights)     # compiled before the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        accumulate(gradient_sum, integrand, grads, difference, docs, steps, weights)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("n_docs, length, hidden, _rows_", SHAPES)
def test_finalize(n_docs, length, hidden, _rows_):
    difference, gradient_sum = _random(n_docs, length, hidden), _random(n_docs, length, hidden)
    attributions, token_sums = finalize(difference, gradient_sum)
    expected_attributions, expected_sums = finalize_reference(difference, gradient_sum)
    assert_close(attributions, expected_attributions, rtol=1e-6, atol=1e-6, what="attributions")
    assert_close(token_sums, expected_sums, rtol=1e-5, atol=1e-5 * hidden ** 0.5, what="token sums")


@pytest.mark.parametrize("family", ["bert", "longformer"])
def test_engine_with_triton_kernels_equals_the_torch_path(models, tokenizer, family, monkeypatch):
    import fastig

    engine = fastig.Engine(models(family), tokenizer, device=DEVICE, precision="fp32")
    texts = [make_text(30, seed=1), make_text(28, seed=2), make_text(9, seed=3)]
    results = {}
    for choice in ("torch", "triton"):
        monkeypatch.setenv("FASTIG_KERNELS", choice)
        results[choice] = engine.attribute(texts, n_steps=8, chunk_size=5)   # chunks span documents
    for i in range(len(texts)):
        expected = results["torch"].attributions[i]
        assert_close(results["triton"].attributions[i], expected, rtol=1e-6,
                     atol=1e-6 * float(expected.abs().max()), what=f"document {i}")
    assert_close(results["triton"].delta, results["torch"].delta, rtol=0, atol=1e-6, what="delta")

