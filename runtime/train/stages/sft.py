"""sft: supervised fine-tuning on conversations (the SFT trainer of train/recipe.py, with the model's own loss)."""

from ftune.runtime.train.stages.stage import StageDef

STAGE = StageDef(
    name="sft", label="SFT", what="supervised fine-tuning",
    when="Teach the model to answer like your examples: start here, with prompt/answer conversations.",
    data_kind="chat", columns="conversation", vision=True,
)
