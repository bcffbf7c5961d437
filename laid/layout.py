"""The run folder as one object: every path of docs/CONTRACTS.md "Run folder", defined once.

    layout = RunLayout("runs/default")
    layout.zoo_model("tiny-7b")                 # runs/default/zoo/tiny-7b
    layout.eval_result("tiny-7b", "yarn")       # runs/default/eval/tiny-7b__yarn.nc
    layout.export("tiny-7b", "laid")            # runs/default/distill/tiny-7b__laid/export

The main job, the comparison, the analysis stage and the figure notebooks all find results through
it, so a path changes in one place (and in CONTRACTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def run_label(model: str, method: str) -> str:
    """`<model>__<method>`: the name of one model/method cell in eval/, distill/ and analysis/."""
    return f"{model}__{method}"


def launch_config(training_run: str | Path) -> Path:
    """<training run>/launch_config.yaml: the resolved distill config `accelerate launch` trains from
    (laid_workflows/launch.py), in any training run folder (distill/... or study/runs/...)."""
    return Path(training_run) / "launch_config.yaml"


def launch_log(training_run: str | Path) -> Path:
    """<training run>/launch.log: the launched processes' output, appended per launch."""
    return Path(training_run) / "launch.log"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # --- files of the run itself ------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def config_dict(self) -> dict:
        """The run's config.yaml (written by `laid main`) as a mapping; {} when the run has none."""
        import yaml

        return (yaml.safe_load(self.config.read_text()) or {}) if self.config.is_file() else {}

    @property
    def summary(self) -> Path:
        return self.root / "summary.md"

    @property
    def results_page(self) -> Path:
        """The results page written from the run's netCDF files (laid_workflows.results_page);
        `laid results --publish` writes the repository's docs/results.md from the same files."""
        return self.root / "results.md"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def figures(self) -> Path:
        """The run's figures (`laid figures`, the main job, `laid study`): PNG/PDF/HTML, data/*.nc,
        tables.md; `laid results --publish` copies them into the repository's figures/."""
        return self.root / "figures"

    @property
    def executed_notebooks(self) -> Path:
        """The executed copies (with outputs) of the notebooks that drew figures/."""
        return self.root / "executed_notebooks"

    # --- data and models --------------------------------------------------------------------
    @property
    def data(self) -> Path:
        """The synthetic VHs folder; also the image root (image paths in the JSON are relative to it)."""
        return self.root / "data"

    @property
    def test_data(self) -> Path:
        return self.data / "test"

    @property
    def train_data(self) -> Path:
        return self.data / "train"

    @property
    def val_data(self) -> Path:
        """The validation split: what screens, defaults and budget choices read (claims read test_data)."""
        return self.data / "val"

    @property
    def zoo(self) -> Path:
        return self.root / "zoo"

    def zoo_model(self, name: str) -> Path:
        return self.zoo / name

    # --- evaluation, distillation, comparison, analysis -------------------------------------
    def eval_result(self, model: str, variant: str = "base") -> Path:
        return self.root / "eval" / f"{run_label(model, variant)}.nc"

    def distill_run(self, student: str, method: str, seed: int = 0) -> Path:
        """distill/<student>__<method> for training seed 0, distill/<student>__<method>__seed<k> otherwise."""
        return self.root / "distill" / (run_label(student, method) + (f"__seed{seed}" if seed else ""))

    def export(self, student: str, method: str, seed: int = 0) -> Path:
        return self.distill_run(student, method, seed) / "export"

    def head_weights(self, student: str, method: str, seed: int = 0) -> Path:
        return self.distill_run(student, method, seed) / "head_weights.nc"

    def trained_eval(self, student: str, method: str, seed: int = 0) -> Path:
        return self.distill_run(student, method, seed) / "eval.nc"

    @property
    def compare(self) -> Path:
        return self.root / "compare"

    def compare_eval(self, model: str, variant: str) -> Path:
        """Where the comparison writes an evaluation whose eval/ twin has other settings."""
        return self.compare / "eval" / f"{run_label(model, variant)}.nc"

    @property
    def comparison(self) -> Path:
        return self.comparison_result("comparison")

    @property
    def comparison_md(self) -> Path:
        return self.comparison_result("comparison", ".md")

    def comparison_result(self, name: str, suffix: str = ".nc") -> Path:
        """compare/<name>.nc (.md): "comparison" = the headline rows the main job and figures read;
        other comparison configs (--full, studies) name their own, so none overwrites another."""
        return self.compare / f"{name}{suffix}"

    def analysis(self, label: str) -> Path:
        return self.root / "analysis" / label

    def diagnosis(self, label: str) -> Path:
        """analysis/<label>/diagnostics.nc: what `laid diagnose --out analysis/<label>` writes."""
        return self.analysis(label) / "diagnostics.nc"

    def teacher_diagnosis(self, teacher: str) -> Path:
        """The teacher's `laid diagnose` output (analysis/<teacher>__base/diagnostics.nc): the
        evidence of layer_map: diagnosed, written once and read by the comparison, study and analysis."""
        return self.diagnosis(run_label(teacher, "base"))

    # --- learning-curve study (`laid study`) ------------------------------------------------
    @property
    def study(self) -> Path:
        return self.root / "study"

    def study_result(self, name: str, suffix: str = ".nc") -> Path:
        """study/<name>.nc (.md): one study config's curves and paired statistics."""
        return self.study / f"{name}{suffix}"

    def study_run(self, student: str, arm: str, seed: int) -> Path:
        """study/runs/<student>__<arm>__seed<k>: one training run; its budget exports under budgets/."""
        return self.study / "runs" / f"{run_label(student, arm)}__seed{seed}"

    def study_job_seconds(self, student: str, arm: str, seed: int) -> Path:
        """study/runs/<...>/job_seconds.json: wall seconds the run's job (train, export, evaluate, diagnose)
        took, summed over the invocations that worked on it (a resumed run keeps counting)."""
        return self.study_run(student, arm, seed) / "job_seconds.json"

    def study_eval(self, student: str, arm: str, seed: int, step: int) -> Path:
        return self.study_run(student, arm, seed) / "evals" / f"step-{step:08d}.nc"

    def study_diagnosis(self, student: str, arm: str, seed: int, step: int) -> Path:
        """Diagnostics of a budget export (step > 0) or of the untrained student (arm "base", step 0)."""
        if arm == "base":
            return self.study / "diagnose" / f"{run_label(student, 'base')}.nc"
        return self.study_run(student, arm, seed) / "diagnose" / f"step-{step:08d}.nc"
