"""orpo: odds-ratio preference optimisation, SFT and preference in one pass (trl.experimental's ORPOTrainer)."""

from ftune.runtime.train.stages.stage import PREFERENCE, StageDef


def build_trainer(spec, common, inputs, ref_model=None, reward_model=None):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(**common, beta=spec.stage.pref_beta, max_length=spec.data.max_length)
    return ORPOTrainer(args=args, **inputs)


STAGE = StageDef(
    name="orpo", label="ORPO", what="SFT and preference in one pass",
    when="SFT and preference learning in one pass over chosen/rejected pairs, with no reference model.",
    data_kind="preference", columns="preference", build_trainer=build_trainer, settings=PREFERENCE,
)
