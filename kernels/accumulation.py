"""Accumulating one chunk's gradients: the weighted gradient sum per document and the integrand per step.

One pass over the chunk's gradients (read in whatever dtype the model produced them, summed
in fp32): every row adds w_k * g to its document's accumulator and gives the path integrand
s_k = <g, difference> of its (document, step).
"""

import torch

try:
    import triton
    import triton.language as tl
except ImportError:     # CPU-only installs: the reference is the only path
    triton = None


def _document_runs(docs: torch.Tensor) -> list[tuple[int, int, int]]:
    """(document, first row, end row) of each run of equal consecutive entries of docs."""
    values, counts = torch.unique_consecutive(docs, return_counts=True)
    ends = counts.cumsum(0).tolist()
    return [(doc, end - count, end) for doc, count, end in zip(values.tolist(), counts.tolist(), ends)]


def accumulate_reference(gradient_sum: torch.Tensor, integrand: torch.Tensor, grads: torch.Tensor,
                         difference: torch.Tensor, docs: torch.Tensor, steps: torch.Tensor,
                         weights: torch.Tensor) -> None:
    """In place: gradient_sum[docs[r]] += weights[steps[r]] * grads[r]; integrand[docs[r], steps[r]] = <grads[r], difference[docs[r]]>.

    gradient_sum: [G, N] fp32. integrand: [G, n] fp32. grads: [c, N] any float dtype.
    difference: [G, N] fp32. docs, steps: [c] int. weights: [n] fp32. A document may
    appear in several runs of rows.
    """
    for doc, first, end in _document_runs(docs):
        rows = grads[first:end].float()                         # [r, N]
        gradient_sum[doc].addmv_(rows.t(), weights[steps[first:end]])
        integrand[doc, steps[first:end]] = rows @ difference[doc]


if triton is not None:
    @triton.jit
    def _accumulate_kernel(
        gradient_sum_ptr, difference_ptr,   # [G, N] fp32
        grads_ptr,                          # [c, N] any float dtype
        run_docs_ptr, run_starts_ptr,       # [runs + 1]: the document of each run, its first row (last: c)
        row_weights_ptr,                    # [c] fp32, w of each row's step
        partials_ptr,                       # [c, blocks] fp32 out: each block's share of each row's integrand
        n_per_row, n_blocks,
        BLOCK: tl.constexpr,
    ):
        block = tl.program_id(0)
        run = tl.program_id(1)
        columns = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = columns < n_per_row
        doc = tl.load(run_docs_ptr + run).to(tl.int64)
        first = tl.load(run_starts_ptr + run)
        end = tl.load(run_starts_ptr + run + 1)
        difference = tl.load(difference_ptr + doc * n_per_row + columns, mask=inside, other=0.0)
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in range(0, end - first):
            row = first.to(tl.int64) + i
            g = tl.load(grads_ptr + row * n_per_row + columns, mask=inside, other=0.0).to(tl.float32)
            total += tl.load(row_weights_ptr + row) * g
            tl.store(partials_ptr + row * n_blocks + block, tl.sum(g * difference, axis=0))
        # One program owns these columns of this document in this launch: no atomics, a fixed order.
        sums = gradient_sum_ptr + doc * n_per_row + columns
        tl.store(sums, tl.load(sums, mask=inside) + total, mask=inside)


def accumulate(gradient_sum: torch.Tensor, integrand: torch.Tensor, grads: torch.Tensor, difference: torch.Tensor,
               docs: torch.Tensor, steps: torch.Tensor, weights: torch.Tensor) -> None:
    """The Triton launcher of `accumulate_reference` (same arguments and effect)."""
    if not (gradient_sum.is_contiguous() and gradient_sum.dtype == torch.float32):
        raise ValueError("accumulate: gradient_sum must be a contiguous fp32 tensor (it is updated in place)")
    n_rows, n_per_row = grads.shape
    if n_rows == 0:
        return
    # The runs are found on the host: one sync per call, which dominates at these sizes on an
    # H200 (0.25-0.36 ms whatever the size); a version without it waits for a GPU to verify it.
    runs = _document_runs(docs)
    # A document in two runs would have two writers of its columns: run the runs in turn.
    if len({doc for doc, _, _ in runs}) < len(runs):
        for doc, first, end in runs:
            accumulate(gradient_sum, integrand, grads[first:end], difference, docs[first:end], steps[first:end], weights)
        return
    device = grads.device
    run_docs = torch.tensor([doc for doc, _, _ in runs], dtype=torch.int64, device=device)
    run_starts = torch.tensor([first for _, first, _ in runs] + [n_rows], dtype=torch.int32, device=device)
    block = min(2048, triton.next_power_of_2(n_per_row))
    n_blocks = triton.cdiv(n_per_row, block)
    partials = torch.empty((n_rows, n_blocks), dtype=torch.float32, device=device)
    _accumulate_kernel[(n_blocks, len(runs))](
        gradient_sum, difference.float().contiguous(), grads.contiguous(), run_docs, run_starts,
        weights.float()[steps].contiguous(), partials, n_per_row, n_blocks, BLOCK=block, num_warps=8 if block >= 2048 else 4)
    integrand[docs, steps] = partials.sum(1)
