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


def ensure_teacher_diagnosis(layout: RunLayout, teacher: str, zoo_dir: str = "zoo", sizes: list[int] | None = ANALYSIS_SIZES,
                             max_samples: int = ANALYSIS_MAX_SAMPLES, profile_samples: int = ANALYSIS_PROFILE_SAMPLES,
                             batch_size: int = ANALYSIS_BATCH_SIZE, log=print) -> Path:
    """analysis/<teacher>__base/diagnostics.nc, diagnosed now unless a current one exists."""
    import xarray as xr

    from laid_analysis.analyse import AnalysisSettings
    from laid_analysis.diagnose import diagnose

    path = layout.teacher_diagnosis(teacher)
    if path.is_file() and (path.parent / "report.html").is_file():
        with xr.open_dataset(path) as ds:
            if "needle_mass_question" in ds:
                return path
    available = sorted({int(p.stem.split("_")[-1]) for p in layout.test_data.rglob("visual_haystack_*.json")
                        if p.stem.split("_")[-1].isdigit()})
    sizes = [s for s in sizes if s in available] if sizes is not None else None
    log(f"diagnosing the teacher {teacher} (layer_map: diagnosed reads it): {path.parent}")
    diagnose(layout.root / zoo_dir / teacher, layout.test_data, layout.data, sizes or None, path.parent,
             max_samples=max_samples, label=run_label(teacher, "base"),
             settings=AnalysisSettings(profile_max_samples=profile_samples, batch_size=batch_size), progress=False)
    return path
