"""From the accumulated gradients to attributions and token sums, in one pass.

attributions = (end - start) * sum_k w_k dF/dz(z_k), and their sum over the hidden size
per token (what token scores are normalized from, and what the convergence delta sums).
"""

import torch

try:
    import triton
    import triton.language as tl
except ImportError:     # CPU-only installs: the reference is the only path
    triton = None


def finalize_reference(difference: torch.Tensor, gradient_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """difference, gradient_sum: [G, L, H] fp32. Returns attributions [G, L, H] fp32 and token sums [G, L] fp32."""
    attributions = difference * gradient_sum
    return attributions, attributions.sum(-1)


if triton is not None:
    @triton.jit
    def _finalize_kernel(
        difference_ptr, gradient_sum_ptr,   # [T, H] fp32, T = G * L tokens
        attributions_ptr, token_sums_ptr,   # [T, H], [T] fp32 out
        n_tokens, hidden,
        BLOCK_TOKENS: tl.constexpr, BLOCK_HIDDEN: tl.constexpr,
    ):
        tokens = tl.program_id(0).to(tl.int64) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
        token_inside = tokens < n_tokens
        sums = tl.zeros((BLOCK_TOKENS,), dtype=tl.float32)
        for start in range(0, hidden, BLOCK_HIDDEN):
            columns = start + tl.arange(0, BLOCK_HIDDEN)
            inside = token_inside[:, None] & (columns < hidden)[None, :]
            offsets = tokens[:, None] * hidden + columns[None, :]
            attributions = tl.load(difference_ptr + offsets, mask=inside, other=0.0) * \
                tl.load(gradient_sum_ptr + offsets, mask=inside, other=0.0)
            tl.store(attributions_ptr + offsets, attributions, mask=inside)
            sums += tl.sum(attributions, axis=1)
        tl.store(token_sums_ptr + tokens, sums, mask=token_inside)


def finalize(difference: torch.Tensor, gradient_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton launcher of `finalize_reference` (same arguments and results)."""
    if difference.shape != gradient_sum.shape:
        raise ValueError(f"finalize: difference {tuple(difference.shape)} and gradient_sum "
                         f"{tuple(gradient_sum.shape)} differ")
    *leading, hidden = difference.shape
    attributions = torch.empty(difference.shape, dtype=torch.float32, device=difference.device)
    token_sums = torch.empty(leading, dtype=torch.float32, device=difference.device)
    n_tokens = token_sums.numel()
    if n_tokens == 0 or hidden == 0:
        return attributions, token_sums.zero_()
    block_hidden = min(1024, triton.next_power_of_2(hidden))
    # 2,048 values a program: compiled for sm_90, 4,096 spilled registers at a small odd hidden size (33: 255
    # registers and 96 bytes of stack) and took 86 registers at hidden 768, against 48 now.
    block_tokens = max(1, 2048 // block_hidden)
    _finalize_kernel[(triton.cdiv(n_tokens, block_tokens),)](
        difference.float().contiguous(), gradient_sum.float().contiguous(), attributions, token_sums,
        n_tokens, hidden, BLOCK_TOKENS=block_tokens, BLOCK_HIDDEN=block_hidden, num_warps=4)
    return attributions, token_sums
