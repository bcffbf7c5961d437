"""The teacher's diagnosis of a run folder, made once: the evidence of `layer_map: diagnosed`.

`laid diagnose` on the teacher (all layers) writes analysis/<teacher>__base/. The comparison and the
study need it before they train a diagnosed LAid arm, and the main job's analysis stage reuses it
as every student's reference, so all three ask for it here, with the main job's analysis settings
(configs/experiments/main.yaml `analysis_*`, whose defaults are these).
"""

from __future__ import annotations

from pathlib import Path

from laid.layout import RunLayout, run_label

ANALYSIS_SIZES = [1, 5, 10, 20, 50, 100, 150]  # haystack sizes of the analysis
ANALYSIS_MAX_SAMPLES = 32  # haystacks per size for the answer statistics (Figure 4 intervals)
ANALYSIS_PROFILE_SAMPLES = 8  # of those, how many feed the O(S^2) distance profile and pair spectrum
ANALYSIS_BATCH_SIZE = 4  # haystacks per forward


def ensure_teacher_diagnosis(layout: RunLayout, teacher: str, model_dir: Path | None = None, data: Path | None = None,
                             image_root: Path | None = None, sizes: list[int] | None = ANALYSIS_SIZES,
                             max_samples: int = ANALYSIS_MAX_SAMPLES, profile_samples: int = ANALYSIS_PROFILE_SAMPLES,
                             batch_size: int = ANALYSIS_BATCH_SIZE, log=print, placement: dict | None = None,
                             plan: list[str] | None = None) -> Path:
    """analysis/<teacher>__base/diagnostics.nc of the folder `model_dir` (default: the zoo model
    `teacher` of the run) on `data` (default: the run's test split), diagnosed now unless a current
    one exists. `placement`: device / dtype of the model; with `plan`, the step is only described there."""
    import xarray as xr

    from laid_analysis.analyse import AnalysisSettings
    from laid_analysis.diagnose import diagnose
    from laid_workflows.experiment import same_folder

    model_dir = model_dir or layout.zoo_model(teacher)
    data, image_root = data or layout.test_data, image_root or layout.data
    path = layout.teacher_diagnosis(teacher)
    if path.is_file() and (path.parent / "report.html").is_file():
        with xr.open_dataset(path) as ds:  # the same model on the same questions (diagnoses before data_path: the test split)
            recorded = ds.attrs.get("data_path") or layout.test_data
            if "needle_mass_question" in ds and same_folder(ds.attrs.get("model_dir"), model_dir) and same_folder(recorded, data):
                if plan is not None:
                    plan.append(f"reuse     {path}")
                return path
    if plan is not None:
        plan.append(f"diagnose  teacher {teacher}: {model_dir} on {data} -> {path.parent}")
        return path
    available = sorted({int(p.stem.split("_")[-1]) for p in Path(data).rglob("visual_haystack_*.json")
                        if p.stem.split("_")[-1].isdigit()})
    sizes = [s for s in sizes if s in available] if sizes is not None else None
    log(f"diagnosing the teacher {teacher} (layer_map: diagnosed reads it): {path.parent}")
    diagnose(model_dir, data, image_root, sizes or None, path.parent, max_samples=max_samples, label=run_label(teacher, "base"),
             settings=AnalysisSettings(profile_max_samples=profile_samples, batch_size=batch_size), progress=False,
             **(placement or {}))
    return path
