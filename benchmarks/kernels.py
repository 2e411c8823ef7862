"""Each fused kernel against its torch reference on CUDA: time and achieved bandwidth next to the copy peak.

python -m fastig.benchmarks.kernels [--out benchmarks/results]. Needs CUDA and triton; on a
machine without them it says so and exits 0. Sizes: one 4,096-token document of hidden 768
and 16 steps per call (the design's long document), and three documents of 512 tokens.
Bandwidth counts the fewest bytes each op must move: every input read once, every output
written once.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from fastig.benchmarks.common import machine
from fastig.benchmarks.suite import slug

SHAPES = [(1, 4096, 768, 16), (3, 512, 768, 48)]      # documents G, length L, hidden H, rows c per call
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def copy_peak_bytes_per_s(do_bench) -> float:
    """Device-to-device copy of 1 GiB, bytes read plus bytes written per second: the bandwidth ceiling."""
    source = torch.randn(2**28, device="cuda")
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / (do_bench(lambda: target.copy_(source)) / 1e3)


def _cases(n_docs: int, length: int, hidden: int, rows: int, dtype: torch.dtype):
    """(op, fused call, torch call, fewest bytes moved) for one shape and gradient dtype."""
    from fastig.kernels import accumulation, finalization, interpolation

    n_per_row = length * hidden
    start, difference = (torch.randn(n_docs, length, hidden, device="cuda") for _ in range(2))
    pairs = torch.arange(rows, device="cuda") * n_docs // rows * 16 + torch.arange(rows, device="cuda") % 16
    docs, steps = pairs // 16, pairs % 16
    alphas, weights = torch.rand(rows, device="cuda"), torch.rand(16, device="cuda")
    grads = torch.randn(rows, n_per_row, device="cuda").to(dtype)
    gradient_sum, integrand = torch.zeros(n_docs, n_per_row, device="cuda"), torch.zeros(n_docs, 16, device="cuda")
    flat = difference.reshape(n_docs, n_per_row)
    element = torch.tensor([], dtype=dtype).element_size()
    fp32_doc = n_docs * n_per_row * 4
    return [
        ("interpolate", lambda: interpolation.interpolate(start, difference, docs, alphas, dtype),
         lambda: interpolation.interpolate_reference(start, difference, docs, alphas, dtype),
         2 * fp32_doc + rows * n_per_row * element),
        ("accumulate", lambda: accumulation.accumulate(gradient_sum, integrand, grads, flat, docs, steps, weights),
         lambda: accumulation.accumulate_reference(gradient_sum, integrand, grads, flat, docs, steps, weights),
         rows * n_per_row * element + 3 * fp32_doc),
        ("finalize", lambda: finalization.finalize(difference, gradient_sum.view_as(difference)),
         lambda: finalization.finalize_reference(difference, gradient_sum.view_as(difference)),
         3 * fp32_doc + n_docs * length * 4),
    ]


def run() -> dict:
    from triton.testing import do_bench

    peak = copy_peak_bytes_per_s(do_bench)
    rows = []
    for shape in SHAPES:
        for dtype_name, dtype in DTYPES.items():
            for op, fused, reference, moved in _cases(*shape, dtype):
                fused_ms, reference_ms = do_bench(fused), do_bench(reference)
                rows.append({"op": op, "documents": shape[0], "length": shape[1], "hidden": shape[2], "rows": shape[3],
                             "dtype": dtype_name, "bytes": moved, "triton_ms": fused_ms, "torch_ms": reference_ms,
                             "triton_gb_per_s": moved / fused_ms / 1e6, "torch_gb_per_s": moved / reference_ms / 1e6,
                             "share_of_peak": moved / (fused_ms / 1e3) / peak, "speedup": reference_ms / fused_ms})
    return {"machine": machine("cuda"), "mode": "kernels", "date": datetime.date.today().isoformat(),
            "copy_peak_gb_per_s": peak / 1e9, "rows": rows}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Device: **{m['device']}**; torch {m['torch']}, triton {m['triton']}; {report['date']}. "
             f"Measured copy peak: {report['copy_peak_gb_per_s']:.0f} GB/s (read + write). Median times of "
             "`triton.testing.do_bench`; bandwidth counts each input read once and each output written once.", "",
             "| op | G x L x H | rows | grads | triton (ms) | GB/s (of peak) | torch (ms) | GB/s | speed-up |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['op']} | {r['documents']} x {r['length']} x {r['hidden']} | {r['rows']} | {r['dtype']} | "
                     f"{r['triton_ms']:.3f} | {r['triton_gb_per_s']:.0f} ({100 * r['share_of_peak']:.0f}%) | "
                     f"{r['torch_ms']:.3f} | {r['torch_gb_per_s']:.0f} | {r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastig.benchmarks.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("the kernel benchmark needs triton (pip install triton); nothing measured")
        return 0
    if not torch.cuda.is_available():
        print("the kernel benchmark needs a CUDA GPU (the kernels' CPU path is the torch reference); nothing measured")
        return 0
    report = run()
    text = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / slug(report)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
