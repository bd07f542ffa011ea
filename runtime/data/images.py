"""Images in chat data: where a row's images are, whether they open, and how big they get.

A row names its images three ways, all read into one shape (`<image>` placeholders in the text, in order, and
the row's list of image references):

    LLaMA-Factory / ShareGPT   "<image>Who is this?" in a turn, and an `images` list of paths (relative to the
                               data file's folder or the dataset_dir)
    OpenAI content parts       {"type": "image_url", "image_url": {"url": ...}}: a local path, a file: URL or a
                               data: URL (base64)

A reference is kept as an absolute path or a data: URL. Pillow opens them; nothing here imports torch.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

PLACEHOLDER = "<image>"


def placeholders(text: str) -> int:
    return text.count(PLACEHOLDER)


def resolve(ref: Any, folders: list[Path]) -> str:
    """An image reference as an absolute path (found in the first folder that has it) or a data: URL.
    Raises ValueError naming what is wrong."""
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"must be a file path or a data: URL, not {ref!r}")
    if ref.startswith("data:"):
        return ref
    if ref.startswith("file:"):
        ref = unquote(urlparse(ref).path)
    elif "://" in ref:
        raise ValueError(f"{ref!r} is a web address; images are read from local files or data: URLs (offline)")
    p = Path(ref).expanduser()
    candidates = [p] if p.is_absolute() else [f / p for f in folders]
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    where = " or ".join(str(f) for f in folders) if not p.is_absolute() else ""
    raise ValueError(f"{ref!r} not found" + (f" (looked in {where})" if where else ""))


def _data_bytes(url: str) -> bytes:
    head, _, payload = url.partition(",")
    if not head.startswith("data:image/") or ";base64" not in head:
        raise ValueError("a data: URL must be data:image/...;base64,...")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data: URL's base64 does not decode") from None


def _open(ref: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(_data_bytes(ref)) if ref.startswith("data:") else ref)
    except (UnidentifiedImageError, OSError) as e:
        what = "the data: URL" if ref.startswith("data:") else ref
        raise ValueError(f"{what} is not an image Pillow can open ({type(e).__name__})") from None


def image_size(ref: str) -> tuple[int, int]:
    """(width, height) from the file's header: cheap, and it finds files that are not images."""
    with _open(ref) as img:
        return img.size


def fit_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The size an image is resized to so that its area lies within [min_pixels, max_pixels], aspect kept
    (LLaMA-Factory's image_max_pixels / image_min_pixels): memory per image is then bounded."""
    area = width * height
    scale = math.sqrt(max_pixels / area) if area > max_pixels else math.sqrt(min_pixels / area) if area < min_pixels else 1
    return max(1, int(width * scale)), max(1, int(height * scale))


def open_image(ref: str, min_pixels: int, max_pixels: int):
    """The image as RGB, resized into the pixel limits."""
    img = _open(ref)
    try:
        img.load()
    except OSError as e:
        raise ValueError(f"{ref if not ref.startswith('data:') else 'the data: URL'} is a broken image ({e})") from None
    img = img.convert("RGB")
    size = fit_size(*img.size, min_pixels, max_pixels)
    return img.resize(size) if size != img.size else img


def from_parts(content: list, what: str, folders: list[Path]) -> tuple[str, list[str]]:
    """OpenAI content parts as text with `<image>` placeholders, and the image references in order."""
    text, refs = [], []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or "type" not in part:
            raise ValueError(f"{what} part {j + 1} must be an object with a 'type'")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{what} part {j + 1} (text) needs a 'text' string")
            text.append(part["text"])
        elif part["type"] in ("image_url", "image"):
            url = part.get("image_url", part.get("image"))
            url = url.get("url") if isinstance(url, dict) else url
            try:
                refs.append(resolve(url, folders))
            except ValueError as e:
                raise ValueError(f"{what} part {j + 1}: image {e}") from None
            text.append(PLACEHOLDER)
        else:
            raise ValueError(f"{what} part {j + 1} has type {part['type']!r}; use text or image_url")
    return "".join(text), refs


def to_parts(text: str) -> str | list[dict[str, str]]:
    """Text with `<image>` placeholders as the content parts a processor's chat template reads; plain text
    stays a string."""
    if PLACEHOLDER not in text:
        return text
    parts: list[dict[str, str]] = []
    for i, piece in enumerate(text.split(PLACEHOLDER)):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def attach_images(messages: list[dict[str, str]], refs: list[str]) -> list[dict[str, Any]]:
    """Each turn with the images its placeholders stand for (an `images` list), as chat, serve and eval pass
    conversations to generation."""
    out, k = [], 0
    for m in messages:
        n = placeholders(m["content"])
        out.append({**m, "images": refs[k:k + n]} if n else dict(m))
        k += n
    return out


def images_of(messages: list[dict[str, Any]]) -> list[str]:
    return [ref for m in messages for ref in m.get("images") or []]
