"""dpo: direct preference optimisation through TRL's DPOTrainer (loss variants, beta, SFT term, label smoothing)."""

from typing import Literal

from pydantic import Field

from ftune.runtime.train.stages.stage import PREFERENCE, REFERENCE, StageDef


def build_trainer(spec, common, inputs, ref_model=None, reward_model=None):
    from trl import DPOConfig, DPOTrainer

    s = spec.stage
    losses, weights = [s.pref_loss], [1.0]
    if s.pref_ftx > 0:  # LLaMA-Factory's pref_ftx: an SFT term on the chosen answers
        losses.append("sft")
        weights.append(s.pref_ftx)
    args = DPOConfig(**common, beta=s.pref_beta, loss_type=losses, loss_weights=weights,
                     label_smoothing=s.label_smoothing, max_length=spec.data.max_length)
    return DPOTrainer(ref_model=ref_model, args=args, **inputs)


STAGE = StageDef(
    name="dpo", label="DPO", what="direct preference optimisation",
    when="Make it prefer better answers, from pairs of a chosen and a rejected answer to one prompt.",
    data_kind="preference", columns="preference", build_trainer=build_trainer,
    settings={
        **PREFERENCE,
        "pref_loss": (Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero",
                              "apo_down"], Field("sigmoid", description="DPO loss variant (TRL's names).")),
        "pref_ftx": (float, Field(0.0, ge=0, description="Weight of an SFT loss on the chosen answers added to DPO.")),
        "label_smoothing": (float, Field(0.0, ge=0, le=0.5, description="DPO label smoothing, 0 to 0.5.")),
        **REFERENCE,
    },
)
