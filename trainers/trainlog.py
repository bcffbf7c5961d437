"""The training log: one JSON object per logged optimizer step (loss terms, learning rates, time).

`train_log.jsonl` in the output folder, appended and flushed line by line so a crash loses at most
the line being written. On resume the lines after the checkpoint's step are dropped (they belong
to steps that will be redone), rewriting the file atomically.

The JSONL log is always written. `report_to` (config: none | tensorboard | wandb | trackio) also
sends every logged record, the run's hyperparameters and the evaluation results to an experiment
tracker through accelerate's trackers (`Accelerator(log_with=...)`, made by `tracking_kwargs`);
TensorBoard event files go to <output_dir>/tracking/<run name>/. `Tracking` is what the recipe
holds; with report_to "none" it does nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from laid.io import write_text

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def read_log(path: str | Path) -> list[dict]:
    """All records of a training log (notes included, as {"note": ...})."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a crash: everything before it is valid
    return out


def tracking_kwargs(report_to: str, output_dir: str | Path) -> dict:
    """Keyword arguments of `accelerate.Accelerator` for a tracker (`log_with`, project configuration).

    A tracker whose package is missing is a one-line error here, before any weight is loaded.
    """
    if report_to not in REPORT_TO:
        raise ValueError(f"report_to {report_to!r} is not one of {REPORT_TO}")
    if report_to == "none":
        return {}
    import importlib.util

    from accelerate.utils import ProjectConfiguration

    if importlib.util.find_spec(_PACKAGES[report_to]) is None:
        raise ValueError(f"report_to: {report_to} needs the {_PACKAGES[report_to]} package; "
                         f"`pip install {_PACKAGES[report_to]}` or set report_to: none")
    project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "tracking"))
    return {"log_with": report_to, "project_config": project}


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """A nested config as flat scalar hyperparameters ("lambdas.laid": 1.0); lists and None as text."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def eval_metrics(ds) -> dict[str, float]:
    """Scalars of an evaluation result (laid.eval.results) for a tracker: accuracy per size, window."""
    out = {f"eval/accuracy_{int(n)}": float(ds["accuracy"].sel(haystack_size=n)) for n in ds["haystack_size"].values}
    out.update({f"eval/compliance_{int(n)}": float(ds["compliance"].sel(haystack_size=n))
                for n in ds["haystack_size"].values})
    window = float(ds["effective_window"])
    if not math.isnan(window):
        out["eval/effective_window"] = window
    return out


def numeric_items(values: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a log record, flat: per-layer telemetry {"q_norm_ratio": {"2": 0.9}} becomes
    "q_norm_ratio/2", per-head lists "mixer_row_norm/2/0"; text and booleans are left out."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric_items(value, name + "/"))
        elif isinstance(value, (list, tuple)):
            out.update(numeric_items({str(i): v for i, v in enumerate(value)}, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            out[name] = float(value)
    return out


class Tracking:
    """The run's experiment tracker (or none): hyperparameters once, then numeric records by step."""

    def __init__(self, accelerator, report_to: str, run_name: str, config: dict):
        self.accelerator = accelerator
        self.active = report_to != "none"
        if not self.active:
            return
        if not getattr(accelerator, "log_with", None):
            raise ValueError(f"report_to: {report_to} needs an Accelerator made with log_with "
                             f"(trainers.recipe.make_accelerator does it); got one without trackers")
        accelerator.init_trackers(run_name, config=flat_hparams(config))

    def log(self, values: dict, step: int) -> None:
        if self.active:
            self.accelerator.log(numeric_items(values), step=int(step))

    def finish(self) -> None:
        if self.active:
            self.accelerator.end_training()
            self.active = False


class TrainLog:
    def __init__(self, path: str | Path, keep_until_step: int = 0, enabled: bool = True,
                 tracking: Tracking | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.tracking = tracking
        if not enabled:
            return
        kept = [r for r in read_log(self.path) if r.get("step", 0) <= keep_until_step]
        write_text("".join(json.dumps(r) + "\n" for r in kept), self.path)

    def _append(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def write(self, step: int, **values) -> None:
        self._append({"step": int(step), **values})
        if self.tracking is not None:
            self.tracking.log(values, step)

    def note(self, text: str, step: int = 0) -> None:
        """A free-text line (e.g. the vocabulary handling of the KL), kept across resumes (once)."""
        if self.enabled and any(r.get("note") == text for r in read_log(self.path)):
            return
        self._append({"step": int(step), "note": text})
