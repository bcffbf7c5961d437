"""`laid diagnose` as a Python API: analyse one checkpoint (and optionally its teacher), write
netCDF results, figures and report.html into one folder.

Files in out_dir (all written atomically):
    diagnostics.nc   the checkpoint's dataset (analyse.analyse_model)
    reference.nc     the teacher's, with --reference
    comparison.nc    each student head against its virtual teacher head (pair_spectrum.compare_spectra:
                     spectral_fidelity, profile_fidelity) and the ablation score
                     preservation (spectra.low_freq_preservation), with --reference
    models.nc        per-head statistics of both models along a `model` dim (each model's own
                     layer/head indices; NaN where one model has fewer), with --reference
    head_weights.nc  validated LAid mixer weights and their summary, with --head-weights
    ablation.nc      accuracy change on minimal pairs per ablated head / rotary band (ablation.py),
                     with ablate_layers
    *.png, report.html
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Iterable

import torch
import xarray as xr

from laid.model.families import family_of, snap_to_type
from laid.model.loading import check_model_dir, load_model, load_processor
from laid_analysis import report
from laid_analysis.analyse import AnalysisSettings, analyse_model
from laid.data.vhs import load_entries
from laid_analysis.head_weights import head_weight_summary, load_head_weights, with_absolute_layers
from laid.model.hooks import resolve_layers
from laid.io import write_netcdf
from laid_analysis.key_activation import stack_models
from laid_analysis.pair_spectrum import compare_spectra
from laid_analysis.spectra import default_layer_map, low_freq_preservation

MODEL_STACK_VARIABLES = ("needle_mass_mean", "needle_mass_lo", "needle_mass_hi", "image_mass_mean", "needle_margin_mean",
                         "head_locality", "head_locality_lo", "head_locality_hi", "attn_entropy", "sink_mass",
                         "logit_scale", "q_norm", "pair_coef_abs", "key_activation", "low_freq_fraction")


def _n_text_layers(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    return int(text.get("num_hidden_layers") or cfg["num_hidden_layers"])


def _layer_types(model_dir: Path) -> list[str]:
    from transformers import AutoConfig

    return family_of(model_dir).layer_types(AutoConfig.from_pretrained(model_dir))


def _analyse_folder(model_dir: Path, entries, settings: AnalysisSettings, label: str, device, dtype, progress,
                    ablation: dict | None = None) -> tuple[xr.Dataset, xr.Dataset | None]:
    model = load_model(model_dir, device=device, dtype=dtype)
    abl = None
    try:
        processor = load_processor(model_dir)
        ds = analyse_model(model, processor, entries, settings, model_name=label, progress=progress)
        if ablation:
            from laid_analysis.ablation import ablation_study

            n_layers = int(ds.attrs["n_layers_total"])
            abl = ablation_study(model, processor, ablation["pairs"], resolve_layers(ablation["layers"], n_layers),
                                 ablation["n_bands"]).assign_attrs(model_name=label, haystack_size=ablation["size"])
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    ds.attrs["model_dir"] = str(model_dir)
    return ds, abl


def analyse_checkpoint(model_dir: str | Path, data_root: str | Path, image_root: str | Path, sizes: Iterable[int] | None,
                       max_samples: int | None, settings: AnalysisSettings | None = None, label: str | None = None,
                       setting: str = "single_needle", device=None, progress: bool = True, dtype=None) -> xr.Dataset:
    """The diagnostics Dataset of one checkpoint (what `diagnose` writes as diagnostics.nc), without
    the report: for callers that need the numbers only (the study diagnoses every budget export)."""
    model_dir = check_model_dir(model_dir)
    settings = settings or AnalysisSettings()
    settings.validate()
    entries = load_entries(data_root, image_root, setting, sizes, max_samples)
    ds, _ = _analyse_folder(model_dir, entries, settings, label or model_dir.name, device, dtype, progress)
    return ds


SAME_SETTINGS = ("queries", "keys", "profile_sizes", "profile_max_samples", "distance_units", "seed", "local_threshold")


def _reuse_reference(path: Path, student: xr.Dataset, layers: list[int]) -> xr.Dataset:
    """The teacher's earlier analysis at `layers`, if it was made on the student's haystacks and settings."""
    from laid.io import read_netcdf

    ref = read_netcdf(path)
    mine, theirs = json.loads(student.attrs["settings"]), json.loads(ref.attrs["settings"])
    differ = [k for k in SAME_SETTINGS if mine.get(k) != theirs.get(k)]
    same_data = ref["haystack_size"].values.tolist() == student["haystack_size"].values.tolist() and \
        ref["n_samples"].values.tolist() == student["n_samples"].values.tolist()
    if differ or not same_data:
        raise ValueError(f"reference analysis {path} was made with other settings ({differ or 'haystack sizes/samples'}); "
                         "re-run `laid diagnose` on the teacher with the student's settings")
    missing = sorted(set(layers) - {int(x) for x in ref["layer"].values})
    if missing:
        raise ValueError(f"reference analysis {path} lacks teacher layers {missing}; analyse the teacher with all layers")
    return ref.sel(layer=layers)


def layer_pairs(n_student: int, n_teacher: int, student_layers, head_weights: xr.Dataset | None,
                types: tuple[list[str], list[str]] | None = None) -> dict[int, int]:
    """Student layer -> teacher layer: the export's layer pairs where it names them (absolute
    indices, see head_weights.with_absolute_layers), else relative depth moved to the nearest teacher
    layer of the student layer's type (`types`: student's and teacher's layer types; Gemma 3)."""
    layers = resolve_layers(student_layers, n_student)
    pairs = default_layer_map(layers, range(n_teacher), n_student, n_teacher)
    if types is not None:
        pairs = dict(snap_to_type(pairs.items(), *types))
    if head_weights is not None and "student_layer" in head_weights.coords:
        for s, t in zip(head_weights["student_layer"].values, head_weights["teacher_layer"].values):
            if int(s) in pairs:
                pairs[int(s)] = int(t)
    return pairs


def diagnose(
    model_dir: str | Path,
    data_root: str | Path,
    image_root: str | Path,
    sizes: Iterable[int] | None,
    out_dir: str | Path,
    reference: str | Path | None = None,
    head_weights: str | Path | None = None,
    max_samples: int | None = 5,
    layers: list[int] | None = None,
    settings: AnalysisSettings | None = None,
    setting: str = "single_needle",
    label: str | None = None,
    reference_label: str | None = None,
    device=None,
    dtype=None,
    progress: bool = True,
    ablate_layers: list[int] | None = None,
    ablate_size: int | None = None,
    ablate_pairs: int = 16,
    n_bands: int = 4,
    reference_analysis: str | Path | None = None,
    allow_outside_image_root: bool = False,
) -> dict[str, Path]:
    """Analyse model_dir on the VHs haystacks of `sizes` (None = every size in the data) and write
    the results to out_dir; with `reference` (the teacher folder) also the teacher's analysis on the
    same haystacks and the comparison; with `ablate_layers` the head / rotary-band ablations on up to
    `ablate_pairs` minimal pairs of haystack size `ablate_size` (default: the largest analysed).
    `reference_analysis`: the teacher's diagnostics.nc from an earlier diagnose on the same
    haystacks and settings (all paired layers analysed), used instead of analysing it again.
    Returns {name: path} of the files written."""
    model_dir, out_dir = check_model_dir(model_dir), Path(out_dir)
    settings = settings or AnalysisSettings()
    if layers is not None:
        settings.layers = list(layers)
    settings.validate()
    label = label or model_dir.name
    hw = load_head_weights(head_weights) if head_weights else None
    entries = load_entries(data_root, image_root, setting, sizes, max_samples, allow_outside_root=allow_outside_image_root)
    if settings.profile_sizes:
        missing = sorted(set(settings.profile_sizes) - set(entries))
        if missing:
            raise ValueError(f"profile sizes {missing} are not among the analysed sizes {sorted(entries)}")

    ablation = None
    if ablate_layers:
        from laid_analysis.ablation import load_ground_truth, minimal_pairs

        size = ablate_size or max(entries)
        if size not in entries:
            raise ValueError(f"ablation size {size} is not among the analysed sizes {sorted(entries)}")
        pairs = minimal_pairs(entries[size], load_ground_truth(image_root), settings.seed)[:ablate_pairs]
        ablation = {"pairs": pairs, "layers": ablate_layers, "n_bands": n_bands, "size": size}

    written: dict[str, Path] = {}
    ds, abl = _analyse_folder(model_dir, entries, settings, label, device, dtype, progress, ablation)
    ds.attrs["data_path"] = str(data_root)  # which questions: a workflow reuses a diagnosis only on the same ones
    written["diagnostics"] = write_netcdf(ds, out_dir / "diagnostics.nc")
    figures = [report.plot_key_activation({label: ds}, out_dir / "key_activation.png"),
               report.plot_distance_profiles(ds, out_dir / "distance_profile.png", label),
               report.plot_rope_usage(ds, out_dir / "rope_usage.png", label),
               report.plot_health({label: ds}, out_dir / "health.png")]
    sections = [("Settings", f"<pre>{json.dumps(json.loads(ds.attrs['settings']), indent=1)}</pre>"),
                ("Heads", report.head_table(ds))]

    if reference is not None:
        ref_dir = check_model_dir(reference)
        reference_label = reference_label or ref_dir.name
        n_s, n_t = _n_text_layers(model_dir), _n_text_layers(ref_dir)
        if hw is not None:
            hw = with_absolute_layers(hw, n_s, n_t)
        pairs = layer_pairs(n_s, n_t, settings.layers, hw, (_layer_types(model_dir), _layer_types(ref_dir)))
        ref_settings = AnalysisSettings(**{**settings.__dict__, "layers": sorted(set(pairs.values()))})
        if reference_analysis is not None:
            ref = _reuse_reference(Path(reference_analysis), ds, ref_settings.layers).assign_attrs(model_name=reference_label)
        else:
            ref, _ = _analyse_folder(ref_dir, entries, ref_settings, reference_label, device, dtype, progress)
        written["reference"] = write_netcdf(ref, out_dir / "reference.nc")
        legacy = low_freq_preservation(ds, ref, layer_map=pairs, head_weights=hw, cycles=settings.low_freq_cycles)
        comparison = compare_spectra(ds, ref, pairs, hw).merge(
            legacy.drop_vars(["teacher_layer", "head_matching"]), compat="override")
        for v in ("preservation", "layer_preservation", "low_freq_ratio", "preservation_score"):
            comparison[v].attrs["long_name"] = "ABLATION (fails planted checks): " + comparison[v].attrs.get("long_name", v)
        comparison.attrs.update(student=label, teacher=reference_label, student_dir=str(model_dir), teacher_dir=str(ref_dir))
        written["comparison"] = write_netcdf(comparison, out_dir / "comparison.nc")
        both = stack_models({label: ds, reference_label: ref}, MODEL_STACK_VARIABLES)
        written["models"] = write_netcdf(both.assign_attrs(student=label, teacher=reference_label), out_dir / "models.nc")
        figures[0] = report.plot_key_activation({label: ds, reference_label: ref}, out_dir / "key_activation.png")
        figures[3] = report.plot_health({label: ds, reference_label: ref}, out_dir / "health.png")
        figures.append(report.plot_distance_profiles(ref, out_dir / "reference_distance_profile.png", reference_label))
        figures.append(report.plot_comparison(ds, comparison, out_dir / "comparison.png"))
        rows = [[int(l), int(h), int(comparison["teacher_layer"].sel(layer=l)), str(comparison["head_matching"].sel(layer=l).values),
                 f"{float(comparison['spectral_fidelity'].sel(layer=l, head=h)):.3f}",
                 f"{float(comparison['profile_fidelity'].sel(layer=l, head=h)):.3f}",
                 f"{float(comparison['preservation'].sel(layer=l, head=h)):.3f}"]
                for l in comparison["layer"].values for h in comparison["head"].values]
        sections.insert(0, (f"Fidelity to the virtual teacher heads of {reference_label}: spectral "
                            f"{float(comparison['fidelity_score']):.3f}, profile {float(comparison['profile_score']):.3f}",
                            report.table(rows, ["student layer", "head", "teacher layer", "head matching", "spectral fidelity",
                                                "profile fidelity", "ablation: low-freq preservation"])))

    if hw is not None:
        hw_out = hw.merge(head_weight_summary(hw))
        written["head_weights"] = write_netcdf(hw_out, out_dir / "head_weights.nc")
        figures.append(report.plot_head_weights(hw, out_dir / "head_weights.png"))
        if "gain_q" in hw:
            figures.append(report.plot_rope_gain(hw, out_dir / "rope_gain.png"))

    if abl is not None:
        written["ablation"] = write_netcdf(abl, out_dir / "ablation.nc")
        figures.append(report.plot_ablation(abl, out_dir / "ablation.png"))
        sections.append(("Ablations on minimal pairs (accuracy change vs intact, 95% paired bootstrap over pairs)",
                         report.ablation_table(abl)))

    for fig in figures:
        written[fig.name] = fig
    written["report"] = report.write_report(out_dir, f"laid diagnose: {label}", figures, sections)
    return written
