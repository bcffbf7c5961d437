"""The model card (README.md) of an export, and the optional upload of the export to the Hugging Face Hub.

A folder on the Hub says nothing of how it was made unless its README does: the card names the base
student, the teacher, the method and its loss weights, the data, the optimizer steps, the last
logged loss terms, the full config, and the evaluation table when the run evaluated its export
(`eval.enabled`). It is written by the export and rewritten after the evaluation.

`push_to_hub(export_dir, repo_id)` uploads the folder with `huggingface_hub` (config field
`push_to_hub: user/name`). It needs network and a token, so tests never call it; they test the card.
"""

from __future__ import annotations

import json
from pathlib import Path

from laid.io import write_text
from laid.methods import LABELS
from trainers.config import DistillConfig

CARD = "README.md"
_LAID = ("long-window anchoring distillation: query/key alignment to the teacher through learned head mixers, "
         "progressive distance-weighted attention matching, KL to the teacher and a learnable RoPE response gain")
METHOD_TEXT = {
    "sft-lora": "supervised fine-tuning with LoRA adapters (merged into the weights), no teacher",
    "sft": "full supervised fine-tuning on the labels alone, no teacher",
    "kd": "knowledge distillation from the teacher's output distribution (KL)",
    "laid": _LAID,
    "laid-no-kl": _LAID + ", without the KL term (ablation)",
    "laid-no-laid": _LAID + ", without the query/key alignment term (ablation)",
}


def _method_text(method: str) -> str:
    return f"{LABELS.get(method, method)}, {METHOD_TEXT.get(method, method)}"


def _last_record(train_log: str) -> dict:
    last = {}
    for line in train_log.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if "note" not in record:
            last = record
    return last


def eval_table(ds) -> str:
    """Markdown table of an evaluation result (laid.eval.results): one row per haystack size."""
    rows = ["| haystack size (images) | samples | accuracy | std (bootstrap) | compliance |", "|---:|---:|---:|---:|---:|"]
    for n in ds["haystack_size"].values:
        r = ds.sel(haystack_size=n)
        rows.append(f"| {int(n)} | {int(r['n_samples'])} | {float(r['accuracy']):.3f} | {float(r['accuracy_std']):.3f} "
                    f"| {float(r['compliance']):.2f} |")
    w = ds["effective_window"]
    rows.append("")
    rows.append(f"Effective window (accuracy >= {w.attrs.get('threshold')}): {float(w):.2f} images"
                + (" (a lower bound: never below the threshold)" if int(w.attrs.get("censored", 0)) else "")
                + f". Protocol: {ds.attrs.get('protocol', 'ours')}, {ds.attrs.get('scoring', '?')} scoring, "
                f"setting {ds.attrs.get('needle_setting', '?')}.")
    return "\n".join(rows)


def model_card(cfg: DistillConfig, train_log: str = "", eval_ds=None) -> str:
    """README.md text for the export of a run of `cfg` (train_log: the JSONL text; eval_ds: its evaluation)."""
    last = _last_record(train_log)
    steps = last.get("step", "unknown")
    # The loss terms: scalar values only (the health telemetry's per-layer objects and the gradient
    # norms stay in train_log.jsonl / head_weights.nc).
    terms = {k: v for k, v in last.items() if k not in ("step", "epoch", "elapsed_s") and not k.startswith("lr_")
             and not k.endswith("_grad_norm") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    student, teacher = Path(cfg.student_dir).name or cfg.student_dir, Path(cfg.teacher_dir).name or cfg.teacher_dir
    d = cfg.data
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text",
             "tags: [laid, distillation, qwen2.5-vl, visual-haystacks, long-context]", "---"]
    lines = front + [
        f"# {student} distilled with {cfg.method}", "",
        f"A Qwen2.5-VL student trained by the LAid workbench. Plain Hugging Face folder: RoPE gains folded into "
        f"q_proj/k_proj{', LoRA merged' if cfg.uses_lora else ''}; loads with `from_pretrained`.", "",
        "| | |", "|---|---|",
        f"| base student | `{cfg.student_dir}` |",
        f"| teacher | `{cfg.teacher_dir}`{'' if cfg.uses_teacher else ' (not used by this method)'} |",
        f"| method | `{cfg.method}`: {_method_text(cfg.method)} |",
        f"| loss weights | {json.dumps(cfg.weights())} |",
        f"| layer pairs (student, teacher) | {cfg.layer_pairs if cfg.layer_pairs is not None else f'layer_map: {cfg.layer_map}'} |",
        f"| data | `{d.train_dir}` (settings {', '.join(d.settings)}, haystacks of {d.min_haystack}-{d.max_haystack} "
        f"images, {d.max_examples if d.max_examples is not None else 'all'} examples) |",
        f"| optimizer steps | {steps} (batch {cfg.per_device_batch_size} x accumulation {cfg.grad_accum} per process) |",
        f"| learning rates | student {cfg.lr_student}, mixers {cfg.lr_aux}, RoPE gains {cfg.lr_gain if cfg.lr_gain is not None else cfg.lr_aux}, {cfg.lr_schedule} schedule |",
        f"| last logged loss terms | {json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in terms.items()})} |",
        "",
        "## Evaluation (Visual Haystacks)", "",
        eval_table(eval_ds) if eval_ds is not None else "Not evaluated in this run (`eval.enabled: false`); "
        "run `laid eval --model <this folder> --data <VHs> --image-root <images> --out result.nc`.",
        "", "## Config", "", "```yaml", cfg.to_yaml().rstrip(), "```", "",
    ]
    return "\n".join(lines)


def write_model_card(export_dir: str | Path, cfg: DistillConfig, eval_ds=None) -> Path:
    """(Re)write <export_dir>/README.md from the run config, the export's train_log.jsonl and `eval_ds`."""
    export_dir = Path(export_dir)
    log = export_dir / "train_log.jsonl"
    return write_text(model_card(cfg, log.read_text() if log.is_file() else "", eval_ds), export_dir / CARD)


def push_to_hub(export_dir: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload the export folder (weights, processor, README.md card) to the Hub repo `repo_id`; returns its URL.

    Needs network and a Hugging Face token (HF_TOKEN or `token`); never run by the tests.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(export_dir), repo_id=repo_id, commit_message="LAid workbench export")
    return f"https://huggingface.co/{repo_id}"
