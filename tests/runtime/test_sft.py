"""train/sft.py: logits only where a label is learnt give the same loss and gradients as the whole logits."""

import pytest

torch = pytest.importorskip("torch")

from ftune.runtime.train.sft import learnt_logits_only, takes_logits_mask
from tests.runtime.test_batching import loss_and_grads, rows


@pytest.mark.parametrize("padding_free", [False, True])
def test_learnt_positions_only_give_the_whole_loss_and_gradients(tiny_model, padding_free):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as Collator

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    assert takes_logits_mask(model)
    batch = Collator(pad_token_id=0, padding_free=padding_free)(rows())
    learnt = int((batch["labels"][..., 1:] != -100).sum())
    whole, grads = loss_and_grads(model, batch)
    model.zero_grad()
    out = model(**learnt_logits_only(batch), use_cache=False)
    out.loss.backward()
    assert out.logits.shape[0] == learnt  # one row of logits per learnt token, not one per position
    assert out.loss.item() == pytest.approx(whole, abs=1e-5)
    lora = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert (lora - grads).abs().max().item() < 1e-5
    # with a summed loss over a known count (gradient accumulation), the same too
    n = torch.tensor(learnt + 7)
    a = model(**batch, use_cache=False, num_items_in_batch=n).loss
    b = model(**learnt_logits_only(batch), use_cache=False, num_items_in_batch=n).loss
    assert b.item() == pytest.approx(a.item(), abs=1e-6) and a.item() != pytest.approx(whole, abs=1e-3)


def test_a_patched_forward_keeps_the_whole_logits(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert takes_logits_mask(model)

    def forward(self, input_ids=None, labels=None, logits_to_keep=0, **kwargs):  # as Liger's lce_forward replaces it
        raise AssertionError

    patched = type("Patched", (type(model),), {"forward": forward, "__module__": type(model).__module__})
    model.__class__ = patched
    assert not takes_logits_mask(model)
