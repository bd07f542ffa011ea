import pytest

from ftune.presets import NAMES, describe, load_preset
from ftune.runtime.spec import SpecError, build_spec

BASE = {"name": "run-01", "model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}

# The scenario table of the seeds (003): lr, epochs, batch, LoRA rank, alpha; dropout 0.05 throughout.
TABLE = {
    "standard": (1e-4, 3, 8, 8, 32),
    "quality": (1e-4, 5, 16, 16, 64),
    "fast": (1e-4, 2, 8, 4, 16),
}


@pytest.mark.parametrize("name", NAMES)
def test_preset_values_match_the_seed_table(name):
    spec = build_spec({**BASE, "preset": name})
    t, lora = spec.training, spec.method.lora
    assert (t.learning_rate, t.num_train_epochs, t.per_device_train_batch_size, lora.rank, lora.alpha) == TABLE[name]
    assert lora.dropout == 0.05
    assert len(describe(name)) > 20 and "\n" not in describe(name)


def test_merge_order_defaults_preset_file_overrides():
    defaults = build_spec(BASE)
    assert defaults.method.lora.rank == 8 and defaults.training.num_train_epochs == 3
    preset = build_spec({**BASE, "preset": "fast"})
    assert preset.method.lora.rank == 4
    in_file = build_spec({**BASE, "preset": "fast", "method": {"lora": {"rank": 12}}})
    assert in_file.method.lora.rank == 12 and in_file.method.lora.alpha == 16  # the rest of the preset stays
    overridden = build_spec({**BASE, "preset": "fast", "method": {"lora": {"rank": 12}}}, ["method.lora.rank=2"])
    assert overridden.method.lora.rank == 2


def test_preset_named_by_override():
    assert build_spec(BASE, ["preset=quality"]).training.num_train_epochs == 5


def test_unknown_preset():
    with pytest.raises(SpecError) as info:
        build_spec({**BASE, "preset": "turbo"})
    assert "unknown preset 'turbo'" in str(info.value)
    with pytest.raises(KeyError):
        load_preset("turbo")
