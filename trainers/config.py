"""Typed configuration of one distillation run (`laid distill --config configs/distill/X.yaml`).

Defaults are the paper's Implementation Details where it states them (AdamW, lr 1e-5 for the
student and 1e-4 for the mixing weights, warmup ratio 0.05, 10 epochs, per-device batch 1 with 8
gradient-accumulation steps, max response length 512, final layers aligned, KD weight 0.3, LoRA
rank 8). Where the paper is silent the choice is written next to the field. Unknown keys and
values of the wrong type are errors naming the key, so a typo never silently falls back to a
default. The full config is written to the output folder and into the export of every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laid.config import apply_overrides, from_dict, to_dict, to_yaml  # noqa: F401 (re-exported)
from laid.config import load_config as _load
from laid.eval.settings import EvalSettings
from laid.methods import TRAINED_METHODS
from laid.schedule import SCHEDULES as LR_SCHEDULES
from trainers.losses.attention_matching import DistanceWeighting
from trainers.trainlog import REPORT_TO

METHODS = TRAINED_METHODS  # names from the registry (laid.methods), the rows of METHOD_TERMS below
TERMS = ("laid", "attn", "kl", "sft")  # loss terms, weighted by `lambdas.<term>`

# Which loss terms and trainable extras each method uses. "attn" (progressive distance-weighted
# attention matching) and the RoPE gain are LAid's two components from the abstract; "laid" is the
# Eq. 7 Q/K alignment. KD = KL + SFT on the full student; SFT-LoRA = SFT on LoRA adapters, no teacher.
METHOD_TERMS: dict[str, tuple[str, ...]] = {
    "laid": ("laid", "attn", "kl", "sft"),
    "laid-no-kl": ("laid", "attn", "sft"),
    "laid-no-laid": ("attn", "kl", "sft"),
    "kd": ("kl", "sft"),
    "sft": ("sft",),  # full fine-tuning on the labels, no teacher: what the task alone teaches
    "sft-lora": ("sft",),
}
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
MIXER_INITS = ("overlap", "least_squares")
LAYER_MAPS = ("last", "proportional", "diagnosed")  # trainers.pairing.map_layers, trainers.layer_choice
ATTN_ROWS = ("all", "text", "question")  # laid.model.token_masks
DIAGNOSIS_ROWS = ("question", "answer")  # trainers.layer_choice
ALIGNMENTS = ("cosine", "paper")  # trainers.losses.qk_alignment
ATTENTION_TARGETS = ("teacher_heads", "matched_heads", "mixed_qk")  # trainers.losses.attention_matching
ATTN_DISTANCES = ("mrope", "token")
ATTN_GRADS = ("direction", "full")  # trainers.losses.attention_matching.direction_only


@dataclass
class Lambdas:
    """Weights of Eq. 8/9. The paper gives only "alpha 0.3 for knowledge distillation"; we read it
    as the usual KD mix alpha * KL + (1 - alpha) * SFT, and weight both LAid terms 1."""

    laid: float = 1.0  # Q/K alignment (Eq. 7)
    attn: float = 1.0  # progressive distance-weighted attention matching
    kl: float = 0.3
    sft: float = 0.7


@dataclass
class LoraSettings:
    """SFT(LoRA) baseline. The paper states rank 8 only; alpha = 2 x rank, no dropout and all
    linear layers of the language model are the defaults of common VLM fine-tuning tools that use
    rank 8 by default (the vision tower is left out: the task's difficulty is in the text decoder)."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # Regex (PEFT full-match) so the vision tower's own gate/up/down_proj are not adapted.
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class DataSettings:
    """Training examples: the VHs train split (short haystacks only, as the paper's 2-20 images)."""

    train_dir: str = ""  # VHs split root (e.g. runs/x/data/train), a setting folder or one visual_haystack_N.json
    image_root: str = ""  # image paths in the JSON are relative to this (e.g. runs/x/data)
    # The paper's training set is 5,000 question-answer pairs; single-needle by default, add
    # "multi_needle_2" / "multi_needle_3" to train on the multi-needle files as well.
    settings: list[str] = field(default_factory=lambda: ["single_needle"])
    min_haystack: int = 2
    max_haystack: int = 20
    max_examples: int | None = None  # None = all (the paper: 5,000); a cap keeps the toy fast
    check_images: bool = True  # verify every image file exists when loading
    allow_outside_image_root: bool = False  # accept absolute / '..'-escaping image paths (refused by default)


@dataclass
class DistillEval(EvalSettings):
    """Evaluate the export after training (laid.eval) into output_dir/eval.nc when enabled; the
    evaluation fields are laid.eval.settings.EvalSettings, shared with `laid eval` and the comparison."""

    enabled: bool = False
    test_dir: str = ""  # VHs test split root (e.g. runs/x/data/test)
    image_root: str = ""  # default: data.image_root


@dataclass
class DistillConfig:
    teacher_dir: str = ""
    student_dir: str = ""
    output_dir: str = ""
    method: str = "laid"
    # [[student_layer, teacher_layer], ...] (negatives from the end); None = use `layer_map`.
    layer_pairs: list[list[int]] | None = None
    # Layers aligned when layer_pairs is null: "last" = the last layer of each (the paper's 27 <-> 63);
    # "proportional" = every student layer i <- teacher layer round(i (L_t - 1) / (L_s - 1)), first to
    # first and last to last (trainers.pairing); "diagnosed" = the teacher layers whose heads put the
    # most attention on the needle at long haystacks, read from `teacher_diagnosis`, each paired with
    # the student layer at the same depth fraction (trainers.layer_choice; `laid plan` prints the evidence).
    layer_map: str = "last"
    # diagnostics.nc of the teacher written by `laid diagnose` (or its folder): the evidence of
    # layer_map: diagnosed. Comparisons and the study fill it in from their run folder.
    teacher_diagnosis: str = ""
    diagnosed_layers: int = 1  # how many teacher layers layer_map: diagnosed pairs (the best first)
    # Which rows' needle mass ranks the layers: "question" (every token after the images) | "answer"
    # (the answer row only: the ablation, blind to heads that read from a question word).
    diagnosis_rows: str = "question"
    # Query rows of the attention matching (keys are always every valid token): "all"; "text" =
    # every non-image token; "question" = the tokens after the last image (instruction, question,
    # answer). A retrieval head reads the haystack from the question; image rows mostly attend
    # within and between images, and matching them asks the student to copy the teacher's visual mixing.
    attn_rows: str = "all"
    # Q/K alignment form: "cosine" = per-head scale-free (1 - cosine of each head's Q/K block, unit-row
    # mixers: cannot be won by shrinking); "paper" = Eq. 7 literally (squared error, free mixers),
    # the degenerate ablation. trainers.losses.qk_alignment explains both.
    alignment: str = "cosine"
    # Attention-matching target: "teacher_heads" = convex mix of the teacher's own per-head attention
    # maps, weighted by the Q/K head mixer (detached); "matched_heads" = for each student head the one
    # teacher head whose attention on the batch's matched rows is closest to its own (KL; pairs heads by
    # function: the Q/K mixer paired the testbed student's retrieval head with the teacher's
    # non-retrieval heads, docs/HISTORY.md session 7); "mixed_qk" = softmax of the mixed Q/K (the
    # earlier ablation, which contains cross-KV-group terms and trains the mixers towards the student).
    attention_target: str = "teacher_heads"
    # Sharpness of the attention target's mix over teacher heads: a_ij ~ (w_ij^2 e_j)^power. 1 = the
    # energy shares; larger values approach each student head's dominant teacher head (a mix of maps
    # that attend to different keys is flatter than each, and pulls the student's attention flatter).
    attn_mix_power: float = 1.0
    # Distance of the progressive weighting: "mrope" = max-axis M-RoPE position-id difference (what
    # RoPE rotates by); "token" = token-index difference.
    attn_distance: str = "mrope"
    # What the attention-matching term may change in the student's Q/K: "direction" = only where each
    # query / key vector points (its gradient is projected orthogonal to every vector, so it exerts no
    # first-order force on the Q/K norms; their scale is left to KL / SFT; not a hard constraint:
    # trainers.losses.attention_matching);
    # "full" = plain gradients (the ablation: they shrink the aligned layer's Q/K, docs/method.md).
    attn_grad: str = "direction"
    # Health telemetry warns (one line, and in the log record) when an aligned layer's student/teacher
    # Q or K norm ratio falls below this fraction of its value at the first logged step.
    norm_warn_fraction: float = 0.9
    lambdas: Lambdas = field(default_factory=Lambdas)
    tau: float = 2.0  # KL temperature; the paper does not state it, 2 is the common KD choice
    # Progressive distance weighting of the attention matching (schedule: see its docstring).
    attention_matching: DistanceWeighting = field(default_factory=DistanceWeighting)
    # Optimizer steps over which that schedule runs (then it holds its end value); null = the whole
    # run. A fixed ramp makes a budget export of a long run the model a run of that budget makes.
    attn_ramp_steps: int | None = None
    attn_chunk_size: int = 256  # query rows per chunk: memory linear in sequence length
    # Head mixer start: "overlap" (contiguous averages of teacher heads, trainers.head_mixer) or
    # "least_squares" (the best mix for the untrained student on the first global batch).
    mixer_init: str = "overlap"
    rope_gain: bool = True  # learnable RoPE response gain (LAid methods only)
    rope_gain_layers: list[int] | None = None  # student layers with gains; None = the aligned ones
    lr_student: float = 1e-5
    lr_aux: float = 1e-4  # head mixers and RoPE gains ("weight coefficients" in the paper)
    # The RoPE gains' own rate; null = lr_aux (the paper's single rate). A gain scales its rotary
    # pair's logits multiplicatively and Adam moves it by ~lr per step whatever the loss weights, so
    # a rate tuned for mixers can swing gains far from 1 in an epoch (docs/method.md, "RoPE response gain").
    lr_gain: float | None = None
    weight_decay: float = 0.0  # student params only; never on mixers/gains (decay towards 0 is meaningless for a gain)
    warmup_ratio: float = 0.05
    warmup_steps: int | None = None  # absolute warmup steps; overrides warmup_ratio when set (transformers' convention)
    lr_schedule: str = "cosine"
    max_grad_norm: float = 1.0
    epochs: int = 10
    # Optimizer steps of the run. When set it overrides `epochs` (transformers' Trainer convention):
    # the data loops over further epochs, reshuffled, until max_steps; null = epochs x steps per epoch.
    max_steps: int | None = None
    # Extra exports written during training at these optimizer steps (<output_dir>/budgets/step-XXXXXXXX/,
    # gains folded like the final export): evaluating them gives accuracy against training budget from
    # one run (`laid study`); meaningful with a schedule that does not decay towards them (constant).
    export_steps: list[int] = field(default_factory=list)
    per_device_batch_size: int = 1
    grad_accum: int = 8
    max_response_len: int = 512  # answer tokens kept per example (VHs answers are one word)
    mixed_precision: str = "auto"  # auto = bf16 on GPU, fp32 ("no") on CPU
    gradient_checkpointing: bool = False
    freeze_vision: bool = True  # the paper is silent; the haystack task's position handling is in the LM
    seed: int = 0
    save_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    keep_last: int = 2  # checkpoints kept
    log_every: int = 1
    # Experiment tracker besides train_log.jsonl (always written): none | tensorboard | wandb | trackio,
    # through accelerate's trackers; TensorBoard event files go to <output_dir>/tracking/.
    report_to: str = "none"
    # Hugging Face Hub repo id ("user/name") to upload the export (with its model card) to; None = no upload.
    push_to_hub: str | None = None
    data: DataSettings = field(default_factory=DataSettings)
    eval: DistillEval = field(default_factory=DistillEval)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {METHODS}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision {self.mixed_precision!r} is not one of {MIXED_PRECISION}")
        if self.mixer_init not in MIXER_INITS:
            raise ValueError(f"mixer_init {self.mixer_init!r} is not one of {MIXER_INITS}")
        if self.report_to not in REPORT_TO:
            raise ValueError(f"report_to {self.report_to!r} is not one of {REPORT_TO}")
        if self.push_to_hub is not None and self.push_to_hub.count("/") != 1:
            raise ValueError(f"push_to_hub {self.push_to_hub!r} must be a Hub repo id 'user/name' (or null)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} is not one of {LR_SCHEDULES}")
        for name in ("per_device_batch_size", "grad_accum", "epochs", "keep_last", "log_every", "max_response_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 or null, got {self.warmup_steps}")
        if any(int(s) < 1 for s in self.export_steps):
            raise ValueError(f"export_steps must be optimizer steps >= 1, got {self.export_steps}")
        if self.lr_gain is not None and self.lr_gain <= 0:
            raise ValueError(f"lr_gain must be > 0 or null (= lr_aux), got {self.lr_gain}")
        if self.attn_ramp_steps is not None and self.attn_ramp_steps < 1:
            raise ValueError(f"attn_ramp_steps must be >= 1 or null, got {self.attn_ramp_steps}")
        if self.diagnosed_layers < 1:
            raise ValueError(f"diagnosed_layers must be >= 1, got {self.diagnosed_layers}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        for pair in self.layer_pairs or []:
            if len(pair) != 2:
                raise ValueError(f"layer_pairs entries are [student_layer, teacher_layer], got {pair}")
        for name, allowed in (("layer_map", LAYER_MAPS), ("alignment", ALIGNMENTS),
                              ("attention_target", ATTENTION_TARGETS), ("attn_distance", ATTN_DISTANCES),
                              ("attn_grad", ATTN_GRADS), ("attn_rows", ATTN_ROWS),
                              ("diagnosis_rows", DIAGNOSIS_ROWS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {allowed}")
        if self.layer_pairs and self.layer_map != "last":
            raise ValueError(f"layer_pairs and layer_map: {self.layer_map} are both set; give explicit pairs or a map, not both")
        if not 0 < self.attn_mix_power <= 100:
            raise ValueError(f"attn_mix_power must be in (0, 100], got {self.attn_mix_power}")
        if not 0 < self.norm_warn_fraction <= 1:
            raise ValueError(f"norm_warn_fraction must be in (0, 1], got {self.norm_warn_fraction}")

    # --- what the method uses -------------------------------------------------------------
    def weights(self) -> dict[str, float]:
        """Loss weights after the method: terms the method does not use are 0."""
        active = METHOD_TERMS[self.method]
        return {t: (float(getattr(self.lambdas, t)) if t in active else 0.0) for t in TERMS}

    @property
    def uses_teacher(self) -> bool:
        w = self.weights()
        return any(w[t] > 0 for t in ("laid", "attn", "kl"))

    @property
    def uses_mixers(self) -> bool:
        w = self.weights()
        return w["laid"] > 0 or w["attn"] > 0

    @property
    def trains_mixers(self) -> bool:
        """Whether any term's gradient reaches the head mixers: the Q/K alignment term, or attention
        matching to the mixed Q/K. Otherwise they keep their `mixer_init` values and only weight the
        teacher maps attention matching targets (detached)."""
        w = self.weights()
        return w["laid"] > 0 or (w["attn"] > 0 and self.attention_target == "mixed_qk")

    @property
    def uses_gain(self) -> bool:
        return self.rope_gain and self.method.startswith("laid")

    @property
    def uses_lora(self) -> bool:
        return self.method == "sft-lora"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    # Keys that change what a run trains only through the LAid terms / the gains.
    _MIXER_KEYS = ("layer_pairs", "layer_map", "teacher_diagnosis", "diagnosed_layers", "diagnosis_rows", "attn_rows",
                   "alignment", "attention_target", "attn_mix_power", "attn_distance", "attn_grad", "attention_matching",
                   "attn_ramp_steps", "attn_chunk_size", "mixer_init", "lr_aux", "norm_warn_fraction")
    _GAIN_KEYS = ("rope_gain", "rope_gain_layers", "lr_gain")
    _RUN_KEYS = ("output_dir", "max_steps", "epochs", "export_steps", "save_every", "keep_last", "log_every", "report_to",
                 "push_to_hub", "eval")

    def training_signature(self) -> dict[str, Any]:
        """The settings that decide the trained weights, step by step: the config without paths of
        the run, its length and logging, with the loss weights as the method uses them and without
        the settings of terms or parameters the method does not have (a KD run is the same run
        whatever its unused LAid weights). Two runs with equal signatures train identically up to
        the shorter one's last step."""
        d = {k: v for k, v in self.to_dict().items() if k not in self._RUN_KEYS}
        d["lambdas"] = self.weights()
        drop = (() if self.uses_mixers else self._MIXER_KEYS) + (() if self.uses_gain else self._GAIN_KEYS)
        return {k: v for k, v in d.items() if k not in drop}

    def to_yaml(self) -> str:
        return to_yaml(self)


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] = ()) -> DistillConfig:
    """Read a YAML distill config (or defaults when path is None) and apply key=value overrides."""
    return _load(DistillConfig, path, overrides, what="distill config")


def trained_differently(cfg: DistillConfig) -> list[str]:
    """The training-signature keys in which `cfg` differs from the config its output_dir was trained
    with (distill_config.yaml there); [] when nothing was trained there yet. A workflow that reuses
    a run folder asks this first, so that an edited config never passes off the old run as its own."""
    saved = Path(cfg.output_dir) / "distill_config.yaml"
    if not saved.is_file():
        return []
    old, new = resolve_folders(load_config(saved).training_signature()), resolve_folders(cfg.training_signature())
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# Paths compared as the folders they name, not as strings: a run folder given relative
# (`--run-dir runs/default`) and absolute (the main job) is one run folder.
_PATH_KEYS = ("teacher_dir", "student_dir", "teacher_diagnosis", "data.train_dir", "data.image_root")


def resolve_folders(signature: dict[str, Any]) -> dict[str, Any]:
    """`signature` with its path keys (_PATH_KEYS, where present) as resolved absolute paths (in place)."""
    for key in _PATH_KEYS:
        *parents, leaf = key.split(".")
        node = signature
        for part in parents:
            node = node.get(part) if isinstance(node.get(part), dict) else {}
        if node.get(leaf):
            node[leaf] = str(Path(node[leaf]).expanduser().resolve())
    return signature
