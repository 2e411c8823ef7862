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

CANDIDATES = 16     # rows one program looks at for the documents it sums: a program per 16 rows, not per row


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
        docs_ptr, steps_ptr,                # [c] int: each row's document and step
        weights_ptr,                        # [n] fp32: each step's weight
        partials_ptr,                       # [c, blocks] fp32 out: each block's share of each row's integrand
        n_rows, n_per_row, n_blocks,
        BLOCK: tl.constexpr,
        ROWS: tl.constexpr,                 # a document's rows read at once
        CANDIDATES: tl.constexpr,           # rows whose documents one program may sum (at most 31: bits of an int32)
        SCAN: tl.constexpr,                 # rows read at once when looking for a document's rows
    ):
        block = tl.program_id(0)
        columns = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = columns < n_per_row
        # The program of a document's first row in the chunk sums all the document's rows, wherever they are, in
        # one pass: one program owns these columns of the document (no atomics), and no sort runs before the
        # kernel. A program looks at CANDIDATES rows; only a row that starts a run of its document's rows can be
        # its first, and in a chunk of the engine's there are a few such rows, so a bit each marks them.
        candidates = tl.program_id(1) * CANDIDATES + tl.arange(0, CANDIDATES)
        valid = candidates < n_rows
        docs = tl.load(docs_ptr + candidates, mask=valid, other=-1)
        previous = tl.load(docs_ptr + candidates - 1, mask=valid & (candidates > 0), other=-1)
        run_starts = tl.sum(tl.where(valid & (docs != previous), 1 << tl.arange(0, CANDIDATES), 0), axis=0)
        for i in range(CANDIDATES):
            if (run_starts >> i) & 1:
                first = tl.program_id(1) * CANDIDATES + i
                doc = tl.load(docs_ptr + first)
                earliest, last = first, first          # the document's first and last rows in the chunk
                for start in range(0, n_rows, SCAN):
                    places = start + tl.arange(0, SCAN)
                    found = tl.load(docs_ptr + places, mask=places < n_rows, other=-1) == doc
                    earliest = tl.minimum(earliest, tl.min(tl.where(found, places, n_rows), axis=0))
                    last = tl.maximum(last, tl.max(tl.where(found, places, -1), axis=0))
                if earliest == first:
                    offset = doc.to(tl.int64) * n_per_row + columns
                    difference = tl.load(difference_ptr + offset, mask=inside, other=0.0)
                    total = tl.zeros((BLOCK,), dtype=tl.float32)
                    for start in range(first, last + 1, ROWS):
                        rows = start + tl.arange(0, ROWS)
                        mine = tl.load(docs_ptr + rows, mask=rows <= last, other=-1) == doc
                        weight = tl.load(weights_ptr + tl.load(steps_ptr + rows, mask=mine, other=0), mask=mine,
                                         other=0.0)
                        g = tl.load(grads_ptr + rows.to(tl.int64)[:, None] * n_per_row + columns[None, :],
                                    mask=mine[:, None] & inside[None, :], other=0.0).to(tl.float32)
                        total += tl.sum(weight[:, None] * g, axis=0)
                        tl.store(partials_ptr + rows * n_blocks + block, tl.sum(g * difference[None, :], axis=1),
                                 mask=mine)
                    tl.store(gradient_sum_ptr + offset, tl.load(gradient_sum_ptr + offset, mask=inside) + total,
                             mask=inside)


def accumulate(gradient_sum: torch.Tensor, integrand: torch.Tensor, grads: torch.Tensor, difference: torch.Tensor,
               docs: torch.Tensor, steps: torch.Tensor, weights: torch.Tensor) -> None:
    """The Triton launcher of `accumulate_reference` (same arguments and effect)."""
    if not (gradient_sum.is_contiguous() and gradient_sum.dtype == torch.float32):
        raise ValueError("accumulate: gradient_sum must be a contiguous fp32 tensor (it is updated in place)")
    n_rows, n_per_row = grads.shape
    if n_rows == 0:
        return
    # Three launches: the kernel, which finds each document's rows itself, and the integrand's sum and write.
    # Finding the runs on the host cost a sync per call (0.25-0.36 ms whatever the size on an H200: the kernel
    # at 12-19% of copy bandwidth); finding them on the device by torch ops (a sort, a cumsum, scatters) cost
    # about 13 more launches of a few microseconds each, as much as the kernel itself takes on 3 x 512 tokens.
    # A program reads 8 rows x 512 columns at once with 4 warps: compiled for sm_90 that takes 92 registers in
    # bf16 (80 in fp32), so 5 programs fit on an SM with 40 KB of bf16 gradients in flight, more than an H200's
    # bandwidth x latency (4.8 TB/s x ~0.7 us / 132 SMs: ~25 KB an SM); 8 x 1,024 with 8 warps took 108
    # registers: 2 programs, 32 KB. The GPU's measurement, not this estimate, has the last word.
    block = min(512, triton.next_power_of_2(n_per_row))
    n_blocks = triton.cdiv(n_per_row, block)
    partials = torch.empty((n_rows, n_blocks), dtype=torch.float32, device=grads.device)
    _accumulate_kernel[(n_blocks, triton.cdiv(n_rows, CANDIDATES))](
        gradient_sum, difference.float().contiguous(), grads.contiguous(), docs.contiguous(), steps.contiguous(),
        weights.float().contiguous(), partials, n_rows, n_per_row, n_blocks, BLOCK=block, ROWS=8,
        CANDIDATES=CANDIDATES, SCAN=64, num_warps=4)
    integrand[docs, steps] = partials.sum(1)
