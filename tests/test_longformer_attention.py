"""fastig's banded Longformer self-attention computes Hugging Face's function: outputs, gradients, attributions.

Each local-attention kernel on each device here: "blocks" everywhere; "flex" on CUDA, and on
CPU its forward only (FlexAttention has no CPU backward; the engine never picks it there).
"""

from contextlib import nullcontext

import pytest
import torch
from transformers import LongformerConfig, LongformerForSequenceClassification

import fastig
from fastig.longformer import KERNELS, banded_attention
from fastig.models import output_captured, output_replaced

from conftest import assert_close, make_text


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RUNS = [(device, kernel) for device in DEVICES for kernel in KERNELS]


def _model(window: int, layers: int = 2, hidden: int = 64, heads: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    config = LongformerConfig(attention_window=window, max_position_embeddings=1026, num_hidden_layers=layers,
                              hidden_size=hidden, num_attention_heads=heads, intermediate_size=2 * hidden,
                              initializer_range=0.3, vocab_size=200, num_labels=3)
    return LongformerForSequenceClassification(config).eval()


def _logits_and_gradient(model, ids, attention_mask, global_mask, kernel: str | None, gradient: bool = True):
    """Logits and d(sum of softmax[:, 0])/d(embeddings output) (or None), from the same embeddings output;
    with Hugging Face's attention when kernel is None."""
    captured = []
    with torch.no_grad(), output_captured(model.longformer.embeddings, captured):
        model(input_ids=ids, attention_mask=attention_mask, global_attention_mask=global_mask)
    z = captured[0].detach().requires_grad_(gradient)
    with (output_replaced(model.longformer.embeddings, z), torch.set_grad_enabled(gradient),
          banded_attention(model, kernel) if kernel else nullcontext()):
        logits = model(input_ids=ids, attention_mask=attention_mask, global_attention_mask=global_mask).logits
    if not gradient:
        return logits, None
    return logits, torch.autograd.grad(logits.softmax(-1)[:, 0].sum(), z)[0]


# window, length, batch, padding of the last sequence, global positions per sequence (None: no global token)
CASES = [(8, 40, 2, 5, [[0], [0]]), (16, 96, 3, 20, None), (16, 64, 2, 40, [[0, 5], [0]]),
         (4, 1, 1, 0, [[0]]), (4, 3, 1, 0, None), (32, 300, 2, 150, [[0, 1, 2], [299]]), (8, 7, 2, 3, [[], [2]]),
         (16, 15, 2, 4, [[0], [0]]), (16, 17, 2, 0, [[0, 16], [3]]), (8, 97, 1, 0, [[0]]),
         (512, 600, 2, 100, [[0], [0, 300]])]


@pytest.mark.parametrize("device, kernel", RUNS)
@pytest.mark.parametrize("window, length, batch, padding, global_positions", CASES)
def test_banded_attention_is_hugging_faces(device, kernel, window, length, batch, padding, global_positions):
    model = _model(window).to(device)
    ids = torch.randint(5, 200, (batch, length), device=device)
    attention_mask = torch.ones_like(ids)
    if padding:
        attention_mask[-1, -padding:] = 0
        ids[-1, -padding:] = model.config.pad_token_id
    global_mask = torch.zeros_like(ids)
    for row, positions in enumerate(global_positions or []):
        global_mask[row, positions] = 1
    backward = not (device == "cpu" and kernel == "flex")
    expected_logits, expected_gradient = _logits_and_gradient(model, ids, attention_mask, global_mask, None, backward)
    logits, gradient = _logits_and_gradient(model, ids, attention_mask, global_mask, kernel, backward)
    # 2e-5 of the largest logit: fp32 sums in another order (1.2e-5 with logits up to 2.9 on an AVX2-only EPYC)
    assert_close(logits, expected_logits, rtol=1e-5, atol=2e-5 * float(expected_logits.abs().max()), what="logits")
    if gradient is None:
        return
    # 5e-5 of the largest entry: CUDA's attention kernels sum in another order (8e-6 of 0.22 seen on an H200)
    assert_close(gradient, expected_gradient, rtol=1e-4, atol=5e-5 * float(expected_gradient.abs().max()),
                 what="gradient")


@pytest.mark.parametrize("recompute", [False, True])
def test_banded_attention_reads_the_device_once_per_forward(recompute):
    """The layers of a forward share its bands, built before they run: the host reads of a banded step (a sync
    each on a GPU) grow neither with the number of layers nor with per-layer windows (a band each), also when
    the backward recomputes the layers; per-layer windows still give Hugging Face's logits and gradient."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastig.models import layers_recomputed

    class HostReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func.overloadpacket == torch.ops.aten._local_scalar_dense
            return func(*args, **(kwargs or {}))

    ids = torch.randint(5, 200, (2, 50))
    attention_mask, global_mask = torch.ones_like(ids), torch.zeros_like(ids)
    attention_mask[1, 41:] = 0
    global_mask[:, 0], global_mask[0, 7] = 1, 1
    call = dict(input_ids=ids, attention_mask=attention_mask, global_attention_mask=global_mask)
    reads = {}
    for window in (8, [8] * 4, [8, 16, 16, 4]):
        model = _model(window, layers=2 if window == 8 else 4)
        captured = []
        with torch.no_grad(), output_captured(model.longformer.embeddings, captured):
            model(**call)
        z = captured[0].requires_grad_(True)
        with (output_replaced(model.longformer.embeddings, z), banded_attention(model, "blocks"),
              layers_recomputed(model) if recompute else nullcontext(), HostReads() as host):
            logits = model(**call).logits
            gradient = torch.autograd.grad(logits.softmax(-1)[:, 0].sum(), z)[0]
        reads[str(window)] = host.count
        expected_logits, expected_gradient = _logits_and_gradient(model, ids, attention_mask, global_mask, None)
        # 4 layers of initializer_range 0.3 amplify fp32 rounding: 1.5e-5 of the largest logit seen, either code
        assert_close(logits, expected_logits, rtol=1e-5, atol=3e-5 * float(expected_logits.detach().abs().max()),
                     what="logits")
        assert_close(gradient, expected_gradient, rtol=1e-4, atol=1e-4 * float(expected_gradient.abs().max()),
                     what="gradient")
    assert reads["8"] == reads[str([8] * 4)] == reads[str([8, 16, 16, 4])], reads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("global_positions", [[0], [0, 3], []])
def test_blocks_attention_reads_one_aligned_mask_per_forward(device, global_positions):
    """Every layer's attention call reads its forward's one mask where it lies, its rows at multiples of 8
    values: CUDA's memory-efficient attention pads a copy of any other mask at each call, a copy per layer
    (there the layers would each see another tensor; the CPU kernel never copies)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class AttentionMasks(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.masks = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = str(func.overloadpacket)
            if "scaled_dot_product" in name and "backward" not in name:
                self.masks.append(kwargs["attn_mask"] if "attn_mask" in kwargs else args[3])
            return func(*args, **kwargs)

    model = _model(16, layers=3).to(device)
    ids = torch.randint(5, 200, (2, 70), device=device)      # 80 after the model's padding to the window
    global_mask = torch.zeros_like(ids)
    global_mask[:, global_positions] = 1
    captured = []
    with torch.no_grad(), output_captured(model.longformer.embeddings, captured):
        model(input_ids=ids, global_attention_mask=global_mask)
    z = captured[0].requires_grad_(True)      # with gradients, as attribution runs: each layer keeps its mask
    for dtype in (torch.float32, torch.bfloat16):
        with (output_replaced(model.longformer.embeddings, z), banded_attention(model, "blocks"),
              torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32), AttentionMasks() as seen):
            model(input_ids=ids, global_attention_mask=global_mask)
        masks = seen.masks
        assert len(masks) == 3 and masks[0].shape[-1] == len(global_positions) + 3 * 8
        assert len({mask.data_ptr() for mask in masks}) == 1, "each layer read another copy of the mask"
        assert all(stride % 8 == 0 for stride in masks[0].stride()[:-1]), masks[0].stride()


@pytest.mark.parametrize("device, kernel", RUNS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_banded_attention_in_low_precision(device, kernel, dtype):
    """Under autocast, banded attention is as close to the fp32 logits as Hugging Face's attention is."""
    model = _model(16).to(device)
    ids = torch.randint(5, 200, (2, 100), device=device)
    attention_mask, global_mask = torch.ones_like(ids), torch.zeros_like(ids)
    attention_mask[1, 70:] = 0
    global_mask[:, 0] = 1
    exact, _ = _logits_and_gradient(model, ids, attention_mask, global_mask, None, gradient=False)
    with torch.autocast(device, dtype=dtype):
        hugging_face, _ = _logits_and_gradient(model, ids, attention_mask, global_mask, None, gradient=False)
        banded, _ = _logits_and_gradient(model, ids, attention_mask, global_mask, kernel, gradient=False)
    assert banded.dtype == hugging_face.dtype
    error = lambda logits: float((logits.float() - exact).abs().max())  # noqa: E731
    assert error(banded) <= 2 * error(hugging_face) + 1e-3 * float(exact.abs().max())


def test_banded_attention_is_restored_and_keeps_attention_maps():
    model = _model(8)
    ids = torch.randint(5, 200, (1, 24))
    with torch.no_grad():
        with banded_attention(model):
            maps = model(input_ids=ids, output_attentions=True).attentions   # falls back to Hugging Face's
        plain = model(input_ids=ids).logits
    assert len(maps) == 2 and maps[0].shape[-1] == 8 + 1 + 1                 # window + token + the global CLS
    assert all("forward" not in vars(m) for m in model.modules())
    with torch.no_grad(), banded_attention(model):
        assert_close(model(input_ids=ids).logits, plain, rtol=1e-5, atol=1e-5, what="logits")


def test_banded_attention_builds_one_row_of_the_mask(monkeypatch):
    """Hugging Face's forward keeps row 0 of a [B, 1, L, L] mask; inside the block it is built alone, the
    logits (Hugging Face's attention maps too, with padding and a global token) are unchanged, and the
    function is Hugging Face's own again after."""
    from transformers.models.longformer import modeling_longformer

    model = _model(8)
    ids = torch.randint(5, 200, (2, 24))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 17:] = 0
    global_mask = torch.zeros_like(ids)
    global_mask[:, [0, 5]] = 1
    call = dict(input_ids=ids, attention_mask=attention_mask, global_attention_mask=global_mask)
    with torch.no_grad():
        plain = model(**call, output_attentions=True)
    original = modeling_longformer.create_bidirectional_mask
    query_lengths = []

    def spy(*args, inputs_embeds, **kwargs):
        query_lengths.append(inputs_embeds.shape[1])
        return original(*args, inputs_embeds=inputs_embeds, **kwargs)
    monkeypatch.setattr(modeling_longformer, "create_bidirectional_mask", spy)
    with torch.no_grad(), banded_attention(model):
        banded = model(**call).logits
        maps = model(**call, output_attentions=True)                 # Hugging Face's attention, the one row
    assert query_lengths == [1, 1]
    assert modeling_longformer.create_bidirectional_mask is spy
    assert_close(banded, plain.logits, rtol=1e-5, atol=1e-5, what="banded logits")
    assert torch.equal(maps.logits, plain.logits)
    assert all(torch.equal(a, b) for a, b in zip(maps.attentions, plain.attentions))


def test_banded_attention_does_not_log_the_window_padding():
    """Hugging Face's Longformer logs its padding to a multiple of the window (once a process); inside the block
    that line goes (it cut through fastig's progress bars), and outside it comes back."""
    import logging

    from transformers.models.longformer import modeling_longformer
    from transformers.utils import logging as hf_logging

    model, ids = _model(8), torch.randint(5, 200, (1, 13))            # 13 tokens: padded to 16
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logger = logging.getLogger(modeling_longformer.__name__)
    logger.addHandler(handler)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()                                # transformers' default
    try:
        for inside in (True, False):
            logging.Logger.warning_once.cache_clear()                 # transformers logs each message once
            logged.clear()
            with torch.no_grad(), banded_attention(model) if inside else nullcontext():
                model(input_ids=ids)
            padded = any(message.startswith("Input ids are automatically padded") for message in logged)
            assert padded is not inside, "inside" if inside else "outside"
            assert any(message.startswith("Initializing global attention") for message in logged)  # others stay
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_engine_results_do_not_depend_on_the_attention(models, tokenizer, precision):
    texts = [make_text(40, seed=4), make_text(9, seed=5)]
    runs = {attention: fastig.Engine(models("longformer"), tokenizer, precision=precision, attention=attention)
            .attribute(texts, n_steps=8) for attention in ("model", "banded")}
    assert runs["banded"].stats.attention == "banded"
    for i in range(len(texts)):
        expected = runs["model"].token_scores[i]
        if precision == "fp32":
            assert_close(runs["banded"].attributions[i], runs["model"].attributions[i], rtol=1e-4,
                         atol=1e-5 * float(runs["model"].attributions[i].abs().max()), what=f"document {i}")
        else:   # low precision rounds differently in each: the low-precision contract
            assert torch.corrcoef(torch.stack([runs["banded"].token_scores[i], expected]))[0, 1] >= 0.999


def test_unknown_attention_is_refused(models):
    with pytest.raises(fastig.InputError, match="attention='flash' is unknown"):
        fastig.Engine(models("longformer"), attention="flash")
