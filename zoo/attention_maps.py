"""What the heads attend to: attention maps of any zoo model as PNG heatmaps and one HTML page.

``model(..., output_attentions=True)`` gives the weights (see zoo.modeling.AttentionRecorder);
this module labels them with tokens (or patches), draws them with matplotlib, computes attention
rollout for vision models (Abnar & Zuidema 2020), and writes a self-contained page to browse
every layer and head. `zoo attention` is its command line.
"""

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class AttentionMaps:
    """One input's attention weights, every layer, without the batch dimension.

    Attributes:
        layers: one (n_heads, T, S) tensor per self-attention layer.
        queries: a label per query position (tokens, or ``[CLS]`` and ``patch r,c``).
        keys: a label per key position (the same as ``queries`` for self-attention).
        grid: (rows, cols) of the patch grid for an image model, else None.
    """

    layers: list[torch.Tensor]
    queries: list[str]
    keys: list[str]
    grid: tuple[int, int] | None = None

    def check(self, layer: int, head: int | None = None) -> None:
        if not -len(self.layers) <= layer < len(self.layers):
            raise ValueError(f"--layer: the model has {len(self.layers)} attention layers (0..{len(self.layers) - 1})")
        n_heads = self.layers[layer].shape[0]
        if head is not None and not 0 <= head < n_heads:
            raise ValueError(f"--head: layer {layer} has {n_heads} heads (0..{n_heads - 1})")


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Readable text of each token: its decoded piece, with a visible mark for a leading space."""
    labels = []
    for i in ids:
        piece = tokenizer.decode([i], skip_special_tokens=False)
        if not piece.strip():
            piece = tokenizer.backend.id_to_token(i) or repr(piece)
        labels.append(("_" + piece.lstrip()) if piece.startswith(" ") else piece)
    return labels


@torch.no_grad()
def text_attention(model, tokenizer, text: str) -> AttentionMaps:
    """Attention maps of ``model`` on ``text``, one row, labelled with the tokenizer's pieces."""
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("--text: the tokenizer gives no tokens for this text")
    max_len = getattr(model.config, "max_seq_len", None)
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"--text: {len(ids)} tokens is longer than the model's max_seq_len={max_len}")
    out = model(torch.tensor([ids]), output_attentions=True)
    labels = token_labels(tokenizer, ids)
    return AttentionMaps([a[0].float() for a in out.attentions], labels, labels)


@torch.no_grad()
def image_attention(model, pixel_values: torch.Tensor) -> AttentionMaps:
    """Attention maps of a vision model on one image (1, C, H, W) already preprocessed."""
    out = model(pixel_values=pixel_values, output_attentions=True)
    patch = model.config.patch_size
    rows, cols = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    n = out.attentions[0].shape[-1]
    extra = n - rows * cols  # the class token (and any other prefix tokens) come first
    labels = ["[CLS]" if i == 0 else f"prefix {i}" for i in range(extra)]
    labels += [f"patch {r},{c}" for r in range(rows) for c in range(cols)]
    return AttentionMaps([a[0].float() for a in out.attentions], labels, labels, grid=(rows, cols))


def attention_rollout(layers: list[torch.Tensor], residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much each input position flows into each
    output position through all layers. Heads are averaged, the residual connection is counted
    as half of each layer's mixing (0.5 A + 0.5 I, rows renormalised), and layers multiply.
    Returns (T, S)."""
    result = None
    for a in layers:
        a = a.mean(dim=0)  # (T, S) averaged over heads
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
            a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def plot_heads(maps: AttentionMaps, layer: int, path: str | Path) -> Path:
    """One layer's heads as a grid of heatmaps (rows are queries, columns keys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps.check(layer)
    weights = maps.layers[layer]
    rows, cols = _grid(weights.shape[0])
    side = 2.2 + 0.12 * len(maps.keys)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * side, rows * side), squeeze=False)
    labelled = len(maps.keys) <= 40
    for h, ax in enumerate(axes.flat):
        if h >= weights.shape[0]:
            ax.axis("off")
            continue
        ax.imshow(weights[h].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {h}", fontsize=9)
        if labelled:
            ax.set_xticks(range(len(maps.keys)), maps.keys, rotation=90, fontsize=6)
            ax.set_yticks(range(len(maps.queries)), maps.queries, fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"layer {layer}: attention weights per head (rows: queries, columns: keys)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_head(maps: AttentionMaps, layer: int, head: int, path: str | Path) -> Path:
    """One head large, every cell labelled by its query and key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps.check(layer, head)
    w = maps.layers[layer][head].numpy()
    side = 3 + 0.3 * len(maps.keys)
    fig, ax = plt.subplots(figsize=(min(side, 30), min(side, 30)))
    im = ax.imshow(w, cmap="viridis", vmin=0, vmax=1)
    if len(maps.keys) <= 80:
        ax.set_xticks(range(len(maps.keys)), maps.keys, rotation=90, fontsize=8)
        ax.set_yticks(range(len(maps.queries)), maps.queries, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(f"layer {layer}, head {head}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_rollout(maps: AttentionMaps, image: torch.Tensor, path: str | Path) -> Path:
    """The class token's attention rollout over the patches, overlaid on the image (3, H, W) in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if maps.grid is None:
        raise ValueError("rollout overlay: needs an image model's maps (with a patch grid)")
    rows, cols = maps.grid
    flow = attention_rollout(maps.layers)[0, -rows * cols :].reshape(1, 1, rows, cols)  # class token's row
    flow = torch.nn.functional.interpolate(flow, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    flow = (flow - flow.min()) / (flow.max() - flow.min() + 1e-12)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0].set_title("input")
    axes[1].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    axes[1].imshow(flow.numpy(), cmap="jet", alpha=0.5)
    axes[1].set_title("attention rollout of the class token")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: sans-serif; margin: 1em; }
table.map { border-collapse: collapse; font-size: 11px; }
table.map td { width: 18px; height: 18px; padding: 0; }
table.map th { font-weight: normal; white-space: nowrap; padding: 0 4px; }
table.map th.key { writing-mode: vertical-rl; transform: rotate(180deg); height: 80px; }
#controls { margin-bottom: 1em; }
</style></head>
<body>
<h1>__TITLE__</h1>
<div id="controls">
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <span id="caption"></span>
</div>
<table class="map" id="map"></table>
<script id="data" type="application/json">__DATA__</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
function option(sel, i) {
  const o = document.createElement("option"); o.value = i; o.textContent = i; sel.appendChild(o);
}
data.layers.forEach((_, i) => option(layerSel, i));
function fillHeads() {
  headSel.innerHTML = "";
  data.layers[layerSel.value].forEach((_, h) => option(headSel, h));
}
function color(w) {  // white (0) to dark blue (1)
  const c = Math.round(255 * (1 - w));
  return "rgb(" + c + "," + c + "," + 255 + ")";
}
function draw() {
  const l = +layerSel.value, h = +headSel.value, w = data.layers[l][h], table = document.getElementById("map");
  table.innerHTML = "";
  const head = table.insertRow(); head.appendChild(document.createElement("th"));
  data.keys.forEach(k => {
    const th = document.createElement("th"); th.className = "key"; th.textContent = k; head.appendChild(th);
  });
  w.forEach((row, q) => {
    const tr = table.insertRow(), th = document.createElement("th");
    th.textContent = data.queries[q]; tr.appendChild(th);
    row.forEach((v, k) => {
      const td = tr.insertCell(); td.style.background = color(v);
      td.title = data.queries[q] + " -> " + data.keys[k] + ": " + v.toFixed(3);
      td.dataset.weight = v;
    });
  });
  document.getElementById("caption").textContent = "layer " + l + ", head " + h;
}
layerSel.onchange = () => { fillHeads(); draw(); location.hash = "layer=" + layerSel.value + "&head=0"; };
headSel.onchange = () => { draw(); location.hash = "layer=" + layerSel.value + "&head=" + headSel.value; };
// A link can open one map: attention.html#layer=2&head=5
const wanted = new URLSearchParams(location.hash.slice(1));
if (wanted.has("layer") && +wanted.get("layer") < data.layers.length) layerSel.value = wanted.get("layer");
fillHeads();
if (wanted.has("head") && +wanted.get("head") < data.layers[layerSel.value].length) headSel.value = wanted.get("head");
draw();
</script>
</body></html>
"""


def write_html(maps: AttentionMaps, path: str | Path, title: str = "attention maps") -> Path:
    """A single HTML file (data embedded, no network, no server) to browse every layer and head:
    pick a layer and a head, hover a cell for its query, key and weight."""
    data = {
        "queries": maps.queries,
        "keys": maps.keys,
        "layers": [[[[round(float(v), 4) for v in row] for row in head] for head in layer] for layer in maps.layers],
    }
    # "</" cannot end the script element early once escaped; the JSON stays valid.
    payload = json.dumps(data).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def load_image(path: str | Path, image_size: int, checkpoint: str | Path | None = None):
    """An image file -> (pixel_values (1, C, S, S) normalised, the cropped image (3, S, S) in [0, 1]).

    Resized on its shorter side and center-cropped to the model's size; mean and std come from
    the checkpoint's preprocessor_config.json where it has one, else 0.5 (ViT's usual)."""
    from PIL import Image
    from torchvision.transforms import v2

    mean, std = [0.5] * 3, [0.5] * 3
    config = Path(checkpoint) / "preprocessor_config.json" if checkpoint and Path(checkpoint).is_dir() else None
    if config is not None and config.exists():
        pre = json.loads(config.read_text())
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    try:
        image = Image.open(path).convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"--image: cannot read {path}: {e}") from e
    crop = v2.Compose([v2.ToImage(), v2.Resize(image_size), v2.CenterCrop(image_size), v2.ToDtype(torch.float32, True)])
    shown = crop(image)
    return v2.Normalize(mean, std)(shown)[None], shown
