"""rl: reinforcement learning from a reward model (an rm run's model as the reward function), through TRL's
GRPOTrainer or RLOOTrainer (TRL 1.x has no PPO trainer; GRPO or RLOO is what runs)."""

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
    data_kind="chat", columns="prompt", build_trainer=build_trainer, needs_reward_model=True,
    check_run=check_run,
)
