"""Padding-free batches give the padded batch's loss and gradients; the token budget's batches."""

import random

import pytest

torch = pytest.importorskip("torch")

from ftune.runtime.train.batching import BY_ROW, TokenBudgetBatches, attend_by_row, padding_free_blocker


def rows(seed: int = 1):
    rng = random.Random(seed)
    out = []
    for n in (5, 17, 9, 30, 2):
        ids = [rng.randrange(3, 200) for _ in range(n)]
        out.append({"input_ids": ids, "labels": [-100 if i < n // 3 else x for i, x in enumerate(ids)]})
    return out


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch, use_cache=False).loss  # every key the collator gives, as the trainer passes them
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("attn", ["sdpa", "eager", BY_ROW])
def test_padding_free_rows_give_the_padded_loss_and_gradients(tiny_model, attn):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as Collator

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager" if attn == "eager" else "sdpa",
                                                 dtype=torch.float32)
    padded = Collator(pad_token_id=0)(rows())
    loss_p, grads_p = loss_and_grads(model, padded)  # with sdpa or eager, as loaded
    if attn == BY_ROW:
        assert attend_by_row(model) and model.config._attn_implementation == BY_ROW
    assert padding_free_blocker(model) is None
    flat = Collator(pad_token_id=0, padding_free=True)(rows())
    assert flat["input_ids"].shape == (1, 5 + 17 + 9 + 30 + 2) and "attention_mask" not in flat
    loss_f, grads_f = loss_and_grads(model, flat)
    assert loss_f == pytest.approx(loss_p, abs=1e-5)
    assert (grads_f - grads_p).abs().max().item() < 1e-5
    # the check has teeth: the same rows end to end as one row attend across rows
    crossed = {k: flat[k] for k in ("input_ids", "labels")} | {"position_ids": torch.arange(flat["input_ids"].shape[1])[None]}
    assert abs(loss_and_grads(model, crossed)[0] - loss_p) > 1e-3
    if attn == BY_ROW:  # a padded batch (evaluation, generation) is plain sdpa
        assert loss_and_grads(model, padded)[0] == pytest.approx(loss_p, abs=1e-6)


def test_a_model_that_builds_its_own_mask_is_padded():
    class Config:
        _attn_implementation = "sdpa"

    class OwnMaskModel(torch.nn.Module):  # this module's source uses no transformers mask function
        config = Config()

        def forward(self, input_ids, position_ids=None):
            return input_ids

    assert padding_free_blocker(OwnMaskModel()) == "OwnMaskModel builds its own attention mask"
    Config._attn_implementation = "paged_attention"
    assert padding_free_blocker(OwnMaskModel()) == "attention paged_attention does not separate packed rows"


def test_token_budget_batches_hold_every_row_once_within_the_budget():
    lengths = [random.Random(i).randrange(5, 120) for i in range(300)] + [400]  # one row over the budget
    sampler = TokenBudgetBatches(lengths, 256, seed=3)
    first, second = list(sampler), (sampler.set_epoch(1), list(sampler))[1]
    for epoch in (first, second):
        assert sorted(i for b in epoch for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= 256 or len(b) == 1 for b in epoch)
        assert len(epoch) == len(sampler)
    assert first != second and sorted(map(tuple, first)) == sorted(map(tuple, second))  # same batches, new order
    assert len(sampler) < len(lengths) / 3  # short rows share a batch
    padded = TokenBudgetBatches(lengths, 256, seed=3, padded=True)  # a padded batch costs rows x its longest
    assert all(max(lengths[i] for i in b) * len(b) <= 256 or len(b) == 1 for b in padded)
    assert len(padded) > len(sampler)


def test_row_bounds_are_read_once_per_batch():
    from ftune.runtime.train.batching import _row_bounds

    first = torch.tensor([0, 5, 9])
    assert _row_bounds(first) == [0, 5, 9] and _row_bounds(first) is _row_bounds(first)  # every layer, one read
    second = torch.tensor([0, 5, 9])  # the next batch: a new tensor, read again even with the same bounds
    assert _row_bounds(second) == [0, 5, 9] and _row_bounds(second) is not _row_bounds(first)


@pytest.fixture
def plan_for(tiny_model, monkeypatch):
    """plan(cuda, kernels, **data) -> (batching plan, the attention the model then runs), for the tiny model on sdpa.
    The device is faked (there is no GPU here): `cuda` is what batching_plan is told; `kernels` says whether the
    kernels package is installed ("fails": installed, and the hub kernel cannot be had, as offline); loading the hub
    kernel itself is faked too, since nothing can be fetched here."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    from ftune.runtime.spec import build_spec
    from ftune.runtime.train import batching
    from ftune.runtime.train.recipe import batching_plan

    real_find = importlib.util.find_spec

    def plan(cuda: bool, kernels=False, attn: str = "sdpa", **data):
        def find_spec(name, *a):
            return (object() if kernels else None) if name == "kernels" else real_find(name, *a)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
        if attn != "sdpa":  # loaded with FlashAttention (train/model.py's choice on a GPU where it is installed)
            model.config._attn_implementation = attn

        real_set = model.set_attn_implementation

        def hub_kernel(impl):
            if impl != batching.HUB_FLASH:
                return real_set(impl)
            if kernels == "fails":
                raise OSError("We couldn't connect to 'https://huggingface.co' to load the kernel")
            model.config._attn_implementation = impl

        monkeypatch.setattr(model, "set_attn_implementation", hub_kernel)
        spec = build_spec({"name": "r", "model": {"name_or_path": "m"}, "data": {"train": "t.jsonl", **data}})
        return batching_plan(spec, model, cuda=cuda), model.config._attn_implementation

    return plan


def test_padding_free_attention_by_device(plan_for):
    from ftune.runtime.train.batching import HUB_FLASH

    assert plan_for(cuda=False) == ({"batching": "padding-free", "attn_implementation": BY_ROW}, BY_ROW)
    # on a GPU: never sdpa_by_row; a variable-length kernel, or padded with the reason
    assert plan_for(cuda=True, attn="flash_attention_2")[0] == {"batching": "padding-free",
                                                               "attn_implementation": "flash_attention_2"}
    assert plan_for(cuda=True, kernels=True) == ({"batching": "padding-free", "attn_implementation": HUB_FLASH},
                                                 HUB_FLASH)
    padded, attn = plan_for(cuda=True)
    assert padded["batching"] == "padded" and attn == "sdpa"
    assert "variable-length attention kernel, and FlashAttention-2 is not installed" in padded["batching_note"]
    offline, attn = plan_for(cuda=True, kernels="fails")
    assert offline["batching"] == "padded" and attn == "sdpa" and "couldn't connect" in offline["batching_note"]
    # packing keeps sdpa's block-diagonal mask without a varlen kernel (correct, if slower)
    assert plan_for(cuda=True, packing=True) == ({"batching": "packed", "attn_implementation": "sdpa"}, "sdpa")
