"""Token rankings over a data-set run: which tokens push the model towards and away from each class.

A document's token scores are its attributions toward its target, the class attributed (its
prediction by default), so the scores of documents with different targets mean different
things: rankings group documents by target, and with `by="label"` by (label, target) as well,
and every row names its target. Per group and per word (the tokenizer's words, punctuation a word of its
own, as `attribute` and the reports show them; subword pieces such as "esentations" read as nothing) or,
without merge_subwords, per token:

- sum: the sum of its scores over the group (the seed's notebook). Frequent tokens dominate it:
  "the" collects a little from every sentence.
- mean: its mean score per occurrence. Robust to frequency, but a word seen once can top it:
  rankings by mean leave out tokens seen fewer than min_count times (3 unless given).
- document_mean: its summed score per document it occurs in (sum / documents), the typical pull
  of the token on a document that has it.
- count, documents: its occurrences, and the documents that hold it.

Special tokens (CLS, SEP, PAD, ...) are never ranked. Written as one CSV per group, and per
document the sums by token.
"""

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..display import words
from ..errors import DataError
from ..result import DocumentResult
from .dataset import read_records, sound_shards
from .text import counted

GROUPINGS = ("target", "label")
RANKINGS = ("sum", "mean", "document_mean")
DEFAULT_MIN_COUNT = {"sum": 1, "mean": 3, "document_mean": 3}


@dataclass
class TokenRow:
    """One token of a group: its scores over the group's documents (see the module's docstring)."""
    token: str
    target: int
    sum: float
    mean: float
    count: int
    documents: int
    document_mean: float


def _units(record: DocumentResult, merge_subwords: bool) -> list[tuple[str, float]]:
    """(text, score) of what is ranked: the record's words, or its tokens as shown, special ones left out."""
    if merge_subwords:
        return [(w.text, w.score) for w in words(record)]
    special = set(record.special_positions)
    return [(t, s) for p, (t, s) in enumerate(zip(record.shown_tokens, record.token_scores.tolist()))
            if p not in special and t]


def group_key(record: DocumentResult, by: str):
    """The group of a document: its target, or (label, target) with by="label"."""
    return record.target if by == "target" else (record.label, record.target)


def check_grouping(records: list[DocumentResult], by: str) -> None:
    """`by` must be a grouping these records have: by label, each a label of one class."""
    if by not in GROUPINGS:
        raise DataError(f"--by {by!r}: choose {' or '.join(GROUPINGS)}")
    if by == "label" and any(r.label is None for r in records):
        raise DataError("--by label: this run has no labels (its data set had no label column); use --by target")
    if by == "label" and any(isinstance(r.label, list) for r in records):
        raise DataError("--by label: this run's documents have a list of labels each (a multi-label data set), "
                        "no one label to group by; use --by target")


@dataclass
class Tally:
    """A run's words (or tokens) counted in one pass over its records."""
    rankings: dict              # {group: TokenRows, highest sum first}
    per_document: list[tuple]   # (id, target, token, sum, count, data_id): each document's distinct tokens


COUNTING_BAR_DELAY_S = 2.0      # a tally that takes longer shows a bar (0.2 ms a 7 KB record, 2-core EPYC)


def tally(records: list[DocumentResult], by: str = "target", merge_subwords: bool = True) -> Tally:
    """Rankings by group (a target, or (label, target) with by="label") and each document's sums by token, from
    one split of each record into words (done twice, it was a fifth of `fastig aggregate`'s time)."""
    from tqdm.auto import tqdm

    check_grouping(records, by)
    totals = defaultdict(lambda: defaultdict(lambda: [0.0, 0, set()]))
    per_document = []
    for r in tqdm(records, unit="doc", desc="counting words", leave=False, delay=COUNTING_BAR_DELAY_S,
                  mininterval=1.0):
        in_group, sums = totals[group_key(r, by)], defaultdict(lambda: [0.0, 0])
        for text, score in _units(r, merge_subwords):
            entry = in_group[text]
            entry[0] += score
            entry[1] += 1
            entry[2].add(r.id)
            sums[text][0] += score
            sums[text][1] += 1
        per_document += [(r.id, r.target, text, total, count, r.data_id) for text, (total, count) in sums.items()]
    rankings = {}
    for group, per_token in totals.items():
        target = group if by == "target" else group[1]
        rows = [TokenRow(token, target, total, total / count, count, len(docs), total / len(docs))
                for token, (total, count, docs) in per_token.items()]
        rankings[group] = sorted(rows, key=lambda row: (-row.sum, row.token))
    return Tally(rankings, per_document)


def ranked(rows: list[TokenRow], by: str = "sum", min_count: int | None = None) -> list[TokenRow]:
    """The rows ordered by `by` (highest first), leaving out tokens seen fewer than min_count times
    (DEFAULT_MIN_COUNT when None)."""
    if by not in RANKINGS:
        raise DataError(f"--rank {by!r}: choose {', '.join(RANKINGS)}")
    least = DEFAULT_MIN_COUNT[by] if min_count is None else min_count
    if least < 1:
        raise DataError(f"--min-count {least}: give 1 or more")
    return sorted((r for r in rows if r.count >= least), key=lambda r: (-getattr(r, by), r.token))


def _slug(name) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_")


def group_file_name(group, labels: dict) -> str:
    """target_<k>_<name>.csv, or label_<l>_<name>.target_<k>_<name>.csv."""
    def part(kind, cls):
        name = labels.get(str(cls), "")
        return f"{kind}_{cls}" + (f"_{_slug(name)}" if name and str(name) != str(cls) else "")
    if isinstance(group, tuple):
        return f"{part('label', group[0])}.{part('target', group[1])}.csv"
    return part("target", group) + ".csv"


@dataclass
class Run:
    """A `fastig dataset` run's records and manifest; finished False: the records of its sound shards so far."""
    records: list[DocumentResult]
    manifest: dict
    finished: bool = True

    @property
    def documents(self) -> int:
        return len({r.id for r in self.records})

    @property
    def so_far(self) -> str:
        """What an unfinished run's outputs hold, said where they are written."""
        return f"unfinished run: {self.of_all} done so far"

    @property
    def of_all(self) -> str:
        """"7 of its 12 documents" (the whole from the manifest; runs begun before 2026-12-07 have none)."""
        return _of_all(self.documents, self.manifest.get("documents"))


def _of_all(done: int, documents: int | None) -> str:
    return f"{done} of its {counted(documents, 'document')}" if documents else f"the {counted(done, 'document')}"


def read_run(run: Path, unfinished: bool = False) -> Run:
    """The records of a finished run and its manifest; an unfinished run is named as such, or with
    `unfinished` read as far as it got: the records of its sound shards (which a run going on never changes,
    each written whole), each (document, target) once, by document."""
    manifest_path, documents = run / "manifest.json", run / "documents.jsonl"
    if not manifest_path.is_file():
        raise DataError(f"{str(run)!r} is not a `fastig dataset` output folder (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.setdefault("settings", {}), dict):
            raise ValueError("manifest.json is not a manifest of settings")
        if documents.is_file():
            return Run(read_records([documents]), manifest)
        so_far = {}
        for entries in sound_shards(run, move_corrupt=False).values():
            for entry in entries:
                if not isinstance(entry, tuple):        # (id, reason): a document skipped
                    so_far.setdefault((entry.id, entry.target), entry)
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(f"{str(run)!r}: its documents.jsonl, shards or manifest.json cannot be read ({err}); "
                        "it is not a `fastig dataset` run of this fastig") from err
    if not unfinished:
        done = _of_all(len({document for document, _ in so_far}), manifest.get("documents"))
        raise DataError(f"{str(run)!r}: the run is not finished (no documents.jsonl); run the same "
                        f"`fastig dataset` command again to complete it, or add --unfinished to take {done} "
                        "done so far")
    if not so_far:
        raise DataError(f"{str(run)!r}: the run has no document done yet")
    return Run([so_far[key] for key in sorted(so_far, key=lambda key: key[0])], manifest, finished=False)
