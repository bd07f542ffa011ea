"""bitsandbytes on a CPU, for real: QLoRA 4-bit (nf4 and fp4, with and without double quantisation) and 8-bit, the
8-bit and paged optimisers, a merged_4bit export that reloads and generates, and quantised reference models. Each
trains the tiny model through the worker; nothing is faked."""

import json

import pytest

from ftune.runtime.spec import load_spec
from tests.runtime.helpers import make_run, of_type, train_to_end

pytest.importorskip("bitsandbytes")


def losses(events):
    return [s["loss"] for s in of_type(events, "step")]


def fell(values):
    """The loss fell: the mean of the last three steps below the first step's."""
    return sum(values[-3:]) / 3 < values[0]


def quantized_linears(model) -> dict[str, int]:
    import bitsandbytes as bnb

    kinds = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}
    return {k: sum(isinstance(m, cls) for m in model.modules()) for k, cls in kinds.items()}


def test_qlora_4bit_nf4_paged_optimiser_resumes_and_exports_merged_4bit(project, tiny_model):
    """nf4 with double quantisation and paged 8-bit AdamW: stops at a checkpoint, resumes from it, ends with a
    merged_4bit export that plain transformers reloads in 4 bits and that generates."""
    from ftune.runtime.infer.export import ExportError, export_run, load_exported
    from ftune.runtime.rundir import RunDir

    run = make_run(project, tiny_model, method={"quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True}},
                   training={"max_steps": 6, "save_steps": 3, "optim": "paged_adamw_8bit"},
                   output={"save_format": "merged_4bit"})
    first = train_to_end(run)
    assert first[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    started = of_type(first, "started")[0]
    assert started["method"] == "qlora-4bit" and started["precision"] == "fp32"
    assert fell(losses(first)), losses(first)
    # two more steps, continued from the last checkpoint: the adapter and the paged optimiser's state reload
    run.spec_path.write_text(run.spec_path.read_text().replace("max_steps: 6", "max_steps: 8"))
    second = train_to_end(run, resume=True)
    assert second[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    assert of_type(second, "started")[-1]["resumed_from"] == 6
    assert [s["step"] for s in of_type(second, "step")][-2:] == [7, 8]
    assert losses(second)[-1] < losses(first)[0]

    config = json.loads((run.export_dir() / "config.json").read_text())["quantization_config"]
    assert config["load_in_4bit"] and config["bnb_4bit_quant_type"] == "nf4"
    spec = load_spec(run.spec_path)
    import torch

    model = load_exported(run.export_dir(), "merged_4bit", spec, RunDir(project / "runs", run.name), torch.float32)
    assert quantized_linears(model)["4bit"] == 14  # every projection of both layers, in 4 bits
    # `ftune export` from the last checkpoint (its adapter on the base): writes, reloads, compares, generates
    result = export_run(run, "merged_4bit", checkpoint=8, out=project / "again")
    assert result.check["generated_tokens"] >= 1 and result.dtype.startswith("4-bit")
    with pytest.raises(ExportError, match="quantised to 4 bits"):  # the 4-bit export is not a source
        export_run(run, "merged_16bit", out=project / "from-4bit")


@pytest.mark.parametrize("quantization,optim", [
    ({"bits": 4, "quant_type": "fp4", "double_quant": False}, "adamw_8bit"),
    ({"bits": 8}, "paged_adamw_32bit"),
])
def test_qlora_fp4_and_8bit_train_with_the_bitsandbytes_optimisers(project, tiny_model, quantization, optim):
    from ftune.runtime.train.recipe import setup  # noqa: F401 - the worker's stack, imported once by the zygote

    run = make_run(project, tiny_model, method={"quantization": quantization},
                   training={"max_steps": 6, "save_steps": 100, "optim": optim})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    assert fell(losses(events)), losses(events)
    assert of_type(events, "started")[0]["method"] == f"qlora-{quantization['bits']}bit"
    assert (run.export_dir() / "adapter_config.json").is_file()
