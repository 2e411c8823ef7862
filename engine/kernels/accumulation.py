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
        docs_ptr, steps_ptr,                # [c] int: each row's document and step
        weights_ptr,                        # [n] fp32: each step's weight
        partials_ptr,                       # [c, blocks] fp32 out: each block's share of each row's integrand
        n_rows, n_per_row, n_blocks,
        BLOCK: tl.constexpr,
        SCAN: tl.constexpr,                 # rows read at once when looking for an earlier row of a document
    ):
        block = tl.program_id(0)
        first = tl.program_id(1)
        doc = tl.load(docs_ptr + first)
        # The program of a document's first row in the chunk sums all the document's rows, wherever they are, in
        # their order: one program owns these columns of the document (no atomics), and no sort runs before the
        # kernel. Every other row's program finds an earlier row of its document (the one before it, usually)
        # and writes nothing.
        earlier = (tl.load(docs_ptr + first - 1, mask=first > 0, other=-1) == doc).to(tl.int32)
        if earlier == 0:
            for start in range(0, first, SCAN):
                places = start + tl.arange(0, SCAN)
                found = tl.load(docs_ptr + places, mask=places < first, other=-1) == doc
                earlier += tl.sum(found.to(tl.int32), axis=0)
        if earlier == 0:
            columns = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            inside = columns < n_per_row
            offset = doc.to(tl.int64) * n_per_row + columns
            difference = tl.load(difference_ptr + offset, mask=inside, other=0.0)
            total = tl.zeros((BLOCK,), dtype=tl.float32)
            for row in range(first, n_rows):
                if tl.load(docs_ptr + row) == doc:
                    g = tl.load(grads_ptr + tl.cast(row, tl.int64) * n_per_row + columns, mask=inside,
                                other=0.0).to(tl.float32)
                    total += tl.load(weights_ptr + tl.load(steps_ptr + row)) * g
                    tl.store(partials_ptr + row * n_blocks + block, tl.sum(g * difference, axis=0))
            tl.store(gradient_sum_ptr + offset, tl.load(gradient_sum_ptr + offset, mask=inside) + total, mask=inside)


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
    block = min(2048, triton.next_power_of_2(n_per_row))
    n_blocks = triton.cdiv(n_per_row, block)
    partials = torch.empty((n_rows, n_blocks), dtype=torch.float32, device=grads.device)
    _accumulate_kernel[(n_blocks, n_rows)](
        gradient_sum, difference.float().contiguous(), grads.contiguous(), docs.contiguous(), steps.contiguous(),
        weights.float().contiguous(), partials, n_rows, n_per_row, n_blocks, BLOCK=block, SCAN=64,
        num_warps=8 if block >= 2048 else 4)
    integrand[docs, steps] = partials.sum(1)
