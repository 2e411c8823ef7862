"""The kernels' torch references against plain loops, the dispatch, the Triton kernels under the interpreter and compiled for GPUs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastig
from fastig import kernels
from fastig.kernels.accumulation import accumulate_reference
from fastig.kernels.finalization import finalize_reference
from fastig.kernels.interpolation import interpolate_reference

from conftest import assert_close

TESTS = Path(__file__).parent


def test_references_equal_plain_loops():
    start, difference = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    docs, steps = torch.tensor([1, 1, 2, 0, 0, 1]), torch.tensor([2, 3, 0, 0, 1, 0])
    alphas, weights = torch.rand(6), torch.rand(4)
    z = interpolate_reference(start, difference, docs, alphas, torch.float64)
    assert z.dtype == torch.float64
    for row in range(6):
        assert_close(z[row].float(), start[docs[row]] + alphas[row] * difference[docs[row]], 1e-6, 1e-6, f"z {row}")

    grads = torch.randn(6, 40).to(torch.bfloat16)
    flat = difference.reshape(3, 40)
    gradient_sum, integrand = torch.zeros(3, 40), torch.zeros(3, 4)
    accumulate_reference(gradient_sum, integrand, grads, flat, docs, steps, weights)
    expected_sum, expected_integrand = torch.zeros(3, 40), torch.zeros(3, 4)
    for row in range(6):
        expected_sum[docs[row]] += weights[steps[row]] * grads[row].float()
        expected_integrand[docs[row], steps[row]] = (grads[row].float() * flat[docs[row]]).sum()
    assert_close(gradient_sum, expected_sum, 1e-5, 1e-6, "gradient sum")
    assert_close(integrand, expected_integrand, 1e-5, 1e-5, "integrand")

    attributions, token_sums = finalize_reference(start, difference)
    assert_close(attributions, start * difference, 0, 0, "attributions")
    assert_close(token_sums, (start * difference).sum(-1), 1e-6, 1e-6, "token sums")


def test_cpu_tensors_take_the_references(monkeypatch):
    monkeypatch.delenv("FASTIG_KERNELS", raising=False)
    assert kernels.backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv("FASTIG_KERNELS", "torch")
    assert kernels.backend(torch.device("cuda")) == "torch"
    monkeypatch.setenv("FASTIG_KERNELS", "fast")
    with pytest.raises(fastig.InputError, match="FASTIG_KERNELS='fast'"):
        kernels.backend(torch.device("cpu"))


def test_importing_fastig_imports_no_triton():
    done = subprocess.run([sys.executable, "-c", "import sys, fastig; print('triton' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.slow
def test_triton_kernels_under_the_interpreter():
    """kernels_cases.py in its own process: TRITON_INTERPRET must be set before triton is imported."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "FASTIG_KERNELS": "triton"}
    # every case runs here but the one about CUDA's host syncs, which the interpreter has not
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "kernels_cases.py"),
                           "-k", "not does_not_wait_for_the_device"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=TESTS)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout


def test_triton_kernels_compile_for_gpus():
    """kernels_compile.py in its own process: it replaces triton's driver, and the interpreter must be off."""
    pytest.importorskip("triton")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "kernels_compile.py")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=TESTS)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout


def test_kernel_benchmark_without_a_gpu_says_so_and_succeeds(capsys):
    from fastig.benchmarks import kernels as kernel_benchmark

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the benchmark would run")
    assert kernel_benchmark.main([]) == 0
    assert "nothing measured" in capsys.readouterr().out
