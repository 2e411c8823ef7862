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
        order_ptr,                          # [c]: the rows grouped by document (a stable sort of docs)
        run_docs_ptr, run_starts_ptr,       # [c], [c + 1]: each run's document and first place in order; the
                                            # slots past the last run start at c (empty runs)
        row_weights_ptr,                    # [c] fp32, w of each row's step
        partials_ptr,                       # [c, blocks] fp32 out: each block's share of each row's integrand
        n_per_row, n_blocks,
        BLOCK: tl.constexpr,
    ):
        block = tl.program_id(0)
        run = tl.program_id(1)
        first = tl.load(run_starts_ptr + run)
        end = tl.load(run_starts_ptr + run + 1)
        if end > first:     # an empty run's program writes nothing (it would race the document's own)
            columns = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            inside = columns < n_per_row
            doc = tl.load(run_docs_ptr + run).to(tl.int64)
            difference = tl.load(difference_ptr + doc * n_per_row + columns, mask=inside, other=0.0)
            total = tl.zeros((BLOCK,), dtype=tl.float32)
            for i in range(0, end - first):
                row = tl.load(order_ptr + first + i).to(tl.int64)
                g = tl.load(grads_ptr + row * n_per_row + columns, mask=inside, other=0.0).to(tl.float32)
                total += tl.load(row_weights_ptr + row) * g
                tl.store(partials_ptr + row * n_blocks + block, tl.sum(g * difference, axis=0))
            # One program owns these columns of this document: no atomics, the rows in their order.
            sums = gradient_sum_ptr + doc * n_per_row + columns
            tl.store(sums, tl.load(sums, mask=inside) + total, mask=inside)


def _runs_on_device(docs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, run_docs, run_starts) of docs [c], by device ops only (no host sync): order groups the rows
    by document, stably; run r covers order[run_starts[r]:run_starts[r + 1]], all of document run_docs[r];
    the slots past the last run start at c."""
    n_rows = len(docs)
    order = torch.argsort(docs, stable=True)
    grouped = docs[order]
    is_start = torch.ones(n_rows, dtype=torch.bool, device=docs.device)
    is_start[1:] = grouped[1:] != grouped[:-1]
    run_of_place = is_start.cumsum(0) - 1
    places = torch.arange(n_rows, device=docs.device)
    run_starts = torch.full((n_rows + 1,), n_rows, dtype=torch.int64, device=docs.device)
    run_starts.scatter_reduce_(0, run_of_place, places, reduce="amin")
    run_docs = torch.zeros(n_rows, dtype=torch.int64, device=docs.device).scatter_(0, run_of_place, grouped)
    return order, run_docs, run_starts


def accumulate(gradient_sum: torch.Tensor, integrand: torch.Tensor, grads: torch.Tensor, difference: torch.Tensor,
               docs: torch.Tensor, steps: torch.Tensor, weights: torch.Tensor) -> None:
    """The Triton launcher of `accumulate_reference` (same arguments and effect)."""
    if not (gradient_sum.is_contiguous() and gradient_sum.dtype == torch.float32):
        raise ValueError("accumulate: gradient_sum must be a contiguous fp32 tensor (it is updated in place)")
    n_rows, n_per_row = grads.shape
    if n_rows == 0:
        return
    # The runs are found on the device: finding them on the host cost a sync per call, 0.25-0.36 ms
    # whatever the size on an H200, which held the kernel to 12-19% of copy bandwidth. The grid has
    # a program per row's possible run; the empty ones return at once.
    order, run_docs, run_starts = _runs_on_device(docs)
    block = min(2048, triton.next_power_of_2(n_per_row))
    n_blocks = triton.cdiv(n_per_row, block)
    partials = torch.empty((n_rows, n_blocks), dtype=torch.float32, device=grads.device)
    _accumulate_kernel[(n_blocks, n_rows)](
        gradient_sum, difference.float().contiguous(), grads.contiguous(), order, run_docs, run_starts,
        weights.float()[steps].contiguous(), partials, n_per_row, n_blocks, BLOCK=block,
        num_warps=8 if block >= 2048 else 4)
    integrand[docs, steps] = partials.sum(1)
