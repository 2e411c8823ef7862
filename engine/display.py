"""Attributions as people see them: words, Captum's visualize_text colours and record table, HTML-escaped.

The notebook view of a result (`Attribution._repr_html_`), the application's reports and its
token rankings share these pieces; nothing here writes a file.
"""

import html
import re
from collections import Counter
from dataclasses import dataclass

from .summarize import ends


def color(score: float) -> str:
    """Captum's visualize_text colours: green for positive, red for negative, stronger with |score| (clipped at 1)."""
    score = max(-1.0, min(1.0, score))
    if score > 0:
        return f"hsl(120, 75%, {100 - int(50 * score)}%)"
    return f"hsl(0, 75%, {100 - int(-40 * score)}%)"


def label_name(value, labels: dict) -> str:
    """A class id with its name from `labels` ({"0": "negative", ...}); "–" for none; a multi-label document's
    list of them joined ("none" when empty)."""
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(label_name(one, labels) for one in value) or "none"
    name = labels.get(str(value))
    return f"{name} ({value})" if name is not None and str(name) != str(value) else str(value)


def highlighted(pairs) -> str:
    """(text, score) pairs as highlighted words, each with its score on hover."""
    return " ".join(f'<mark style="background-color: {color(score)}" title="{score:+.4f}">{html.escape(text)}</mark>'
                    for text, score in pairs)


WORD_START_MARKERS = ("Ġ", "▁")       # byte-level BPE (RoBERTa, Longformer, GPT-2) and SentencePiece
CONTINUATION_MARKER = "##"            # WordPiece (BERT, DistilBERT, ELECTRA)


@dataclass
class Word:
    """A word of a document: its text, the sum of its pieces' scores, their positions, and its place
    [start, end) in the document's text (None where the text is not known)."""
    text: str
    score: float
    positions: list
    start: int | None = None
    end: int | None = None


def words(document) -> list[Word]:
    """A DocumentResult's words, special tokens left out: its tokens grouped by the tokenizer's words
    (word_ids; punctuation is a word of its own), each word scoring the sum of its pieces; in a script
    written without spaces, each piece (_unspaced_as_pieces).

    Records without word ids (ids given without a fast tokenizer) fall back on the vocabulary's
    markers: a piece joins the word before it after a "##" (WordPiece), or without a leading
    "Ġ"/"▁" where the tokenizer marks word starts.
    """
    special, scores = set(document.special_positions), document.token_scores.tolist()
    if document.word_ids is None:
        return _unspaced_as_pieces(_marked_words(document.tokens, scores, special), document)
    found, last = [], None
    for position, word_id in enumerate(document.word_ids):
        if position in special or word_id is None:
            last = None
            continue
        if word_id == last:
            found[-1].positions.append(position)
            found[-1].score += scores[position]
        else:
            found.append(Word("", scores[position], [position]))
        last = word_id
    for word in found:
        if document.offsets is not None:
            _place(word, document.text, document.offsets[word.positions[0]][0],
                   document.offsets[word.positions[-1]][1])
        else:
            word.text = "".join(document.shown_tokens[p] for p in word.positions)
    # a trailing space's piece is a word of no text
    return _unspaced_as_pieces(_shown(found, lambda word: False), document)


# Scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer), with their punctuation
# and fullwidth forms. Korean's Hangul is written with spaces.
UNSPACED = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3000-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
                      "\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f]")


def _unspaced_as_pieces(found: list[Word], document) -> list[Word]:
    """Each word holding a script written without spaces, as its pieces (token_words): tokenizers that split
    words at spaces (SentencePiece's, XLM-R's and mDeBERTa's; a byte-level BPE's) made a Chinese clause one
    word, the whole of a ranking's top. WordPiece already splits Han characters apart."""
    if not any(UNSPACED.search(word.text) for word in found):
        return found
    pieces = {position: piece for piece in token_words(document) for position in piece.positions}
    split = []
    for word in found:
        if not UNSPACED.search(word.text):
            split.append(word)
            continue
        for position in word.positions:
            if position in pieces and not (split and split[-1] is pieces[position]):
                split.append(pieces[position])
    return split


def token_words(document) -> list[Word]:
    """Each token but the special ones as a Word of its own, placed in the text where offsets say. A piece
    that shows nothing adds its score to a neighbour (_shown): a bare word-start piece ("▁" alone) to the
    piece after it, whose word it starts, any other to the piece before it, whose character it shares (see
    inputs.display_tokens)."""
    special, scores, found, end = set(document.special_positions), document.token_scores.tolist(), [], 0
    for position, shown in enumerate(document.shown_tokens):
        if position in special:
            continue
        word = Word(shown, scores[position], [position])
        if document.tokens[position] in WORD_START_MARKERS:
            word.text = ""
        elif document.offsets is not None and document.offsets[position] is not None:
            start, stop = document.offsets[position]
            _place(word, document.text, max(start, end), stop)
            end = max(end, stop)
        found.append(word)
    return _shown(found, lambda word: document.tokens[word.positions[0]] in WORD_START_MARKERS)


def _shown(units: list[Word], to_next) -> list[Word]:
    """The units that show some text. Each that shows none adds its score to a neighbour, so that the shown
    units' scores sum to all of them: to the next shown unit where to_next(unit), else to the one before
    (to the next at the start, to the one before at the end)."""
    shown, waiting = [], []
    for unit in units:
        if unit.text:
            for piece in waiting:
                _absorb(unit, piece)
            waiting = []
            shown.append(unit)
        elif shown and not to_next(unit):
            _absorb(shown[-1], unit)
        else:
            waiting.append(unit)
    for piece in waiting if shown else []:
        _absorb(shown[-1], piece)
    return shown


def _absorb(unit: Word, piece: Word) -> None:
    unit.score += piece.score
    unit.positions = sorted(unit.positions + piece.positions)


def shown_units(document, tokens: bool = False) -> list[Word]:
    """What a person reads of the document: its words, or with `tokens` each token (`token_words`)."""
    return token_words(document) if tokens else words(document)


@dataclass
class RankedWord:
    """A word (or token) at one end of a document's ranking: its text, score and how often it occurs."""
    text: str
    score: float
    count: int


def top_bottom_words(units: list[Word], k: int) -> tuple[list[RankedWord], list[RankedWord]]:
    """The two ends of the units' ranking (fastig.summarize.ends): up to k texts scoring toward the class,
    highest first, and up to k away from it, lowest first, each text once at its highest (lowest) score."""
    counts = Counter(u.text for u in units)
    top, bottom = ends(sorted(units, key=lambda u: -u.score), lambda u: u.score, k, lambda u: u.text)
    return ([RankedWord(u.text, u.score, counts[u.text]) for u in top],
            [RankedWord(u.text, u.score, counts[u.text]) for u in bottom])


def captum_record_table(documents: list, labels: dict) -> str:
    """Captum's visualize_text table for these DocumentResults (one row each), each document's words
    highlighted (`words`: a WordPiece's "un" "##work" "##ably" is one "unworkably", as in the reports)."""
    rows = "".join(
        f"<tr><td>{html.escape(label_name(d.label, labels))}</td>"
        f"<td>{html.escape(label_name(d.prediction, labels))} ({d.probability:.2f})</td>"
        f"<td>{html.escape(label_name(d.target, labels))}</td><td>{float(d.token_scores.sum()):.2f}</td>"
        f"<td class=\"words\">{highlighted((w.text, w.score) for w in words(d))}</td></tr>" for d in documents)
    return ("<table class=\"record\"><tr><th>True Label</th><th>Predicted Label</th><th>Attribution Label</th>"
            f"<th>Attribution Score</th><th>Word Importance</th></tr>{rows}</table>")


def _place(word: Word, text: str, start: int, end: int) -> None:
    """The word's text and its place [start, end) in `text`, leading and trailing whitespace left out."""
    segment = text[start:end]
    word.start = start + len(segment) - len(segment.lstrip())
    word.end = max(word.start, end - (len(segment) - len(segment.rstrip())))
    word.text = text[word.start:word.end]


def _marked_words(tokens: list[str], scores: list[float], special: set) -> list[Word]:
    marks_starts = any(t.startswith(WORD_START_MARKERS) for t in tokens)
    found, joinable = [], False
    for position, (token, score) in enumerate(zip(tokens, scores)):
        if position in special:
            joinable = False
            continue
        if marks_starts:
            joins, text = joinable and not token.startswith(WORD_START_MARKERS), token.lstrip("".join(WORD_START_MARKERS))
        else:
            continues = token.startswith(CONTINUATION_MARKER)
            joins, text = joinable and continues, token[len(CONTINUATION_MARKER):] if continues else token
        if joins:
            found[-1].text += text
            found[-1].score += score
            found[-1].positions.append(position)
        else:
            found.append(Word(text, score, [position]))
        joinable = True
    return found
