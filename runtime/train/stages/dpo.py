"""dpo: direct preference optimisation through TRL's DPOTrainer (loss variants, beta, SFT term, label smoothing)."""

from ftune.runtime.train.stages.stage import StageDef


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
    data_kind="preference", columns="preference", build_trainer=build_trainer, takes_reference=True,
)
