"""A classifier trained briefly on a synthetic keyword task, for the equal-accuracy scenario.

Randomly initialised models are not what people explain: a fine-tuned classifier is confident,
and along the path from the baseline its output changes over a short stretch of alpha, where
s(alpha) peaks. Counting keywords is learnt in a few hundred steps, which gives that shape
offline: label 1 when a document holds more "positive" ids than "negative" ones.
"""

import hashlib
import tempfile
from pathlib import Path

import torch

KEYWORDS = 50           # ids of each polarity
FIRST_KEYWORD = 10      # past the ids special tokens take in BERT-like vocabularies
MOST_PER_POLARITY = 6   # a document holds 0 to 5 keywords of each
TRAINING_LENGTH = 64
RECIPE = "keywords-1"   # part of the cache key: change it when the task or the training changes


def keyword_documents(vocab_size: int, documents: int, length: int, generator: torch.Generator):
    """[documents, length] ids (CLS-like first, SEP-like last, filler ids otherwise, keywords at random
    places) and their labels [documents]."""
    filler = FIRST_KEYWORD + 2 * KEYWORDS
    ids = torch.randint(filler, vocab_size, (documents, length), generator=generator)
    positives = torch.randint(0, MOST_PER_POLARITY, (documents,), generator=generator)
    negatives = torch.randint(0, MOST_PER_POLARITY, (documents,), generator=generator)
    for row, (p, n) in enumerate(zip(positives.tolist(), negatives.tolist())):
        places = torch.randperm(length - 2, generator=generator)[:p + n] + 1
        ids[row, places[:p]] = FIRST_KEYWORD + torch.randint(0, KEYWORDS, (p,), generator=generator)
        ids[row, places[p:]] = FIRST_KEYWORD + KEYWORDS + torch.randint(0, KEYWORDS, (n,), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, (positives > negatives).long()


def trained(model: torch.nn.Module, steps: int, key: str, seed: int = 0) -> torch.nn.Module:
    """`model` after `steps` AdamW steps (batch 32) on the task, cached by `key` in the temp folder
    (every benchmark child process builds its model afresh)."""
    cache = Path(tempfile.gettempdir()) / "fastig-bench-models" / (hashlib.sha1(f"{RECIPE} {key}".encode()).hexdigest()[:16] + ".pt")
    if cache.exists():
        model.load_state_dict(torch.load(cache))
        return model.eval()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        ids, labels = keyword_documents(model.config.vocab_size, 32, TRAINING_LENGTH, generator)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cache.parent.mkdir(exist_ok=True)
    partial = cache.with_suffix(f".{id(model)}.tmp")
    torch.save(model.state_dict(), partial)
    partial.replace(cache)
    return model.eval()
