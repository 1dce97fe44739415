"""Figures for the report as base64 PNG strings, byte-stable for the same inputs.

Matplotlib's object API (no pyplot state, nothing to close) and PNG only, saved without the Software text
chunk (Agg output is otherwise a pure function of the data; SVG would need svg.hashsalt and a date), so two
renders of the same run give identical bytes. User text goes through `_txt`, so a `$` in a class name is not
parsed as mathtext. Figures are saved to their drawn extent (`bbox_inches="tight"`), so long tick labels are
never clipped; characters the default font lacks (CJK class names) are drawn from an installed font that has
them (`fallback_fonts`), else as boxes, without a warning per glyph: the page says so (`undrawable`).
"""

from __future__ import annotations

import base64
import functools
import io
import warnings
from pathlib import Path

import numpy as np

from ..errors import DiffdiscError
from .stats import pct

MAX_TICKS = 30  # more classes than this: no tick labels or cell counts on the confusion matrix
LABEL_CHARS = 40  # tick labels and legend entries longer than this end in "…"
TITLE_CHARS = 80
NOT_TEXT_FONTS = ("Last Resort",)  # matplotlib's placeholder font: a box for every code point, not letters


def _figure(w: float, h: float):
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, nothing to close

    return Figure(figsize=(w, h))


def fig_png(fig, dpi: int = 80) -> str:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # a glyph no installed font has is drawn as a box; the page notes it once
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        use_fallback_fonts(fig)
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.05)
    return base64.b64encode(buf.getvalue()).decode()


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError):
        return frozenset()


@functools.cache
def _fonts_for(chars: frozenset[str]) -> tuple[tuple[str, ...], frozenset[str]]:
    """(installed families that draw the `chars` the default font lacks, greedily fewest; chars none has)."""
    from matplotlib import font_manager as fm

    default = fm.findfont(fm.FontProperties())
    need = {c for c in chars if not c.isspace() and ord(c) not in _charmap(default)}
    if not need:
        return (), frozenset()
    regular = ("normal", 400, "normal")  # families with a regular face: matplotlib substitutes no weight for them
    names = sorted({f.name for f in fm.fontManager.ttflist
                    if (f.style, f.weight, f.stretch) == regular and not f.name.startswith(NOT_TEXT_FONTS)})  # fmt: skip
    # a family's glyphs are those of the file matplotlib picks for it (several files may share a name)
    paths = [fm.findfont(fm.FontProperties(family=n), fallback_to_default=False) for n in names]
    fonts = [(n, p) for n, p in zip(names, paths, strict=True) if p != default]
    families: list[str] = []
    while need:
        name, path = max(fonts, key=lambda f: len({c for c in need if ord(c) in _charmap(f[1])}), default=(None, ""))
        got = {c for c in need if ord(c) in _charmap(path)} if name else set()
        if not got:
            break
        families.append(name)
        need -= got
    return tuple(families), frozenset(need)


def fallback_fonts(text: str) -> tuple[str, ...]:
    """Font families to add after the default one so that every character of `text` has a glyph."""
    return _fonts_for(frozenset(text))[0]


def undrawable(texts) -> str:
    """The characters of `texts` that no installed font has (figures draw them as boxes), in order."""
    chars = "".join(map(str, texts))
    missing = _fonts_for(frozenset(chars))[1]
    return "".join(dict.fromkeys(c for c in chars if c in missing))


def use_fallback_fonts(fig) -> None:
    """Per-glyph font fallback for the figure's text: matplotlib draws each character from the first family
    of a text's list that has it, so Latin text keeps the default font (and its bytes)."""
    from matplotlib.text import Text

    fig.draw_without_rendering()  # tick labels get their text at draw time
    texts = fig.findobj(Text)
    extra = fallback_fonts("".join(t.get_text() for t in texts))
    for t in texts if extra else ():
        t.set_fontfamily([*t.get_fontfamily(), *extra])


def png_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _txt(s: str, n: int = LABEL_CHARS) -> str:
    s = str(s)
    s = s if len(s) <= n else s[: n - 1] + "…"
    return s.replace("$", r"\$")


def image_png(path: str | Path | None, size: int = 96) -> str | None:
    """A thumbnail (nearest-neighbour upscaling keeps small images crisp); None when the file is unreadable."""
    from PIL import Image

    from ..data.images import open_image

    if not path:
        return None
    try:
        im = open_image(path)
    except DiffdiscError:
        return None
    scale = size / max(im.size)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return png_b64(buf.getvalue())


def confusion_png(labels: np.ndarray, preds: np.ndarray, classes: list[str], title: str) -> str:
    n = len(classes)
    cm = np.zeros((n, n), dtype=int)
    for y, p in zip(labels, preds, strict=True):
        if y >= 0:
            cm[y, p] += 1
    side = min(3.0 + 0.25 * n, 9.0)
    label = 0.06 * max(0, max(map(len, map(_txt, classes)), default=0) - 10) if n <= MAX_TICKS else 0.0  # inches
    fig = _figure(side + 0.5 + label, side + label)  # long class names get room: the matrix keeps its size
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    if n <= MAX_TICKS:
        ax.set_xticks(range(n), [_txt(c) for c in classes], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), [_txt(c) for c in classes], fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")  # fmt: skip
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(_txt(title, TITLE_CHARS), fontsize=10)
    return fig_png(fig)


def reliability_png(conf: np.ndarray, correct: np.ndarray, n_bins: int, title: str) -> str:
    """Accuracy vs confidence per bin (bars) against the diagonal, with the image count per bin."""
    edges = np.linspace(0, 1, n_bins + 1)
    b = np.clip(np.digitize(conf, edges, right=True) - 1, 0, n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    acc = np.bincount(b, weights=correct.astype(float), minlength=n_bins) / np.maximum(n, 1)
    fig = _figure(4, 3.6)
    ax = fig.add_subplot()
    centres = (edges[:-1] + edges[1:]) / 2
    ax.bar(centres[n > 0], acc[n > 0], width=1 / n_bins, edgecolor="black", color="#6a9fd4", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for x, a, k in zip(centres, acc, n, strict=True):
        if k:
            ax.text(x, min(a + 0.02, 0.97), str(k), ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (predicted class)", ylabel="accuracy")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(_txt(title, TITLE_CHARS), fontsize=10)
    return fig_png(fig)


def timestep_curves_png(items: list[dict]) -> str:
    """One panel per image: denoising error vs t for every class scored (true class green, wrong pick red).

    items: {title, timesteps, errors [class][t index], classes, label, pred}.
    """
    k = len(items)
    cols = min(k, 2)
    rows = -(-k // cols)
    fig = _figure(3.4 * cols, 2.8 * rows)
    for n, it in enumerate(items, start=1):
        ax = fig.add_subplot(rows, cols, n)
        order = np.argsort(it["timesteps"])
        ts = np.array(it["timesteps"])[order]
        for c, row in enumerate(it["errors"]):
            v = np.array([np.nan if row[j] is None else row[j] for j in order], dtype=float)
            if np.isnan(v).all():
                continue
            if c == it["label"]:
                style = {"color": "tab:green", "lw": 2, "zorder": 3, "label": f"true: {_txt(it['classes'][c])}"}
            elif c == it["pred"]:
                style = {"color": "tab:red", "lw": 2, "zorder": 3, "label": f"predicted: {_txt(it['classes'][c])}"}
            else:
                style = {"color": "grey", "lw": 0.8, "alpha": 0.6}
            ax.plot(ts[~np.isnan(v)], v[~np.isnan(v)], marker=".", ms=3, **style)
        ax.set_xlabel("timestep t")
        ax.set_ylabel("denoising error" if n % cols == 1 or cols == 1 else "")
        ax.set_title(_txt(it["title"], TITLE_CHARS * 2 // 3), fontsize=8)  # a panel is narrower than a figure
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    return fig_png(fig)


def single_t_png(centres: np.ndarray, acc: np.ndarray, n: np.ndarray, chance: float, title: str) -> str:
    fig = _figure(4.2, 3.0)
    ax = fig.add_subplot()
    ok = n > 0
    ax.plot(centres[ok], acc[ok], marker="o", color="tab:blue", label="true class lowest at t")
    ax.axhline(chance, ls="--", color="grey", label=f"chance {pct(chance)}")
    ax.set(ylim=(0, 1), xlabel="timestep t (binned)", ylabel="single-t accuracy")
    ax.legend(fontsize=7)
    ax.set_title(_txt(title, TITLE_CHARS), fontsize=9)
    return fig_png(fig)


def pruning_png(n_calls: np.ndarray, title: str, max_lines: int = 100) -> str:
    """Candidates left vs U-Net calls: thin steps per image, the mean over images in bold."""
    from .stats import mean_trace, pruning_trace

    fig = _figure(4.4, 3.2)
    ax = fig.add_subplot()
    for row in n_calls[:max_lines]:
        x, y = pruning_trace(row)
        ax.step(x, y, where="post", color="tab:blue", alpha=0.15, lw=0.8)
    xs, ys = mean_trace(n_calls)
    ax.plot(xs, ys, color="black", lw=2, label=f"mean of {len(n_calls)} images")
    ax.set(xlabel="U-Net calls spent on the image", ylabel="candidates left", ylim=(0, n_calls.shape[1] + 0.5))
    ax.legend(fontsize=7)
    ax.set_title(_txt(title, TITLE_CHARS), fontsize=9)
    return fig_png(fig)


def sweep_png(blocks: list[str], timesteps: list[int], val_acc: np.ndarray, best: dict, title: str) -> str:
    """Validation accuracy over (block, timestep), best cell outlined."""
    from matplotlib.patches import Rectangle

    label = 0.06 * max(0, max(map(len, map(_txt, blocks)), default=0) - 10)  # inches for long block names
    fig = _figure(2.6 + 0.8 * len(timesteps) + label, 1.8 + 0.45 * len(blocks))
    ax = fig.add_subplot()
    finite = np.isfinite(val_acc).any()
    lo, hi = (np.nanmin(val_acc), np.nanmax(val_acc)) if finite else (0.0, 1.0)
    im = ax.imshow(np.ma.masked_invalid(val_acc), cmap="viridis", aspect="auto", vmin=lo, vmax=hi)
    ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps], fontsize=8)
    ax.set_yticks(range(len(blocks)), [_txt(b) for b in blocks], fontsize=8)
    for i in range(len(blocks)):
        for j in range(len(timesteps)):
            if np.isfinite(val_acc[i, j]):
                bright = val_acc[i, j] > lo + 0.6 * (hi - lo)  # viridis turns yellow: dark text there
                ax.text(j, i, pct(val_acc[i, j]), ha="center", va="center", fontsize=7, color="black" if bright else "white")
    if best.get("block") in blocks and best.get("t") in timesteps:
        i, j = blocks.index(best["block"]), timesteps.index(best["t"])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set(xlabel="timestep t", ylabel="U-Net block")
    fig.colorbar(im, ax=ax, label="val accuracy")
    ax.set_title(_txt(title, TITLE_CHARS), fontsize=9)
    return fig_png(fig)


def robustness_png(points: list[dict], title: str = "effective robustness") -> str:
    """Clean accuracy (x) vs shifted accuracy (y), one marker per model and shift, y = x dashed: points far below
    the line lose much under shift; effective robustness is the height above the baselines' fit, not above y = x."""
    fig = _figure(4.6, 3.6)
    ax = fig.add_subplot()
    models = sorted({str(p.get("model")) for p in points})
    shifts = sorted({str(p.get("shift")) for p in points})
    marks = "os^vD<>pXh*"
    for mi, m in enumerate(models):
        ps = [p for p in points if str(p.get("model")) == m]
        for p in ps:
            ax.scatter(p["clean"] * 100, p["shifted"] * 100, color=f"C{mi % 10}",
                       marker=marks[shifts.index(str(p.get("shift"))) % len(marks)], s=28)  # fmt: skip
        ax.scatter([], [], color=f"C{mi % 10}", label=_txt(m, 28))
    for si, s in enumerate(shifts):
        ax.scatter([], [], color="grey", marker=marks[si % len(marks)], label=_txt(s, 28))
    ax.plot([0, 100], [0, 100], "k--", lw=0.8)
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="clean accuracy (%)", ylabel="shifted accuracy (%)")
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title(_txt(title, TITLE_CHARS), fontsize=9)
    return fig_png(fig)
