"""Training stages beyond SFT, each through the TRL trainer that implements it.

    pt      continued pre-training   SFTTrainer on plain text (every token learnt)
    rm      reward model             RewardTrainer (a sequence-classification head)
    dpo     preference optimisation  DPOTrainer (loss variants, beta, SFT term, label smoothing)
    kto     unpaired preferences     KTOTrainer (desirable / undesirable weights)
    orpo    odds-ratio preferences   trl.experimental ORPOTrainer
    simpo   simple preference opt.   trl.experimental CPOTrainer with loss_type="simpo"
    rl      RL from a reward model   GRPOTrainer or RLOOTrainer with the rm run's model as the reward
                                     function (TRL 1.x has no PPO trainer; GRPO or RLOO is what runs)

The columns each trainer reads are made in data/columns.py; this module loads the frozen models a stage
names (reference, reward) and builds the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


# --------------------------------------------------------------------------- models named by a stage
def device() -> str:
    """The device this process trains on: its rank's GPU (LOCAL_RANK), or the CPU."""
    import os

    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def quantized_bits(model) -> int | None:
    """4 or 8 for a model loaded through bitsandbytes, else None (for the started event)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return 4 if getattr(base, "is_loaded_in_4bit", False) else 8 if getattr(base, "is_loaded_in_8bit", False) else None


def _frozen(path: Path | str, auto_class: str, dtype, trust_remote_code: bool, bits: int | None, **extra):
    """A frozen model of `auto_class` from a folder or hub id. An adapter export is merged into its base, a
    quantised one (bits: 4 or 8, bitsandbytes) too: peft dequantises each layer, adds the adapter and quantises it
    again (it warns of the rounding), which is what a quantised frozen model is asked to be. Merged, it is a plain
    transformers model, which TRL needs of a reward model (a PeftModel it would take for a reward function)."""
    import peft
    import transformers

    kwargs: dict[str, Any] = {"dtype": dtype, **extra}
    if bits:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=bits == 4, load_in_8bit=bits == 8, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": device()}  # the device this process trains on
    if Path(path, "adapter_config.json").is_file():
        model = getattr(peft, f"AutoPeft{auto_class}").from_pretrained(path, **kwargs)
        return model.merge_and_unload()
    return getattr(transformers, f"Auto{auto_class}").from_pretrained(path, trust_remote_code=trust_remote_code,
                                                                     **kwargs)


def load_reference(path: Path | str, dtype, trust_remote_code: bool, bits: int | None = None):
    """The dpo/kto reference: a frozen causal LM."""
    return _frozen(path, "ModelForCausalLM", dtype, trust_remote_code, bits)


def load_reward_model(path: Path | str, dtype, trust_remote_code: bool, bits: int | None = None):
    """The rm run's model for rl: a sequence-classification head giving one score."""
    return _frozen(path, "ModelForSequenceClassification", dtype, trust_remote_code, bits, num_labels=1)


# --------------------------------------------------------------------------- trainers
def build_trainer(stage: str, spec, model, tokenizer, train_ds, eval_ds, common: dict[str, Any], callback,
                  ref_model=None, reward_model=None, optimizer=None):
    s = spec.stage
    max_length = spec.data.max_length
    kw = dict(model=model, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
              callbacks=[callback], optimizers=(optimizer, None))
    if stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        losses, weights = [s.pref_loss], [1.0]
        if s.pref_ftx > 0:  # LLaMA-Factory's pref_ftx: an SFT term on the chosen answers
            losses.append("sft")
            weights.append(s.pref_ftx)
        args = DPOConfig(**common, beta=s.pref_beta, loss_type=losses, loss_weights=weights,
                         label_smoothing=s.label_smoothing, max_length=max_length)
        return DPOTrainer(ref_model=ref_model, args=args, **kw)
    if stage == "kto":
        from trl import KTOConfig, KTOTrainer

        # KTO's KL term pairs each row with its neighbours: TRL needs a fixed order (rows were shuffled by seed)
        common = {**common, "train_sampling_strategy": "sequential"}
        args = KTOConfig(**common, beta=s.pref_beta, desirable_weight=s.kto_desirable_weight,
                         undesirable_weight=s.kto_undesirable_weight, max_length=max_length)
        return KTOTrainer(ref_model=ref_model, args=args, **kw)
    if stage == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**common, beta=s.pref_beta, max_length=max_length)
        return ORPOTrainer(args=args, **kw)
    if stage == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=s.simpo_gamma, beta=s.pref_beta,
                         max_length=max_length)
        return CPOTrainer(args=args, **kw)
    if stage == "rm":
        from trl import RewardConfig, RewardTrainer

        args = RewardConfig(**common, max_length=None)  # the pairs come tokenised and cut (data/columns.py)
        return RewardTrainer(args=args, **kw)
    if stage == "rl":  # the same rollout settings for both: they differ in how an answer's advantage is taken
        import trl

        name = {"grpo": "GRPO", "rloo": "RLOO"}[s.rl_algorithm]
        args = getattr(trl, f"{name}Config")(**common, num_generations=s.num_generations,
                                              max_completion_length=s.max_completion_length, beta=s.kl_beta)
        return getattr(trl, f"{name}Trainer")(reward_funcs=reward_model, args=args, **kw)
    raise ValueError(f"no trainer for stage {stage}")
