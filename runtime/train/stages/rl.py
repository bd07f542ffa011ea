"""rl: reinforcement learning from a reward model (an rm run's model as the reward function), through TRL's
GRPOTrainer or RLOOTrainer (TRL 1.x has no PPO trainer; GRPO or RLOO is what runs)."""

from typing import Literal

from pydantic import Field

from ftune.runtime.train.stages.stage import StageDef


def build_trainer(spec, common, inputs, ref_model=None, reward_model=None):
    import trl

    s = spec.stage  # the same rollout settings for both: they differ in how an answer's advantage is taken
    name = {"grpo": "GRPO", "rloo": "RLOO"}[s.rl_algorithm]
    args = getattr(trl, f"{name}Config")(**common, num_generations=s.num_generations,
                                          max_completion_length=s.max_completion_length, beta=s.kl_beta)
    return getattr(trl, f"{name}Trainer")(reward_funcs=reward_model, args=args, **inputs)


def check_run(spec) -> str | None:
    """Each prompt's answers are compared within one batch: the batch holds whole groups."""
    t, s = spec.training, spec.stage
    if (t.per_device_train_batch_size * t.gradient_accumulation_steps) % s.num_generations:
        return ("stage rl: per_device_train_batch_size × gradient_accumulation_steps must be a "
                f"multiple of stage.num_generations ({s.num_generations})")
    return None


STAGE = StageDef(
    name="rl", label="RL", what="reinforcement learning (GRPO/RLOO)",
    when="Improve an SFT model against a reward model with GRPO or RLOO, when you can score answers.",
    data_kind="chat", columns="prompt", build_trainer=build_trainer, check_run=check_run,
    settings={
        "reward_model": (str | None, Field(None, description="The reward model: an rm run's name or a model folder.")),
        "reward_model_quantization_bits": (Literal[4, 8] | None, Field(
            None, description="Load the reward model quantised to 4 or 8 bits (bitsandbytes, nf4 at 4 bits).")),
        "rl_algorithm": (Literal["grpo", "rloo"], Field(
            "grpo", description="What rl runs (TRL 1.x has no PPO trainer): grpo (Group Relative Policy "
            "Optimization: each answer scored against the mean of its group) or rloo (REINFORCE Leave-One-Out: "
            "against the mean of the other answers to the same prompt).")),
        "num_generations": (int, Field(4, ge=2, description="Answers sampled per prompt and compared.")),
        "max_completion_length": (int, Field(128, ge=1, description="Longest sampled answer, in tokens.")),
        "kl_beta": (float, Field(0.0, ge=0, description="Weight of the KL penalty towards the starting model.")),
    },
)
