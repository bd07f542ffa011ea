"""Image rows in chat data (runtime/data/images.py, formats.py): the three formats, the checks, `ftune data check`.
No model: these read files and image headers only."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime.data.check import check
from ftune.runtime.data.formats import Source, load_source, registry_sources
from ftune.runtime.data.images import fit_size, open_image
from tests.conftest import shared_mllm_demo, write_colour_images


def rows_file(tmp_path: Path, rows: list[dict]) -> Path:
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def turn(content, answer="It is red.") -> list[dict]:
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


def test_llamafactory_sample_reads_with_its_images_and_sizes():
    folder = shared_mllm_demo()
    (src,) = registry_sources(folder, ["mllm_demo"])
    loaded = load_source(src)
    assert (loaded.total, loaded.invalid, loaded.formatting) == (6, 0, "sharegpt")
    first = loaded.examples[0]
    # relative to the dataset_dir, which is read resolved (../shared may be a link to the data)
    assert first.images == [str(folder.resolve() / "mllm_demo_data" / "1.jpg")] * 2
    assert first.messages[0]["content"].count("<image>") == 1 and first.image_sizes[0] == (300, 168)
    report = check("mllm_demo", dataset_dir=str(folder)).to_dict()
    assert (report["images"], report["image_rows"]) == (8, 6)
    assert report["resolutions"] == {"smallest": "300x166", "median": "300x168", "largest": "300x199"}


def test_three_formats_give_the_same_example(tmp_path):
    data = write_colour_images(tmp_path / "imgs", 1)  # OpenAI parts with a path relative to the file
    png = tmp_path / "imgs" / "0.png"
    b64 = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    openai = rows_file(tmp_path, [
        {"messages": turn("<image>What colour is this?"), "images": [str(png)]},  # LLaMA-Factory, OpenAI roles
        {"messages": turn([{"type": "image_url", "image_url": {"url": png.as_uri()}},  # file: URL
                           {"type": "text", "text": "What colour is this?"}])},
        {"messages": turn([{"type": "image_url", "image_url": {"url": b64}},  # data: URL
                           {"type": "text", "text": "What colour is this?"}])},
    ])
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": "<image>What colour is this?"},
                                                        {"from": "gpt", "value": "It is red."}],
                                     "images": ["imgs/0.png"]}]))
    examples = [ex for f in (data, openai, sharegpt) for ex in load_source(Source(f)).examples]
    assert len(examples) == 5
    for ex in examples:
        assert ex.messages == turn("<image>What colour is this?")
        assert len(ex.images) == 1 and ex.image_sizes == [(56, 56)]
    assert {ex.images[0] for ex in examples if not ex.images[0].startswith("data:")} == {str(png)}
    data_url = examples[3].images[0]
    assert data_url == b64 and open_image(data_url, 1, 10**6).getpixel((0, 0)) == (220, 30, 30)


def test_bad_images_are_named_by_file_row_and_index(tmp_path):
    good = write_colour_images(tmp_path, 1).parent / "0.png"
    (tmp_path / "broken.jpg").write_text("not a picture")
    p = rows_file(tmp_path, [
        {"messages": turn("<image>A<image>"), "images": [str(good), "gone.png"]},
        {"messages": turn("<image>A"), "images": [str(good), str(good)]},
        {"messages": turn("<image>A"), "images": ["broken.jpg"]},
        {"messages": turn([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}])},
        {"messages": turn([{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}])},
    ])
    errors = check(str(p)).summary.errors
    assert errors[0] == f"{p}:1: image 2: 'gone.png' not found (looked in {tmp_path})"
    assert errors[1] == (f"{p}:2: 1 <image> placeholder but 2 images: put one <image> in the text where each "
                         f"image goes")
    assert errors[2] == f"{p}:3: image 1: {tmp_path / 'broken.jpg'} is not an image Pillow can open " \
                        f"(UnidentifiedImageError)"
    assert errors[3] == f"{p}:4: image 1: the data: URL's base64 does not decode"
    assert "web address" in errors[4]


def test_data_check_prints_images(tmp_path):
    data = write_colour_images(tmp_path, 4)
    out = CliRunner().invoke(main, ["data", "check", str(data)])
    assert out.exit_code == 0, out.output
    assert "images   4 in 4 rows, every one found and opening; sizes 56x56 (smallest), 84x56 (median), " \
           "84x56 (largest)" in out.output


def test_pixel_limits_keep_the_aspect():
    assert fit_size(300, 168, 32 * 32, 112 * 112) == (149, 83)
    assert fit_size(10, 20, 28 * 28, 10**6) == (19, 39)
    assert fit_size(100, 100, 1, 10**6) == (100, 100)
