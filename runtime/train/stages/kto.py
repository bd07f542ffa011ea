"""kto: preferences from single answers marked good or bad, through TRL's KTOTrainer."""

from pydantic import Field

from ftune.runtime.train.stages.stage import PREFERENCE, REFERENCE, StageDef


def build_trainer(spec, common, inputs, ref_model=None, reward_model=None):
    from trl import KTOConfig, KTOTrainer

    s = spec.stage
    # KTO's KL term pairs each row with its neighbours: TRL needs a fixed order (rows were shuffled by seed)
    common = {**common, "train_sampling_strategy": "sequential"}
    args = KTOConfig(**common, beta=s.pref_beta, desirable_weight=s.kto_desirable_weight,
                     undesirable_weight=s.kto_undesirable_weight, max_length=spec.data.max_length)
    return KTOTrainer(ref_model=ref_model, args=args, **inputs)


STAGE = StageDef(
    name="kto", label="KTO", what="preference from good/bad labels",
    when="Like DPO, but from single answers marked good or bad, when you have thumbs up/down, not pairs.",
    data_kind="kto", columns="kto", build_trainer=build_trainer,
    settings={
        **PREFERENCE,
        "kto_desirable_weight": (float, Field(1.0, gt=0, description="KTO weight of desirable examples.")),
        "kto_undesirable_weight": (float, Field(1.0, gt=0, description="KTO weight of undesirable examples.")),
        **REFERENCE,
    },
)
