"""rm: a reward model (a sequence-classification head giving one score), through TRL's RewardTrainer. It scores
answers instead of generating them, so it exports only as an adapter or a merged 16-bit model."""

from ftune.runtime.train.stages.stage import StageDef


def build_trainer(spec, common, inputs, ref_model=None, reward_model=None):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**common, max_length=None)  # the pairs come tokenised and cut (data/columns.py)
    return RewardTrainer(args=args, **inputs)


STAGE = StageDef(
    name="rm", label="Reward model", what="a scorer for answers",
    when="Train a scorer that rates answers, from chosen/rejected pairs: the step before RL.",
    data_kind="preference", columns="reward_pairs", build_trainer=build_trainer, causal_lm=False,
    exports=("lora", "merged_16bit"),
)
