"""Token rankings over a data-set run: which tokens push the model towards and away from each class.

Per class (the documents' label or prediction) and per token: the sum of its token scores over
the data set, their mean, how often it occurs and in how many documents, written as one CSV
per class (the seed's second notebook); per document, the same sums grouped by token. Special
tokens (CLS, SEP, ...) are left out; subwords can be merged into words first.
"""

import json
import re
from collections import defaultdict
from pathlib import Path

from ..errors import DataError
from ..result import DocumentResult
from .dataset import read_records

GROUPINGS = ("label", "predicted")
WORD_START_MARKERS = ("Ġ", "▁")       # byte-level BPE (RoBERTa, Longformer, GPT-2) and SentencePiece
CONTINUATION_MARKER = "##"            # WordPiece (BERT, DistilBERT, ELECTRA)


def words(tokens: list[str], scores: list[float], special_positions: list[int],
          merge_subwords: bool) -> list[tuple[str, float]]:
    """(token or word, score) pairs without the special tokens; a merged word scores the sum of its pieces.

    Pieces join the word before them: after a "##" (WordPiece), or without a leading "Ġ"/"▁" in
    tokenizers that mark word starts. A special token always ends a word.
    """
    special = set(special_positions)
    marks_starts = any(t.startswith(WORD_START_MARKERS) for t in tokens)
    merged, joinable = [], False
    for position, (token, score) in enumerate(zip(tokens, scores)):
        if position in special:
            joinable = False
            continue
        if not merge_subwords:
            merged.append((token, score))
            continue
        if marks_starts:
            joins = joinable and not token.startswith(WORD_START_MARKERS)
            text = token.lstrip("".join(WORD_START_MARKERS))
        else:
            continues = token.startswith(CONTINUATION_MARKER)
            joins, text = joinable and continues, token[len(CONTINUATION_MARKER):] if continues else token
        if joins:
            merged[-1] = (merged[-1][0] + text, merged[-1][1] + score)
        else:
            merged.append((text, score))
        joinable = True
    return merged


def _words_of(record: DocumentResult, merge_subwords: bool) -> list[tuple[str, float]]:
    return words(record.tokens, record.token_scores.tolist(), record.special_positions, merge_subwords)


def class_rankings(records: list[DocumentResult], by: str = "label", merge_subwords: bool = False) -> dict:
    """{class id: rows of (token, sum, mean, count, documents), highest sum first}."""
    if by not in GROUPINGS:
        raise DataError(f"--by {by!r}: choose {' or '.join(GROUPINGS)}")
    key = "label" if by == "label" else "prediction"
    if any(getattr(r, key) is None for r in records):
        raise DataError("--by label: this run has no labels (its data set had no label column); use --by predicted")
    totals = defaultdict(lambda: defaultdict(lambda: [0.0, 0, set()]))
    for r in records:
        for word, score in _words_of(r, merge_subwords):
            entry = totals[getattr(r, key)][word]
            entry[0] += score
            entry[1] += 1
            entry[2].add(r.id)
    rankings = {}
    for cls, per_token in totals.items():
        rows = [(token, total, total / count, count, len(docs)) for token, (total, count, docs) in per_token.items()]
        rankings[cls] = sorted(rows, key=lambda row: (-row[1], row[0]))
    return rankings


def per_document(records: list[DocumentResult], merge_subwords: bool = False) -> list[tuple]:
    """(id, token, sum, count) for each distinct token of each document: the group-by sum per token type."""
    rows = []
    for r in records:
        sums = defaultdict(lambda: [0.0, 0])
        for word, score in _words_of(r, merge_subwords):
            sums[word][0] += score
            sums[word][1] += 1
        rows += [(r.id, word, total, count) for word, (total, count) in sums.items()]
    return rows


def class_file_name(cls: int, labels: dict) -> str:
    name = labels.get(str(cls), labels.get(cls, ""))
    return f"class_{cls}" + (f"_{re.sub(r'[^A-Za-z0-9]+', '_', str(name)).strip('_')}" if name else "") + ".csv"


def read_run(run: Path) -> tuple[list[DocumentResult], dict]:
    """The records of a finished run and its manifest; an unfinished run is named as such."""
    manifest, documents = run / "manifest.json", run / "documents.jsonl"
    if not manifest.is_file():
        raise DataError(f"{str(run)!r} is not a `fastig dataset` output folder (no manifest.json)")
    if not documents.is_file():
        raise DataError(f"{str(run)!r}: the run is not finished (no documents.jsonl); run the same "
                        "`fastig dataset` command again to complete it")
    return read_records([documents]), json.loads(manifest.read_text(encoding="utf-8"))
