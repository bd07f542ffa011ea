"""pt: continued pre-training on plain text, every token learnt (the SFT trainer of train/recipe.py)."""

from ftune.runtime.train.stages.stage import StageDef

STAGE = StageDef(
    name="pt", label="Pre-training", what="continued, on plain text",
    when="Continue pre-training on plain text to teach the model a new domain or language.",
    data_kind="text", columns="text",
)
