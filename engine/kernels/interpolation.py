"""Points on the integration path: z = start + alpha * (end - start) for a chunk of (document, step) pairs.

One pass: each row reads its document's start and difference once and writes z once, in
the dtype the model call takes.
"""

import torch

try:
    import triton
    import triton.language as tl
except ImportError:     # CPU-only installs: the reference is the only path
    triton = None


def interpolate_reference(start: torch.Tensor, difference: torch.Tensor, docs: torch.Tensor, alphas: torch.Tensor,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """start, difference: [G, L, H] fp32. docs: [c] int, the document of each row. alphas: [c] fp32.

    Returns z: [c, L, H] in `dtype`, z[r] = start[docs[r]] + alphas[r] * difference[docs[r]] in fp32.
    """
    return torch.addcmul(start[docs], alphas.view(-1, 1, 1), difference[docs]).to(dtype)


if triton is not None:
    @triton.jit
    def _interpolate_kernel(
        start_ptr, difference_ptr,          # [G, N] fp32, contiguous
        docs_ptr, alphas_ptr,               # [c] int, [c] fp32
        z_ptr,                              # [c, N] out, any float dtype
        n_per_row,                          # N = L * H
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        columns = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = columns < n_per_row
        doc = tl.load(docs_ptr + row).to(tl.int64)
        alpha = tl.load(alphas_ptr + row)
        start = tl.load(start_ptr + doc * n_per_row + columns, mask=inside)
        difference = tl.load(difference_ptr + doc * n_per_row + columns, mask=inside)
        z = start + alpha * difference
        tl.store(z_ptr + row.to(tl.int64) * n_per_row + columns, z.to(z_ptr.dtype.element_ty), mask=inside)


def interpolate(start: torch.Tensor, difference: torch.Tensor, docs: torch.Tensor, alphas: torch.Tensor,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Triton launcher of `interpolate_reference` (same arguments and result)."""
    n_docs, length, hidden = start.shape
    if difference.shape != start.shape or docs.shape != alphas.shape or docs.ndim != 1:
        raise ValueError(f"interpolate: start {tuple(start.shape)}, difference {tuple(difference.shape)}, "
                         f"docs {tuple(docs.shape)} and alphas {tuple(alphas.shape)} do not fit together")
    z = torch.empty((len(docs), length, hidden), dtype=dtype, device=start.device)
    n_per_row = length * hidden
    if z.numel() == 0:
        return z
    block = min(4096, triton.next_power_of_2(n_per_row))
    grid = (len(docs), triton.cdiv(n_per_row, block))
    _interpolate_kernel[grid](start.float().contiguous(), difference.float().contiguous(), docs.contiguous(),
                              alphas.float().contiguous(), z, n_per_row, BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return z
