"""simpo: simple preference optimisation, trl.experimental's CPOTrainer with loss_type="simpo"."""

from pydantic import Field

from ftune.runtime.train.stages.stage import PREFERENCE, StageDef


def build_trainer(spec, common, inputs, ref_model=None, reward_model=None):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    s = spec.stage
    args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=s.simpo_gamma, beta=s.pref_beta,
                     max_length=spec.data.max_length)
    return CPOTrainer(args=args, **inputs)


STAGE = StageDef(
    name="simpo", label="SimPO", what="simple preference optimisation",
    when="A lighter DPO without a reference model, for chosen/rejected pairs on a tight memory budget.",
    data_kind="preference", columns="preference", build_trainer=build_trainer,
    settings={**PREFERENCE, "simpo_gamma": (float, Field(0.5, description="SimPO reward margin."))},
)
