"""Named chat templates (Jinja, the format tokenizers carry), for `model.template`.

`auto` keeps the tokenizer's own template (ChatML when it has none). A named template replaces
it for training and is saved with the exported tokenizer, so chat and serve render exactly what
training saw. Names follow LLaMA-Factory's where it has one. Every template renders history
unchanged when a turn is added (the loss mask relies on it; a test checks each one) and ends
each answer with its end-of-turn marker so the model learns to stop.

Roles: system, user, assistant, tool. Templates without a system slot put it before the first
user turn; tool results are shown as user-side turns.
"""

from __future__ import annotations


def _simple(system: str, user: str, assistant: str, tool: str, generation: str, prefix: str = "") -> str:
    """A template from per-role formats; `{c}` stands for the message content."""
    def fmt(pattern: str) -> str:
        body = pattern.replace("'", "\\'").replace("\n", "\\n")
        body = body.replace("{c}", "' + message['content'] + '").replace("{eos}", "' + eos_token + '")
        return "{{ '" + body + "' }}"

    return (
        (("{{ " + prefix + " }}") if prefix else "")
        + "{% for message in messages %}"
        + "{% if message['role'] == 'system' %}" + fmt(system)
        + "{% elif message['role'] == 'user' %}" + fmt(user)
        + "{% elif message['role'] == 'assistant' %}" + fmt(assistant)
        + "{% else %}" + fmt(tool)
        + "{% endif %}{% endfor %}"
        + "{% if add_generation_prompt %}" + fmt(generation) + "{% endif %}"
    )


_EOS = "{eos}"  # the tokenizer's end-of-sequence token

# ChatML that also renders tools the way Qwen2.5 does (its tool format, without its default system prompt): the
# tool list in the system turn, calls as <tool_call>{"name", "arguments"}</tool_call>, results in tool turns. Without
# tools it renders exactly as plain ChatML.
CHATML = (
    "{%- if tools %}{{ '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{ '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
    "\\n</tool_call><|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first and tools %}"
    "{%- elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] or [] %}{%- if message['content'] or not loop.first %}{{ '\\n' }}{%- endif %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{ '<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}"
    "{%- if fn['arguments'] is string %}{{ fn['arguments'] }}{%- else %}{{ fn['arguments'] | tojson }}{%- endif %}"
    "{{ '}\\n</tool_call>' }}{%- endfor %}{{ '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOOL_TEMPLATES = ("chatml",)  # named templates that render tools (qwen and the other ChatML names alias chatml)

# What a tokenizer without a chat template of its own gets under `template: auto` (a base model): ChatML, with
# `{% generation %}` markers around the answers for tools that read them.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "llama3": _simple(
        "<|start_header_id|>system<|end_header_id|>\n\n{c}<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n{c}<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n{c}<|eot_id|>",
        "<|start_header_id|>ipython<|end_header_id|>\n\n{c}<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n", prefix="'<|begin_of_text|>'"),
    "llama2": _simple("<<SYS>>\n{c}\n<</SYS>>\n\n", "[INST] {c} [/INST]", " {c} " + _EOS, "[INST] {c} [/INST]", ""),
    "mistral": _simple("{c}\n\n", "[INST] {c}[/INST]", " {c}" + _EOS, "[TOOL_RESULTS] {c}[/TOOL_RESULTS]", ""),
    "gemma": _simple("<start_of_turn>user\n{c}<end_of_turn>\n", "<start_of_turn>user\n{c}<end_of_turn>\n",
                     "<start_of_turn>model\n{c}<end_of_turn>\n", "<start_of_turn>user\n{c}<end_of_turn>\n",
                     "<start_of_turn>model\n", prefix="bos_token"),
    "glm4": _simple("<|system|>\n{c}", "<|user|>\n{c}", "<|assistant|>\n{c}" + _EOS, "<|observation|>\n{c}",
                    "<|assistant|>\n", prefix="'[gMASK]<sop>'"),
    "deepseek": _simple("{c}\n\n", "User: {c}\n\n", "Assistant: {c}" + _EOS, "User: {c}\n\n", "Assistant:"),
    "deepseekr1": _simple("{c}", "<｜User｜>{c}", "<｜Assistant｜>{c}<｜end▁of▁sentence｜>", "<｜User｜>{c}",
                          "<｜Assistant｜>", prefix="'<｜begin▁of▁sentence｜>'"),
    "phi": _simple("<|system|>\n{c}<|end|>\n", "<|user|>\n{c}<|end|>\n", "<|assistant|>\n{c}<|end|>\n",
                   "<|user|>\n{c}<|end|>\n", "<|assistant|>\n"),
    "phi4": _simple("<|im_start|>system<|im_sep|>{c}<|im_end|>", "<|im_start|>user<|im_sep|>{c}<|im_end|>",
                    "<|im_start|>assistant<|im_sep|>{c}<|im_end|>", "<|im_start|>tool<|im_sep|>{c}<|im_end|>",
                    "<|im_start|>assistant<|im_sep|>"),
    "baichuan2": _simple("{c}", "<reserved_106>{c}", "<reserved_107>{c}" + _EOS, "<reserved_106>{c}",
                         "<reserved_107>"),
    "falcon": _simple("System: {c}\n", "User: {c}\n", "Falcon: {c}" + _EOS + "\n", "User: {c}\n", "Falcon:"),
    "alpaca": _simple("{c}\n\n", "### Instruction:\n{c}\n\n", "### Response:\n{c}" + _EOS + "\n\n",
                      "### Input:\n{c}\n\n", "### Response:\n"),
    "vicuna": _simple("{c} ", "USER: {c} ", "ASSISTANT: {c}" + _EOS, "USER: {c} ", "ASSISTANT:"),
    "default": _simple("System: {c}\n", "Human: {c}\n", "Assistant: {c}" + _EOS + "\n", "Human: {c}\n",
                       "Assistant:"),
}
# Qwen2-VL's and Qwen2.5-VL's own template (their processors'): content parts, images as vision tokens. A
# vision-language model renders images with it; with text only it is ChatML with a default system prompt.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATES["qwen2_vl"] = QWEN2_VL_TEMPLATE
VISION_TEMPLATES = ("qwen2_vl",)  # templates that render images (content parts)
ALIASES = {"qwen": "chatml", "qwen3": "chatml", "yi": "chatml", "intern2": "chatml", "internlm2": "chatml",
           "llama3.1": "llama3", "llama3.2": "llama3", "mixtral": "mistral", "gemma2": "gemma", "gemma3": "gemma",
           "phi3": "phi"}
NAMES = sorted([*TEMPLATES, *ALIASES])

# End-of-turn markers of the common templates: generation stops at those the vocabulary has as single tokens, and an
# answer's learnt span ends with the first one it renders (Llama 3.1's <|eom_id|> ends a built-in tool call).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|user|>", "<|observation|>",
               "<|endoftext|>", "<｜end▁of▁sentence｜>", "</s>")


def get(name: str) -> str:
    """The Jinja text of a named template; KeyError for an unknown name."""
    return TEMPLATES[ALIASES.get(name, name)]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """End-of-sequence ids: the tokenizer's and the model's, plus known end-of-turn tokens it has."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN if t in vocab]
    return list(dict.fromkeys(i for i in ids if i is not None))
