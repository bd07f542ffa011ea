"""What a training stage is, as data: `StageDef`. One file per stage beside this one holds its entry; the
registry (`__init__.py`) lists them. This module and the entries import nothing heavy at module level (the CLI
and the wizard read them): a stage's trainer builder imports TRL inside itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

# The rows a stage's trainer reads, made by data/ (columns.py, tokenize.py):
#   conversation  input_ids / labels of templated conversations (answers learnt)
#   text          input_ids / labels of plain text, every token learnt
#   reward_pairs  chosen_ids / rejected_ids, tokenised and cut here
#   preference    conversational prompt / chosen / rejected (TRL tokenises them)
#   kto           prompt / completion / label
#   prompt        the conversation up to the last user turn (the model writes the answer)
Columns = Literal["conversation", "text", "reward_pairs", "preference", "kto", "prompt"]


@dataclass(frozen=True)
class StageDef:
    """Everything about one stage: the rest of the code asks this, never compares stage names."""

    name: str  # the run file's stage.type
    label: str  # short, for tables and the wizard: "DPO"
    what: str  # a few words: "direct preference optimisation"
    when: str  # the wizard's sentence on when to choose it
    data_kind: str  # the data it trains on (data/formats.py kinds: chat, preference, kto, text)
    columns: Columns
    # the TRL trainer, built from the run's TrainingArguments (common) and the prepared data; None: the SFT
    # trainer of train/recipe.py, for stages that train on token rows (`trains_on_tokens`)
    build_trainer: Callable[..., Any] | None = None
    causal_lm: bool = True  # generates text (False: a sequence-classification head giving one score)
    takes_reference: bool = False  # stage.ref_model may name a frozen reference model
    needs_reward_model: bool = False  # stage.reward_model names the scorer (an rm run)
    vision: bool = False  # a vision-language model may train with it
    exports: tuple[str, ...] | None = None  # the output formats it may be saved in; None: every format
    # the stage's own rule across the run's sections (a RunSpec in, the mistake or None out), checked by the schema
    check_run: Callable[[Any], str | None] | None = None

    @property
    def trains_on_tokens(self) -> bool:
        """Rows arrive as input_ids/labels and go through the SFT trainer: what streaming, token budgets and
        packing work with."""
        return self.build_trainer is None

    def export_refusal(self, fmt: str) -> str | None:
        """Why a model of this stage cannot be saved as `fmt`, or None. The one place that rule lives: the
        schema, the worker's export and `ftune export` all ask it."""
        if self.exports is None or fmt in self.exports:
            return None
        return (f"{fmt} is for generating models; a {self.label.lower()} (stage {self.name}) exports as "
                f"{' or '.join(self.exports)}")
