"""Shared pieces of the benchmarks: random models of known shapes, timing, machine facts."""

import os
import platform
import statistics
import time

import torch


def longformer_classifier(layers: int = 4, hidden: int = 768, heads: int = 12, window: int = 256,
                          max_tokens: int = 4096, seed: int = 0):
    """A Longformer-base-shaped classifier with random weights (2 labels), in eval mode."""
    from transformers import LongformerConfig, LongformerForSequenceClassification

    torch.manual_seed(seed)
    config = LongformerConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                              intermediate_size=4 * hidden, attention_window=window,
                              max_position_embeddings=max_tokens + 2, num_labels=2, initializer_range=0.05)
    return LongformerForSequenceClassification(config).eval()


def random_ids(model, n_tokens: int, seed: int = 0) -> torch.Tensor:
    """[1, n_tokens] ids: CLS (bos), random ordinary tokens, SEP (eos), as a tokenizer would give."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    body = torch.randint(5, config.vocab_size, (n_tokens - 2,), generator=generator)
    return torch.cat([torch.tensor([config.bos_token_id]), body, torch.tensor([config.eos_token_id])]).unsqueeze(0)


def median_seconds(fn, repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of `fn()` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine() -> dict:
    """Device name, cores and library versions, recorded next to every result."""
    import captum
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "captum": captum.__version__}
