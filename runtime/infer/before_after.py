"""The same questions answered by a run's base model and by the run's model, greedily, for a side-by-side view
(`ftune demo --real`). With an adapter the base is the same model with the adapter switched off."""

from __future__ import annotations

from dataclasses import dataclass

from ftune.runtime.infer.generate import Generation, Settings
from ftune.runtime.infer.loading import load_base_for_comparison, load_run_model, quiet
from ftune.runtime.rundir import RunDir


@dataclass
class Answers:
    question: str
    base: str
    tuned: str


def answer_both(run: RunDir, questions: list[str], max_new_tokens: int = 48) -> list[Answers]:
    """Each question asked of the base model and of the run's model (its export), greedy decoding."""
    import contextlib

    rm = load_run_model(run)
    base, same_object = load_base_for_comparison(rm, run)
    settings = Settings(temperature=0, max_new_tokens=max_new_tokens)
    out = []
    with quiet():
        for q in questions:
            messages = [{"role": "user", "content": q}]
            tuned = Generation(rm.model, rm.tokenizer, messages, settings).result()
            with rm.model.disable_adapter() if same_object else contextlib.nullcontext():
                before = Generation(base, rm.tokenizer, messages, settings).result()
            out.append(Answers(q, before.strip(), tuned.strip()))
    return out
