"""Figures (matplotlib, Agg) and a small HTML page for one `laid diagnose` run.

Heads are coloured by class as in the paper's Figure 4: local position heads blue, global orange
(key_activation.position_head_classes). Bands are 95% percentile bootstrap intervals over haystacks.
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


def plot_key_activation(models: dict[str, xr.Dataset], path: Path, layer: int | None = None) -> Path:
    """Figure 4 without dilution. Rows: needle mass, image mass, needle margin; columns: models
    (one shared y range per row); one line per head vs haystack size with its bootstrap interval."""
    rows = (("needle_mass", "attention mass on needle"), ("image_mass", "attention mass on all images"),
            ("needle_margin", "needle - distractor logit"))
    names = list(models)
    fig, axes = plt.subplots(len(rows), len(names), figsize=(3.4 * len(names), 2.5 * len(rows)), squeeze=False, sharey="row")
    for c, name in enumerate(names):
        ds = models[name]
        lay = int(ds["layer"].values[-1]) if layer is None else layer
        for r, (var, label) in enumerate(rows):
            ax = axes[r, c]
            for head in ds["head"].values:
                sel = {"layer": lay, "head": head}
                x = ds["haystack_size"].values
                colour = _head_colour(ds, lay, head)
                ax.plot(x, ds[f"{var}_mean"].sel(sel), marker="o", ms=3, lw=1, color=colour)
                ax.fill_between(x, ds[f"{var}_lo"].sel(sel), ds[f"{var}_hi"].sel(sel), color=colour, alpha=0.15)
            ax.set_xscale("log")
            ax.set_xticks(ds["haystack_size"].values)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            if r == 0:
                ax.set_title(f"{name} layer {lay}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
        axes[-1, c].set_xlabel("haystack size (images)")
    fig.suptitle("Answer query vs haystack size (blue: local heads, orange: global; bands: 95% bootstrap over haystacks)",
                 fontsize=10, y=1.02)
    return save_figure(fig, path)


def plot_health(models: dict[str, xr.Dataset], path: Path) -> Path:
    """Health vs haystack size, last analysed layer, head means over haystacks: columns are
    attn_entropy, sink_mass, logit_scale, q_norm; one line per (model, head)."""
    cols = ("attn_entropy", "sink_mass", "logit_scale", "q_norm")
    fig, axes = plt.subplots(1, len(cols), figsize=(3.3 * len(cols), 2.8), squeeze=False)
    for m, (name, ds) in enumerate(models.items()):
        lay = int(ds["layer"].values[-1])
        for c, var in enumerate(cols):
            v = ds[var].sel(layer=lay).mean("sample")
            for h in v["head"].values:
                axes[0, c].plot(v["haystack_size"], v.sel(head=h), color=f"C{m}", lw=1, alpha=0.7,
                                label=f"{name} L{lay}" if h == 0 else None)
            axes[0, c].set(xscale="log", title=f"{var} ({ds[var].attrs.get('units', '')})", xlabel="haystack size (images)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Head health at the answer query (mean over haystacks)", fontsize=10, y=1.04)
    return save_figure(fig, path)


def plot_distance_profiles(ds: xr.Dataset, path: Path, name: str = "") -> Path:
    """Per shown layer: attention vs position distance (log-log), measured mean logit with the pair
    spectrum's reconstruction (dashed), and |a_p| per rotary pair at its frequency."""
    layers = shown_layers(ds["layer"].values)
    fig, axes = plt.subplots(len(layers), 3, figsize=(11, 2.6 * len(layers)), squeeze=False)
    d = ds["distance"].values
    units = ds["distance"].attrs.get("units", "tokens")
    for r, layer in enumerate(layers):
        for head in ds["head"].values:
            colour = _head_colour(ds, layer, head)
            axes[r, 0].plot(d[1:], ds["attention"].sel(layer=layer, head=head).values[1:], lw=0.8, color=colour, alpha=0.7)
            axes[r, 1].plot(d, ds["logit"].sel(layer=layer, head=head).values, lw=0.8, color=colour, alpha=0.7)
            if "rope_profile" in ds:
                axes[r, 1].plot(d, ds["rope_profile"].sel(layer=layer, head=head).values, lw=0.8, ls="--", color=colour)
            if "pair_coef_abs" in ds:
                a = ds["pair_coef_abs"].sel(layer=layer, head=head)
                axes[r, 2].plot(a["rope_freq"].values, a.values, marker=".", lw=0.8, color=colour, alpha=0.8)
        if "uniform" in ds:
            axes[r, 0].plot(d[1:], ds["uniform"].values[1:], "k--", lw=1, label="uniform head")
            axes[r, 0].legend(fontsize=7)
        axes[r, 0].set(xscale="log", yscale="log", ylabel=f"layer {layer}")
        if "rope_freq" in ds.coords:
            for f in ds["rope_freq"].values:  # each rotary pair's frequency
                axes[r, 2].axvline(f, color="0.85", lw=0.5, zorder=0)
        axes[r, 2].set(xscale="log")
    axes[0, 0].set_title("mean attention weight")
    axes[0, 1].set_title("mean logit (dashed: sum_p Re a_p e^(i theta_p d))")
    axes[0, 2].set_title("|a_p| per rotary pair (grey: pair frequencies)")
    axes[-1, 0].set_xlabel(f"distance ({units})")
    axes[-1, 1].set_xlabel(f"distance ({units})")
    axes[-1, 2].set_xlabel("rotary pair frequency (cycles/position)")
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
    """Every layer pair: signed w_q and w_k with each cell's value printed (3 significant digits)
    and each student row's share of its row's |w| in the row label."""
    pairs = hw["layer_pair"].values
    fig, axes = plt.subplots(2, len(pairs), figsize=(4.2 * len(pairs), 7), squeeze=False)
    for c, lp in enumerate(pairs):
        for r, var in enumerate(("w_q", "w_k")):
            w = hw[var].sel(layer_pair=lp).values
            lim = float(np.abs(w).max()) or 1.0
            im = axes[r, c].imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            if w.size <= 400:
                for (i, j), v in np.ndenumerate(w):
                    axes[r, c].text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6)
            top = np.abs(w).max(1) / np.maximum(np.abs(w).sum(1), 1e-30)
            axes[r, c].set_yticks(range(w.shape[0]), [f"{i} ({t:.0%})" for i, t in enumerate(top)], fontsize=6)
            label = f"pair {lp}"
            if "student_layer" in hw.coords:
                label = f"student {int(hw['student_layer'].sel(layer_pair=lp))} <- teacher {int(hw['teacher_layer'].sel(layer_pair=lp))}"
            axes[r, c].set(title=f"{var}: {label}", xlabel="teacher head", ylabel="student head (top |w| share)")
            fig.colorbar(im, ax=axes[r, c], fraction=0.046)
    fig.suptitle("LAid head-mixing weights, as saved (signed)", fontsize=10, y=1.02)
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


def plot_comparison(student: xr.Dataset, comparison: xr.Dataset, path: Path) -> Path:
    """Per shown student layer: Re a_p of each student head (solid) and its virtual teacher head
    (dashed) against the rotary pair frequency, signed and unnormalised; titles give the fidelities."""
    from laid_analysis.pair_spectrum import complex_coef

    layers = shown_layers(comparison["layer"].values)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.8 * len(layers), 3), squeeze=False)
    for c, layer in enumerate(layers):
        a_s = complex_coef(student).sel(layer=layer)
        a_v = complex_coef(comparison, "virtual_coef").sel(layer=layer)
        f = student["rope_freq"].values
        for h in comparison["head"].values:
            axes[0, c].plot(f, np.real(a_s.sel(head=h)), color=f"C{h}", lw=1, label=f"head {h}")
            axes[0, c].plot(f, np.real(a_v.sel(head=h)), color=f"C{h}", lw=1, ls="--")
        fid = comparison["spectral_fidelity"].sel(layer=layer).values
        axes[0, c].set(xscale="log", xlabel="rotary pair frequency (cycles/position)", ylabel="Re a_p (logit)",
                       title=f"L{layer}<-T{int(comparison['teacher_layer'].sel(layer=layer))} fidelity "
                             + " ".join(f"{x:.2f}" for x in fid))
        axes[0, c].legend(fontsize=6)
    fig.suptitle(f"Student (solid) vs virtual teacher heads (dashed); mean spectral fidelity "
                 f"{float(comparison['fidelity_score']):.3f}", fontsize=10, y=1.04)
    return save_figure(fig, path)


def plot_ablation(abl: xr.Dataset, path: Path) -> Path:
    """Accuracy change per ablation (bars) with 95% paired bootstrap intervals, one panel per layer."""
    layers = abl["layer"].values
    fig, axes = plt.subplots(1, len(layers), figsize=(max(4.0, 0.5 * abl.sizes["ablation"]) * len(layers), 3), squeeze=False)
    for c, layer in enumerate(layers):
        a = abl.sel(layer=layer)
        x = np.arange(a.sizes["ablation"])
        mean = a["accuracy_change"].values
        err = np.stack([mean - a["accuracy_change_lo"].values, a["accuracy_change_hi"].values - mean])
        colours = ["0.6" if k == "none" else ("tab:blue" if k == "head" else "tab:green") for k in a["ablation_kind"].values]
        axes[0, c].bar(x, mean, yerr=err, color=colours, capsize=2)
        axes[0, c].set_xticks(x, a["ablation"].values, rotation=60, fontsize=7)
        axes[0, c].axhline(0, color="k", lw=0.8)
        axes[0, c].set(ylabel="accuracy change", title=f"layer {int(layer)}: intact accuracy {float(a['accuracy'].sel(ablation='none')):.2f}")
    fig.suptitle(f"{abl.attrs.get('model_name', '')}: ablations on {abl.sizes['minimal_pair']} minimal pairs "
                 f"(size {abl.attrs.get('haystack_size', '?')}; bars: 95% paired bootstrap over pairs)", fontsize=10, y=1.04)
    return save_figure(fig, path)


def ablation_table(abl: xr.Dataset) -> str:
    rows = [[int(l), str(a), f"{float(abl['accuracy'].sel(layer=l, ablation=a)):.3f}",
             f"{float(abl['accuracy_change'].sel(layer=l, ablation=a)):+.3f} [{float(abl['accuracy_change_lo'].sel(layer=l, ablation=a)):+.3f}, "
             f"{float(abl['accuracy_change_hi'].sel(layer=l, ablation=a)):+.3f}]",
             f"{float(abl['pair_accuracy'].sel(layer=l, ablation=a)):.3f}", f"{float(abl['margin_change'].sel(layer=l, ablation=a)):+.3g}"]
            for l in abl["layer"].values for a in abl["ablation"].values]
    return table(rows, ["layer", "ablation", "accuracy", "change [95% bootstrap]", "both right", "margin change (logit)"])


def table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def head_table(ds: xr.Dataset) -> str:
    rows = []
    for layer in ds["layer"].values:
        for head in ds["head"].values:
            sel = ds.sel(layer=layer, head=head)
            rows.append([int(layer), int(head), str(sel["head_class"].values),
                         f"{float(sel['head_locality']):.3g} [{float(sel['head_locality_lo']):.3g}, {float(sel['head_locality_hi']):.3g}]",
                         f"{float(sel['needle_mass_mean'].isel(haystack_size=-1)):.3g}",
                         f"{float(sel['sink_mass'].isel(haystack_size=-1).mean()):.3g}",
                         f"{float(sel['rope_mean_period']):.3g}"])
    return table(rows, ["layer", "head", "class", "locality (logit/100 pos) [95% bootstrap]", "needle mass (largest size)",
                        "sink mass (largest size)", "RoPE mean period"])


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
