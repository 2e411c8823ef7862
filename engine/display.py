"""Attributions as people see them: Captum's visualize_text colours and record table, HTML-escaped.

The notebook view of a result (`Attribution._repr_html_`) and the application's report pages
share these pieces; nothing here writes a file.
"""

import html


def color(score: float) -> str:
    """Captum's visualize_text colours: green for positive, red for negative, stronger with |score| (clipped at 1)."""
    score = max(-1.0, min(1.0, score))
    if score > 0:
        return f"hsl(120, 75%, {100 - int(50 * score)}%)"
    return f"hsl(0, 75%, {100 - int(-40 * score)}%)"


def label_name(value, labels: dict) -> str:
    """A class id with its name from `labels` ({"0": "negative", ...}); "–" for none."""
    if value is None:
        return "–"
    name = labels.get(str(value))
    return f"{name} ({value})" if name is not None and str(name) != str(value) else str(value)


def highlighted(pairs) -> str:
    """(text, score) pairs as highlighted words, each with its score on hover."""
    return " ".join(f'<mark style="background-color: {color(score)}" title="{score:+.4f}">{html.escape(text)}</mark>'
                    for text, score in pairs)


def token_pairs(document) -> list[tuple[str, float]]:
    return list(zip(document.tokens, document.token_scores.tolist()))


def captum_record_table(documents: list, labels: dict, pairs_of=token_pairs) -> str:
    """Captum's visualize_text table for these DocumentResults (one row each); pairs_of(document) gives
    the (text, score) pairs to highlight (by default every token)."""
    rows = "".join(
        f"<tr><td>{html.escape(label_name(d.label, labels))}</td>"
        f"<td>{html.escape(label_name(d.prediction, labels))} ({d.probability:.2f})</td>"
        f"<td>{html.escape(label_name(d.target, labels))}</td><td>{float(d.token_scores.sum()):.2f}</td>"
        f"<td class=\"words\">{highlighted(pairs_of(d))}</td></tr>" for d in documents)
    return ("<table class=\"record\"><tr><th>True Label</th><th>Predicted Label</th><th>Attribution Label</th>"
            f"<th>Attribution Score</th><th>Word Importance</th></tr>{rows}</table>")
