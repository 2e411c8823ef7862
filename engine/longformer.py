"""Longformer's self-attention as blocked banded attention: the same function, without the bookkeeping.

Hugging Face's LongformerSelfAttention builds overlapping diagonal chunks with copies and
fills (on the 2-core EPYC, aten::copy_ 26%, fill_ 18% and bmm 26% of a step). Here each
block of w queries (w the one-sided window) attends the 3w keys around it plus the global
keys, through one scaled_dot_product_attention call over all blocks; global queries attend
everything through the global projections, as in Hugging Face. Eval mode only (no dropout);
outputs equal Hugging Face's to fp32 rounding.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .models import forwards_shadowed


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], heads, -1)                  # [B, L, E] -> [B, L, heads, d]


def banded_self_attention(attention: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                          is_index_masked: torch.Tensor, is_index_global_attn: torch.Tensor,
                          is_global_attn: bool) -> torch.Tensor:
    """LongformerSelfAttention.forward's output [B, L, E] for hidden_states [B, L, E].

    attention_mask: [B, L] float, 0 for local tokens, negative for padding, positive for
    global tokens (Hugging Face's encoding). L is a multiple of the window, as the model pads it.
    """
    batch, length, _ = hidden_states.shape
    heads, head_dim, w = attention.num_heads, attention.head_dim, attention.one_sided_attn_window_size
    blocks = length // w
    scale = 1 / math.sqrt(head_dim)
    query = _heads(attention.query(hidden_states) * scale, heads)             # [B, L, h, d]
    key, value = _heads(attention.key(hidden_states), heads), _heads(attention.value(hidden_states), heads)

    # Keys of block b: positions b*w - w ... b*w + 2w - 1, from keys padded by w at both ends.
    def spans(x):                                                             # [B, L, h, d] -> [B, blocks, h, 3w, d]
        return F.pad(x, (0, 0, 0, 0, w, w)).unfold(1, 3 * w, w).transpose(-1, -2)
    key_spans, value_spans = spans(key), spans(value)
    offsets = torch.arange(3 * w, device=hidden_states.device)
    rows = torch.arange(w, device=hidden_states.device)
    distance = offsets[None, :] - rows[:, None]                 # key slot t, query row s: j - i = t - s - w
    in_band = (distance >= 0) & (distance <= 2 * w)             # |i - j| <= w
    positions = torch.arange(blocks, device=hidden_states.device)[:, None] * w - w + offsets    # [blocks, 3w]
    inside = (positions >= 0) & (positions < length)
    lowest = torch.finfo(query.dtype).min
    # Padding and global keys leave the window (global keys come back as global columns), as in Hugging Face.
    removed = F.pad(attention_mask != 0, (w, w), value=True).unfold(1, 3 * w, w)        # [B, blocks, 3w]
    key_mask = torch.where(inside, torch.where(removed, lowest, 0.0), -math.inf).to(query.dtype)
    mask = torch.where(in_band, key_mask[:, :, None, :], -math.inf)                     # [B, blocks, w, 3w]

    if is_global_attn:
        count = int(is_index_global_attn.sum(1).max())
        order = torch.sort(is_index_global_attn.int(), dim=1, descending=True, stable=True)
        global_index, global_valid = order.indices[:, :count], order.values[:, :count].bool()      # [B, G]
        gather = lambda x: x.gather(1, global_index[:, :, None, None].expand(-1, -1, heads, head_dim))  # noqa: E731
        expand = lambda x: x[:, None].transpose(-2, -3).expand(-1, blocks, -1, -1, -1)      # noqa: E731
        key_spans = torch.cat([expand(gather(key)), key_spans], dim=-2)
        value_spans = torch.cat([expand(gather(value)), value_spans], dim=-2)
        global_mask = torch.where(global_valid, 0.0, -math.inf).to(query.dtype)             # [B, G]
        mask = torch.cat([global_mask[:, None, None, :].expand(-1, blocks, w, -1), mask], dim=-1)

    query_blocks = query.view(batch, blocks, w, heads, head_dim).transpose(2, 3)       # [B, blocks, h, w, d]
    flat = lambda x: x.reshape(batch * blocks, heads, *x.shape[-2:])  # noqa: E731
    output = F.scaled_dot_product_attention(flat(query_blocks), flat(key_spans), flat(value_spans),
                                            attn_mask=mask.reshape(batch * blocks, 1, w, -1), scale=1.0)
    output = output.view(batch, blocks, heads, w, head_dim).transpose(2, 3).reshape(batch, length, -1)
    output = output.masked_fill(is_index_masked[:, :, None], 0.0)

    if is_global_attn:
        # Global tokens attend every token through the global projections; their output replaces the local one.
        global_hidden = hidden_states.gather(1, global_index[:, :, None].expand(-1, -1, hidden_states.shape[-1]))
        global_query = _heads(attention.query_global(global_hidden) * scale, heads).transpose(1, 2)   # [B, h, G, d]
        # q . (W_k h_j + b_k) = (W_k^T q) . h_j + q . b_k and sum_j p_j (W_v h_j + b_v) = W_v (sum_j p_j h_j) + b_v:
        # the global projections of all L tokens (2 L E^2 per layer, 14% of a layer's matmuls) are never formed.
        key_weight = attention.key_global.weight.view(heads, head_dim, -1)                       # [h, d, E]
        folded_query = torch.einsum("bhgd,hde->bhge", global_query, key_weight)                  # [B, h, G, E]
        key_bias = torch.einsum("bhgd,hd->bhg", global_query, attention.key_global.bias.view(heads, head_dim))
        scores = folded_query @ hidden_states[:, None].transpose(-1, -2) + key_bias[..., None]  # [B, h, G, L]
        scores = scores.masked_fill(is_index_masked[:, None, None, :], lowest)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
        mixed = probs @ hidden_states[:, None]                                                    # [B, h, G, E]
        value_weight = attention.value_global.weight.view(heads, head_dim, -1)
        global_output = torch.einsum("bhge,hde->bhgd", mixed, value_weight) + \
            attention.value_global.bias.view(heads, 1, head_dim)
        global_output = global_output.transpose(1, 2).reshape(batch, count, -1).to(output.dtype)
        keep = global_valid[:, :, None]
        updates = torch.where(keep, global_output, output.gather(1, global_index[:, :, None].expand_as(global_output)))
        output = output.scatter(1, global_index[:, :, None].expand_as(global_output), updates)
    return output


def banded_attention(model: nn.Module):
    """Every LongformerSelfAttention of `model` runs `banded_self_attention` inside the block.

    Attention maps (output_attentions) and training mode still go to Hugging Face's code."""
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    def banded(attention):
        def forward(hidden_states, attention_mask=None, is_index_masked=None, is_index_global_attn=None,
                    is_global_attn=None, output_attentions=False):
            if output_attentions or attention.training:
                return type(attention).forward(attention, hidden_states, attention_mask, is_index_masked,
                                               is_index_global_attn, is_global_attn, output_attentions)
            return (banded_self_attention(attention, hidden_states, attention_mask, is_index_masked,
                                          is_index_global_attn, is_global_attn),)
        return forward
    return forwards_shadowed([m for m in model.modules() if isinstance(m, LongformerSelfAttention)], banded)
