"""What a training stage is, as data: `StageDef`. One file per stage beside this one holds its entry; the
registry (`__init__.py`) lists them. This module and the entries import nothing heavy at module level (the CLI
and the wizard read them): a stage's trainer builder imports TRL inside itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import Field

# The rows a stage's trainer reads, made by data/ (columns.py, tokenize.py):
#   conversation  input_ids / labels of templated conversations (answers learnt)
#   text          input_ids / labels of plain text, every token learnt
#   reward_pairs  chosen_ids / rejected_ids, tokenised and cut here
#   preference    conversational prompt / chosen / rejected (TRL tokenises them)
#   kto           prompt / completion / label
#   prompt        the conversation up to the last user turn (the model writes the answer)
Columns = Literal["conversation", "text", "reward_pairs", "preference", "kto", "prompt"]

# A stage's own settings under `stage:` in the run file, as pydantic field definitions (name -> (type, Field)).
# The schema builds one settings class per stage from them (spec/schema.py: StageSpec is their tagged union), so a
# setting of another stage is refused by name. Settings that several stages share are defined once here.
Settings = dict[str, tuple[Any, Any]]

PREFERENCE: Settings = {
    "pref_beta": (float, Field(0.1, gt=0, description="Beta of the preference loss.")),
}
REFERENCE: Settings = {
    "ref_model": (str | None, Field(
        None, description="The frozen reference model: another run's name or a model folder (default: the base "
        "model — with LoRA, the adapter switched off).")),
    "ref_model_quantization_bits": (Literal[4, 8] | None, Field(
        None, description="Load the reference model quantised to 4 or 8 bits (bitsandbytes, nf4 at 4 bits).")),
}


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
    settings: Settings = field(default_factory=dict)  # its own keys under `stage:` (see Settings above)
    vision: bool = False  # a vision-language model may train with it
    exports: tuple[str, ...] | None = None  # the output formats it may be saved in; None: every format
    # the stage's own rule across the run's sections (a RunSpec in, the mistake or None out), checked by the schema
    check_run: Callable[[Any], str | None] | None = None

    @property
    def takes_reference(self) -> bool:
        """stage.ref_model may name a frozen reference model."""
        return "ref_model" in self.settings

    @property
    def needs_reward_model(self) -> bool:
        """stage.reward_model names the scorer (an rm run); the schema requires it."""
        return "reward_model" in self.settings

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
