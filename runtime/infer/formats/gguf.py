"""gguf: merged, then one .gguf file for llama.cpp, Ollama and LM Studio, written by llama.cpp's own converter
(infer/export.py's gguf pipeline and infer/gguf_export.py). The worker keeps the adapter in export/ and
train/after.py writes the file from it."""

from ftune.runtime.infer.formats.format import ExportFormat

FORMAT = ExportFormat(
    name="gguf", summary="merged, one .gguf file for llama.cpp, Ollama, LM Studio, and an Ollama Modelfile",
    write=None, worker_saves="lora", requires="convert_hf_to_gguf",  # llama.cpp's converter
    text_only="gguf is for text models (llama.cpp keeps an image encoder in a separate mmproj file that ftune does "
              "not write): use lora or merged_16bit",
)
