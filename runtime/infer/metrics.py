"""Scores of generated answers against references: BLEU (sacrebleu) and ROUGE-1/2/L (rouge-score).

Both libraries split text on spaces and, in rouge-score's case, drop every character that is not
a-z or 0-9 — so Chinese text would score 0 whatever the model says. Here:

- BLEU is corpus BLEU from sacrebleu, with its `zh` tokeniser when the references contain Chinese
  characters (each character a token, the rest as 13a), `char` for Japanese kana, and the
  standard `13a` otherwise. The tokeniser used is reported next to the score.
- ROUGE is rouge-score's F-measure averaged over the rows, with a tokeniser that makes each CJK
  character a token and hands the rest to rouge-score's own tokeniser (lowercase, Porter stemming).
  For text without CJK characters it is exactly rouge-score's default with stemming.

Scores are on a 0-100 scale. No torch here.
"""

from __future__ import annotations

import re
from typing import Any

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_KANA = "\u3040-\u30ff"
_HANGUL = "\uac00-\ud7af"
CJK_CHAR = re.compile(f"[{_HAN}{_KANA}{_HANGUL}]")
_SPLIT = re.compile(f"([{_HAN}{_KANA}{_HANGUL}])")


def bleu_tokenizer(references: list[str]) -> str:
    """sacrebleu's tokeniser for these references."""
    text = "".join(references)
    if re.search(f"[{_HAN}]", text):
        return "zh"
    if re.search(f"[{_KANA}]", text):
        return "char"
    return "13a"


class CJKTokenizer:
    """A rouge-score tokenizer: each CJK character is a token; other text goes through rouge-score's own."""

    def __init__(self, use_stemmer: bool = True):
        from rouge_score.tokenizers import DefaultTokenizer

        self._default = DefaultTokenizer(use_stemmer=use_stemmer)

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for piece in _SPLIT.split(text or ""):
            if not piece:
                continue
            if CJK_CHAR.fullmatch(piece):
                tokens.append(piece)
            else:
                tokens += self._default.tokenize(piece)
        return tokens


def bleu(predictions: list[str], references: list[str]) -> tuple[float, str]:
    """Corpus BLEU (0-100) and the sacrebleu tokeniser used."""
    import sacrebleu

    tok = bleu_tokenizer(references)
    return float(sacrebleu.corpus_bleu(predictions, [references], tokenize=tok).score), tok


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-100)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=CJKTokenizer())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for k in totals:
            totals[k] += scores[k].fmeasure
    n = max(1, len(predictions))
    return {k: 100 * v / n for k, v in totals.items()}


def score(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Every metric, with the `predict_` prefix the run's events and model card use."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("nothing to score")
    b, tok = bleu(predictions, references)
    r = rouge(predictions, references)
    return {"predict_bleu": round(b, 4), "predict_rouge1": round(r["rouge1"], 4),
            "predict_rouge2": round(r["rouge2"], 4), "predict_rougeL": round(r["rougeL"], 4),
            "bleu_tokenize": tok, "num_samples": len(references)}
