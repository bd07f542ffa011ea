"""How sft and pt rows become batches: padding-free where the model's attention allows it, and a token budget.

Padding-free: TRL's collator lays a batch's rows end to end in one sequence, with position_ids restarting at 0 for
each row and the first label of each row masked. transformers (masking_utils.find_packed_sequence_indices) turns
restarting position_ids into a block-diagonal causal mask for eager and sdpa, and flash_attention_2 reads the
boundaries (cu_seq_lens) for its varlen kernel, so no row attends to another and the loss per token is the padded
batch's. That holds for models whose modeling code builds its masks with transformers' mask functions; for others
(remote code, older designs) the rows are padded as before. Imported by the worker only.
"""

from __future__ import annotations

import inspect
import random
import sys
from collections.abc import Iterator, Sequence
from itertools import pairwise

import torch

BY_ROW = "sdpa_by_row"
HUB_FLASH = "kernels-community/flash-attn2"  # FlashAttention-2 from the hub, through the `kernels` package
# attention implementations whose masks come from position_ids when there is no attention_mask
PACKED_ATTENTION = ("eager", "sdpa", BY_ROW, "flash_attention_2", "flash_attention_3", "flex_attention", HUB_FLASH)
# those that read the rows' bounds (cu_seq_lens) in a variable-length kernel: no work across rows
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", HUB_FLASH)
MASK_BUILDERS = ("create_causal_mask", "create_sliding_window_causal_mask", "create_masks_for_generate")


def padding_free_blocker(model) -> str | None:
    """Why this model cannot train padding-free (None when it can): its attention must build the mask from
    position_ids, which transformers' own mask functions do."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    impl = getattr(base.config, "_attn_implementation", None)
    if impl not in PACKED_ATTENTION:
        return f"attention {impl} does not separate packed rows"
    if "position_ids" not in inspect.signature(base.forward).parameters:
        return f"{type(base).__name__} takes no position_ids"
    module = sys.modules.get(type(base).__module__)
    try:
        source = inspect.getsource(module) if module else ""
    except (OSError, TypeError):
        source = ""
    if not any(name in source for name in MASK_BUILDERS):
        return f"{type(base).__name__} builds its own attention mask"
    return None


def row_lengths(dataset) -> list[int]:
    """Tokens per row, read from the Arrow column without building the rows in Python."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_pylist()


def sdpa_by_row(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """transformers' sdpa, one causal call per row of a padding-free batch (the rows' bounds come from TRL's
    collator as cu_seq_lens_q). sdpa over the whole packed sequence under a block-diagonal mask computes every
    row against every other and throws it away: on a CPU that made padding-free slower than padding. Anything
    else (generation, evaluation with padding) is plain sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = _row_bounds(cu_seq_lens_q)
    kwargs.pop("is_causal", None)
    rows = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                   is_causal=True, **kwargs)[0] for a, b in pairwise(bounds) if b > a]
    return torch.cat(rows, dim=1), None


_last_bounds: tuple[torch.Tensor | None, list[int]] = (None, [])


def _row_bounds(cu_seq_lens: torch.Tensor) -> list[int]:
    """The rows' bounds as numbers, read once per batch: every layer gets the same tensor, and reading it is a
    device sync on a GPU. The cache holds the tensor itself, so its identity cannot pass to another batch's."""
    global _last_bounds
    if _last_bounds[0] is not cu_seq_lens:
        _last_bounds = (cu_seq_lens, cu_seq_lens.tolist())
    return _last_bounds[1]


def padding_free_attention(model, cuda: bool, packing: bool = False) -> str | None:
    """Make the model's attention keep a padding-free batch's rows apart without work across them; None when it
    does, else why the rows should be padded. On a CPU: sdpa one row at a time (sdpa_by_row). On a GPU, a
    variable-length kernel: FlashAttention-2 (or 3) as loaded (train/model.py picks it when installed), else
    FlashAttention-2 from the hub through the `kernels` package when it can be had; never sdpa_by_row there (a
    Python loop over rows and layers, measured on a CPU only). Packing (the rows fill max_length) keeps sdpa's
    block-diagonal mask on a GPU without such a kernel: correct, and it was asked for."""
    import importlib.util

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    impl = base.config._attn_implementation
    if not cuda:
        attend_by_row(model)
        return None
    if impl in VARLEN_ATTENTION:
        return None
    if importlib.util.find_spec("kernels") is None:
        why = "FlashAttention-2 is not installed (pip install flash-attn, or 'ftune[gpu]' to fetch it with kernels)"
    else:
        try:
            base.set_attn_implementation(HUB_FLASH)
            return None
        except Exception as e:  # offline, no build for this GPU, fp32 weights: pad instead
            why = f"the kernels package could not load {HUB_FLASH} ({str(e).splitlines()[0][:200]})"
    return None if packing else f"on a GPU it needs a variable-length attention kernel, and {why}"


def attend_by_row(model) -> bool:
    """Switch a model on sdpa to sdpa_by_row for padding-free training; False where it runs another attention
    (FlashAttention-2 has its own variable-length kernel; eager was asked for)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(BY_ROW, sdpa_by_row)
    AttentionMaskInterface.register(BY_ROW, sdpa_mask)  # the mask generation and padded batches need
    base.set_attn_implementation(BY_ROW)
    return True


class TokenBudgetBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of whole rows holding at most `budget` tokens each (a longer row alone).

    The batches are made once, from one shuffle (or in order), so every epoch has the same number of steps, which
    the learning-rate schedule and resuming count on; each epoch then visits them in its own order. With padding,
    a batch costs its longest row times its rows, and that is what the budget counts.
    """

    def __init__(self, lengths: Sequence[int], budget: int, shuffle: bool = True, seed: int = 42,
                 padded: bool = False):
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        order = list(range(len(lengths)))
        if shuffle:
            random.Random(seed).shuffle(order)
        self.batches: list[list[int]] = []
        batch: list[int] = []
        longest = total = 0
        for i in order:
            n = lengths[i]
            cost = max(longest, n) * (len(batch) + 1) if padded else total + n
            if batch and cost > budget:
                self.batches.append(batch)
                batch, longest, total = [], 0, 0
            batch.append(i)
            longest, total = max(longest, n), total + n
        if batch:
            self.batches.append(batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed + 1 + self.epoch).shuffle(order)
        return (self.batches[i] for i in order)

    def __len__(self) -> int:
        return len(self.batches)
