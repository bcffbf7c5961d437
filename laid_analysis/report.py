"""Figures (matplotlib, Agg) and a small HTML page for one `laid diagnose` run.

Heads are coloured by class as in the paper's Figure 4: local position heads blue, global orange.
Models with many layers show at most four of them (evenly spaced, the last always included).
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from matplotlib.ticker import LogLocator, NullLocator, ScalarFormatter  # noqa: E402

from laid.io import save_figure as _save_figure, write_text  # noqa: E402

CLASS_COLOURS = {"local": "tab:blue", "global": "tab:orange"}
MAX_LAYERS_SHOWN = 4


def save_figure(fig, path: Path) -> Path:
    # Minor ticks of log axes spanning many decades cost seconds to lay out; majors are enough.
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                if isinstance(axis.get_major_locator(), LogLocator):
                    axis.set_major_locator(LogLocator(numticks=5))
                axis.set_minor_locator(NullLocator())
    return _save_figure(fig, path)


def shown_layers(layers, n: int = MAX_LAYERS_SHOWN) -> list[int]:
    layers = [int(x) for x in layers]
    if len(layers) <= n:
        return layers
    idx = np.unique(np.round(np.linspace(0, len(layers) - 1, n)).astype(int))
    return [layers[i] for i in idx]


def _head_colour(ds: xr.Dataset, layer: int, head: int) -> str:
    if "head_class" not in ds:
        return "grey"
    return CLASS_COLOURS.get(str(ds["head_class"].sel(layer=layer, head=head).values), "grey")


def plot_key_activation(models: dict[str, xr.Dataset], path: Path) -> Path:
    """Rows: models; columns: shown layers; one line per head vs haystack size (log x)."""
    rows = list(models.items())
    n_cols = max(len(shown_layers(ds["layer"].values)) for _, ds in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(3.2 * n_cols, 2.6 * len(rows)), squeeze=False, sharey=True)
    for r, (name, ds) in enumerate(rows):
        for c, layer in enumerate(shown_layers(ds["layer"].values)):
            ax = axes[r, c]
            for head in ds["head"].values:
                ka = ds["key_activation"].sel(layer=layer, head=head)
                ax.plot(ka["haystack_size"], ka, marker="o", ms=3, lw=1, color=_head_colour(ds, layer, head), alpha=0.8)
            ax.set_xscale("log")
            ax.set_xticks(ds["haystack_size"].values)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_title(f"{name} layer {layer}", fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel("haystack size (images)")
        axes[r, 0].set_ylabel("normalized key activation")
        for c in range(len(shown_layers(ds["layer"].values)), n_cols):
            axes[r, c].axis("off")
    fig.suptitle("Key activation vs haystack size (blue: local heads, orange: global)", fontsize=10, y=1.02)
    return save_figure(fig, path)


def plot_distance_profiles(ds: xr.Dataset, path: Path, name: str = "") -> Path:
    """Per shown layer: attention vs distance (log-log), logit vs distance, logit power spectrum."""
    layers = shown_layers(ds["layer"].values)
    fig, axes = plt.subplots(len(layers), 3, figsize=(11, 2.6 * len(layers)), squeeze=False)
    d = ds["distance"].values
    for r, layer in enumerate(layers):
        for head in ds["head"].values:
            colour = _head_colour(ds, layer, head)
            axes[r, 0].plot(d[1:], ds["attention"].sel(layer=layer, head=head).values[1:], lw=0.8, color=colour, alpha=0.7)
            axes[r, 1].plot(d, ds["logit"].sel(layer=layer, head=head).values, lw=0.8, color=colour, alpha=0.7)
            p = ds["power"].sel(layer=layer, head=head)
            axes[r, 2].plot(p["freq_distance"].values[1:], p.values[1:], lw=0.8, color=colour, alpha=0.7)
        if "uniform" in ds:
            axes[r, 0].plot(d[1:], ds["uniform"].values[1:], "k--", lw=1, label="uniform head")
            axes[r, 0].legend(fontsize=7)
        axes[r, 0].set(xscale="log", yscale="log", ylabel=f"layer {layer}")
        axes[r, 2].set(xscale="log", yscale="log")
        if "low_freq_cutoff" in ds.attrs:
            axes[r, 2].axvline(ds.attrs["low_freq_cutoff"], color="k", ls=":", lw=1)
    axes[0, 0].set_title("mean attention weight")
    axes[0, 1].set_title("mean attention logit")
    axes[0, 2].set_title("power of logit profile (dotted: low-freq cutoff)")
    axes[-1, 0].set_xlabel("distance (tokens)")
    axes[-1, 1].set_xlabel("distance (tokens)")
    axes[-1, 2].set_xlabel("frequency (cycles/token)")
    fig.suptitle(f"{name}: attention vs query-key distance", fontsize=10, y=1.02)
    return save_figure(fig, path)


def plot_rope_usage(ds: xr.Dataset, path: Path, name: str = "") -> Path:
    layers = shown_layers(ds["layer"].values)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3), squeeze=False)
    for c, layer in enumerate(layers):
        u = ds["rope_usage"].sel(layer=layer)
        im = axes[0, c].imshow(u.values, aspect="auto", cmap="viridis", origin="lower")
        axes[0, c].set(title=f"layer {layer}", xlabel="rotary pair (fast -> slow)", ylabel="head")
        fig.colorbar(im, ax=axes[0, c], fraction=0.046)
    fig.suptitle(f"{name}: RoPE frequency usage (share of |q_p||k_p|)", fontsize=10, y=1.02)
    return save_figure(fig, path)


def plot_head_weights(hw: xr.Dataset, path: Path) -> Path:
    pairs = hw["layer_pair"].values
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.6 * len(pairs), 6), squeeze=False)
    for c, lp in enumerate(pairs):
        for r, var in enumerate(("w_q", "w_k")):
            w = hw[var].sel(layer_pair=lp).values
            lim = float(np.abs(w).max()) or 1.0
            im = axes[r, c].imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            label = f"pair {lp}"
            if "student_layer" in hw.coords:
                label = f"student {int(hw['student_layer'].sel(layer_pair=lp))} <- teacher {int(hw['teacher_layer'].sel(layer_pair=lp))}"
            axes[r, c].set(title=f"{var}: {label}", xlabel="teacher head", ylabel="student head")
            fig.colorbar(im, ax=axes[r, c], fraction=0.046)
    fig.suptitle("LAid head-mixing weights", fontsize=10, y=1.02)
    return save_figure(fig, path)


def plot_rope_gain(hw: xr.Dataset, path: Path) -> Path:
    """LAid's learnable RoPE response gains (export variable gain_q), head x rotary pair per layer."""
    layers = hw["gain_layer"].values
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3), squeeze=False)
    for c, layer in enumerate(layers):
        im = axes[0, c].imshow(hw["gain_q"].sel(gain_layer=layer).values, aspect="auto", cmap="viridis", origin="lower")
        axes[0, c].set(title=f"gain_q, student layer {int(layer)}", xlabel="rotary pair (fast -> slow)", ylabel="head")
        fig.colorbar(im, ax=axes[0, c], fraction=0.046)
    fig.suptitle("LAid RoPE response gains", fontsize=10, y=1.02)
    return save_figure(fig, path)


def plot_comparison(student: xr.Dataset, teacher: xr.Dataset, comparison: xr.Dataset, path: Path) -> Path:
    """Head-averaged normalised low-frequency spectra of paired layers, student vs teacher."""
    layers = shown_layers(comparison["layer"].values)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3), squeeze=False)
    n = int(comparison.attrs["n_distance"])
    from laid_analysis.spectra import power_spectrum

    for c, layer in enumerate(layers):
        t_layer = int(comparison["teacher_layer"].sel(layer=layer))
        for ds, lay, label, colour in ((student, layer, "student", "tab:purple"), (teacher, t_layer, "teacher", "tab:gray")):
            p = power_spectrum(ds["logit"].sel(layer=lay).isel(distance=slice(0, n)))
            p = (p / p.where(p["freq_distance"] > 0).sum("freq_distance")).mean("head")
            axes[0, c].plot(p["freq_distance"].values[1:], p.values[1:], color=colour, label=f"{label} L{lay}")
        axes[0, c].axvline(comparison.attrs["low_freq_cutoff"], color="k", ls=":", lw=1)
        axes[0, c].set(xscale="log", yscale="log", xlabel="frequency (cycles/token)",
                       title=f"preservation {float(comparison['layer_preservation'].sel(layer=layer)):.2f}")
        axes[0, c].legend(fontsize=7)
    fig.suptitle(f"Low-frequency preservation score {float(comparison['preservation_score']):.3f}", fontsize=10, y=1.02)
    return save_figure(fig, path)


def table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def head_table(ds: xr.Dataset) -> str:
    rows = []
    for layer in ds["layer"].values:
        for head in ds["head"].values:
            sel = ds.sel(layer=layer, head=head)
            rows.append([int(layer), int(head), str(sel["head_class"].values), f"{float(sel['mean_distance_ratio']):.2f}",
                         f"{float(sel['low_freq_fraction']):.2f}", f"{float(sel['rope_mean_period']):.3g}"])
    return table(rows, ["layer", "head", "class", "mean distance / uniform", "low-freq fraction", "RoPE mean period"])


def write_report(out_dir: Path, title: str, figures: list[Path], sections: list[tuple[str, str]]) -> Path:
    """report.html embedding the PNGs (relative links) after the given (heading, html) sections."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    for fig in figures:
        parts.append(f'<figure><img src="{html.escape(fig.name)}" style="max-width:100%"><figcaption>{html.escape(fig.stem)}</figcaption></figure>')
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto} table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ccc;padding:2px 6px}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    return write_text(page, out_dir / "report.html")
