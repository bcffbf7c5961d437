"""`laid plan`: check a teacher/student pair from config files and print the distillation plan.

    laid plan --teacher DIR --student DIR [--layer-pairs 27:63,13:31 | --layer-map proportional
              | --layer-map diagnosed --teacher-diagnosis DIR] [--gpus N] [--images N] [--seq-len N]

The plan lists the layer pairs, the mixer shapes, the RoPE gain shape, the vocabulary handling
and an estimate of GPU memory per device. Nothing is loaded but config.json (models are built on
the meta device to count parameters), so a 32B plan runs on a laptop.

The sequence is a haystack as the family's processor makes it: `--images` images (default 20, the
paper's largest training haystack) of `--image-size` (default 640x480, a COCO photo) become T image
tokens (the family adapter's `planned_image_tokens`: Qwen-VL 391 (Qwen3-VL 300) per image, InternVL3
256 per tile, Gemma 3 256), and S = images x (tokens per image + 2 markers) + 64 text tokens unless
`--seq-len` is given (then T = min(images x tokens per image, S)).

Memory estimate per GPU (bytes; P = parameter count, s = n_gpus under ZeRO-3 / FSDP2 full
sharding, s = 1 without sharding; B batch, S sequence length, T image tokens, R max response length;
a = bytes of an activation / teacher weight: 2 in bf16 (GPU), 4 in fp32 (`--precision fp32`, CPU runs);
m vision-tower patches per image token: 4 for the Qwen-VL 2x2 merge and InternVL's pixel shuffle, 16
for Gemma 3's pooling):
  teacher weights      a P_t / s                  frozen: no grads, no optimizer state
  student states       (16 P_train + 4 P_frozen) / s   trainable: bf16 weights 2 + bf16 grads 2 + fp32
                                                  master 4 + AdamW m, v 8 (fp32 on CPU: 4 + 4 + 8);
                                                  frozen (the vision tower, freeze_vision): fp32 4
  LAid params         16 (mixers + gains)         replicated, tiny
  gather buffers       2 x 2 max(layer_t, layer_s)  (sharded) one layer in use + one prefetched
  teacher tail         (FSDP2) a V_t h_t: accelerate keeps the teacher's final norm + lm_head
                       gathered after the forward (reshard_after_forward False)
  student root         (FSDP2) a (V_s h_s) (x2 if untied): the DistillModule root unit (embeddings,
                       lm_head) stays gathered between forward and backward
  student activations  with gradient checkpointing: L_s B S h_s a (saved layer inputs)
                       + B S (6 h_s + 2 h_kv,s + 4 I_s) a x 2 (one layer's recompute + its grads);
                       without: L_s times the second term
  student vision       frozen (freeze_vision, the recipe's default): nothing is kept for backward (no
                       parameter and no input needs a gradient), so the tower costs what inference
                       costs, one block's working set B mT (4 v_h + 2 v_I) a, at the forward's start;
                       trained: depth B mT v_h a + B mT (6 v_h + 3 v_I) a x 2 (kept per block)
  teacher activations  B S (4 h_t + 2 I_t) a (one layer, no grad) + B mT (4 v_h + 2 v_I) a (vision)
  captured Q/K         per pair: B S ((H_t + H_kv,t) D a + (H_s + H_kv,s) D 4) (teacher Q/K, fp32
                       mixed targets)
  LAid loss            per pair: B S (H_s + H_kv,s) D 4 x 6 (what the alignment and attention-
                       matching terms keep for backward: fp32 Q/K copies, normalised rows,
                       differences; measured on real widths, tests/test_plan_realwidth.py)
  attention matching   8 B (H_s + H_t) chunk S 4 (a chunk's student and teacher logits,
                       softmaxes, the mixed target, terms)
  logits               3 B R (V_s + V_t) 4 (fp32 logits, log-softmax, grads at answer positions:
                       the recipe must compute logits only there, e.g. with logits_to_keep)
  overhead             2 GiB (CUDA context, allocator fragmentation)
Host RAM per node while loading (`host_ram`): without FSDP2's rank-0 loading every process loads
both models on the host (n (a P_t + 4 P_s)); with fsdp_cpu_ram_efficient_loading only local rank 0
does (a P_t + 4 P_s); ZeRO-3's zero.Init loads and partitions one tensor at a time (counted as the
largest layer per process, plus the safetensors files' page cache, which the OS can drop).
Checked against measured bytes on real-width layer-truncated models (tests/test_plan_realwidth.py:
within 25% for teacher weights, student states, student activations, captured Q/K, LAid loss).
It is an estimate (+-30%), to choose n_gpus and seq_len before renting GPUs, not a guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from laid.model.families import family_named
from trainers.layer_choice import DIAGNOSIS_ROWS
from trainers.pairing import LAYER_MAPS, Diagnosis, Pairing, check_pair

GiB = 1024**3
SHARDINGS = ("zero3", "fsdp2", "none")
TEXT_TOKENS = 64  # a VHs prompt's instruction, question and answer around the images
IMAGE_MARKERS = 2  # start / end of each image (<|vision_start|>, <img>, <start_of_image>, ...)


@dataclass
class Plan:
    pairing: Pairing
    n_gpus: int
    seq_len: int
    batch_size: int
    max_response: int
    chunk_size: int
    sharding: str  # "zero3" / "fsdp2" (teacher and student fully sharded) or "none"
    gradient_checkpointing: bool
    gain_layers: list[int]
    images: int = 20  # images per haystack
    tokens_per_image: int = 0  # image tokens one image becomes (placeholders)
    image_tokens: int = 0  # T: image tokens in one sequence
    memory: dict[str, float] = field(default_factory=dict)  # GiB per GPU, by component
    host_gib: float = 0.0  # host RAM per node while loading the models

    @property
    def gain_shapes(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(L, H, D/2), (L, H_kv, D/2); (L, 1, D/2) twice where a QK-norm makes the gain shared by all heads."""
        s = self.pairing.student
        h, h_kv = (1, 1) if s.qk_norm else (s.n_heads, s.n_kv_heads)
        return (len(self.gain_layers), h, s.head_dim // 2), (len(self.gain_layers), h_kv, s.head_dim // 2)

    @property
    def total_gib(self) -> float:
        return sum(self.memory.values())

    def format(self) -> str:
        p, t, s = self.pairing, self.pairing.teacher, self.pairing.student
        (gq, gk) = self.gain_shapes
        lines = [
            f"teacher  {t.path}",
            f"         {t.n_layers} layers, hidden {t.hidden_size}, {t.n_heads} heads / {t.n_kv_heads} KV, head_dim {t.head_dim}, vocab {t.vocab_size}, {_count(t.n_params)} params",
            f"student  {s.path}",
            f"         {s.n_layers} layers, hidden {s.hidden_size}, {s.n_heads} heads / {s.n_kv_heads} KV, head_dim {s.head_dim}, vocab {s.vocab_size}, {_count(s.n_params)} params",
            f"family   {family_named(s.family).label}; RoPE {_rope_text(t.rope)} (teacher), {_rope_text(s.rope)} (student)",
            f"layer pairs (student <- teacher; {p.layer_map}): " + ", ".join(f"{a} <- {b}" for a, b in p.layer_pairs),
            *(p.choice.describe() if p.choice is not None else []),
            f"mixers per pair: W_Q {p.q_mixer_shape[0]}x{p.q_mixer_shape[1]}, W_K {p.k_mixer_shape[0]}x{p.k_mixer_shape[1]}",
            f"RoPE gains: q {gq}, k {gk} on " + (f"all {s.n_layers} student layers" if self.gain_layers == list(range(s.n_layers)) else f"student layers {self.gain_layers}")
            + (" (shared by all heads: folded into q_norm / k_norm, trainers.rope_gain)" if s.qk_norm else ""),
            f"vocabulary: {p.vocab_note}",
            *(f"note: {n}" for n in p.notes),
            *(f"warning: {w}" for w in p.warnings),
            f"memory per GPU ({self.n_gpus} GPU(s), sharding {self.sharding}, batch {self.batch_size} x {self.seq_len} tokens "
            f"({self.image_tokens} image tokens: {self.images} images x {self.tokens_per_image}), response {self.max_response}, "
            f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}):",
            *(f"  {k:<22} {v:8.2f} GiB" for k, v in self.memory.items()),
            f"  {'total':<22} {self.total_gib:8.2f} GiB",
            f"host RAM per node while loading: {self.host_gib:.1f} GiB",
        ]
        return "\n".join(lines)

    __str__ = format


def _rope_text(rope: dict) -> str:
    """rope_parameters in one line: {'rope_type': 'default', ...} or one entry per layer type (Gemma 3)."""
    if rope and all(isinstance(v, dict) for v in rope.values()):
        return "; ".join(f"{kind}: {_rope_text(v)}" for kind, v in rope.items())
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in rope.items())


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def estimate_memory(p: Pairing, n_gpus: int, seq_len: int, batch_size: int = 1, max_response: int = 512,
                    chunk_size: int = 256, sharding: str = "zero3", gradient_checkpointing: bool = True,
                    n_gain_layers: int | None = None, precision: str = "bf16", freeze_vision: bool = True,
                    image_tokens: int | None = None) -> dict[str, float]:
    """Per-GPU memory by component in GiB (formula in the module docstring); image_tokens T per
    sequence (None: every token an image token, an upper bound)."""
    t, s = p.teacher, p.student
    a = {"bf16": 2, "fp32": 4}[precision]
    shard = n_gpus if sharding in ("zero3", "fsdp2") else 1
    b, n = batch_size, seq_len
    n_gain = s.n_layers if n_gain_layers is None else n_gain_layers
    gain_heads = 2 if s.qk_norm else s.n_heads + s.n_kv_heads  # one shared q and k gain under a QK-norm
    laid_params = p.n_laid_params + n_gain * gain_heads * (s.head_dim // 2)
    layer_work = b * n * (6 * s.hidden_size + 2 * s.n_kv_heads * s.head_dim + 4 * s.intermediate_size) * a * 2
    student_act = (s.n_layers * b * n * s.hidden_size * a + layer_work) if gradient_checkpointing else s.n_layers * layer_work
    n_img = n if image_tokens is None else min(image_tokens, n)
    patches = s.patches_per_token * n_img  # vision-tower patches of one sequence's images
    if freeze_vision:  # inference cost: one block's working set, nothing kept for backward
        student_vision = b * patches * (4 * s.vision_hidden_size + 2 * s.vision_intermediate_size) * a
    else:
        student_vision = s.vision_depth * b * patches * s.vision_hidden_size * a + b * patches * (6 * s.vision_hidden_size + 3 * s.vision_intermediate_size) * a * 2
    teacher_act = b * n * (4 * t.hidden_size + 2 * t.intermediate_size) * a + b * t.patches_per_token * n_img * (4 * t.vision_hidden_size + 2 * t.vision_intermediate_size) * a
    pairs = len(p.layer_pairs)
    qk = pairs * b * n * ((t.n_heads + t.n_kv_heads) * t.head_dim * a + (s.n_heads + s.n_kv_heads) * s.head_dim * 4)
    laid_loss = pairs * b * n * (s.n_heads + s.n_kv_heads) * s.head_dim * 4 * 6
    attn = 8 * b * (s.n_heads + t.n_heads) * min(chunk_size, n) * n * 4
    logits = 3 * b * max_response * (s.vocab_size + t.vocab_size) * 4
    sharded = sharding in ("zero3", "fsdp2") and n_gpus > 1
    gather = 2 * 2 * max(t.n_layer_params, s.n_layer_params) if sharded else 0
    frozen = s.n_vision_params if freeze_vision else 0
    parts = {
        "teacher weights": a * t.n_params / shard,
        "student states": (16 * (s.n_params - frozen) + 4 * frozen) / shard,
        "LAid params": 16 * laid_params,
        "gather buffers": gather,
        "student activations": student_act,
        "student vision": student_vision,
        "teacher activations": teacher_act,
        "captured Q/K": qk,
        "LAid loss": laid_loss,
        "attention matching": attn,
        "logits": logits,
        "overhead": 2 * GiB,
    }
    if sharding == "fsdp2" and n_gpus > 1:
        parts["teacher tail (FSDP2)"] = a * t.vocab_size * t.hidden_size
        parts["student root (FSDP2)"] = a * s.vocab_size * s.hidden_size * (1 if s.tie_word_embeddings else 2)
    return {k: v / GiB for k, v in parts.items()}


def host_ram(p: Pairing, n_gpus: int, sharding: str = "zero3", precision: str = "bf16") -> float:
    """Host RAM (GiB per node) while the processes load the two models (module docstring)."""
    t, s = p.teacher, p.student
    a = {"bf16": 2, "fp32": 4}[precision]
    both = a * t.n_params + 4 * s.n_params
    if sharding == "fsdp2":
        return both / GiB  # fsdp_cpu_ram_efficient_loading: local rank 0 only
    if sharding == "zero3":
        return n_gpus * 4 * max(t.n_layer_params, s.n_layer_params) / GiB
    return n_gpus * both / GiB


def plan(teacher_dir: str | Path, student_dir: str | Path, layer_pairs=None, n_gpus: int = 1, seq_len: int | None = None,
         batch_size: int = 1, max_response: int = 512, chunk_size: int = 256, sharding: str = "zero3",
         gradient_checkpointing: bool = True, gain_layers: list[int] | None = None, layer_map: str = "last",
         precision: str = "bf16", freeze_vision: bool = True, diagnosis: Diagnosis | None = None, images: int = 20,
         image_size: tuple[int, int] = (640, 480), tokens_per_image: int | None = None) -> Plan:
    """Check the pair (PairingError on failure) and estimate memory.

    The haystack: `images` images of `image_size` (width, height), each `tokens_per_image` image tokens
    (None: what the family's processor makes of that size); seq_len None = its length (module doc).

    gain_layers None = the student layers of the layer pairs (the recipe's default for RoPE gains).
    sharding: "zero3" (DeepSpeed ZeRO-3), "fsdp2" (adds the gathered teacher tail / student root)
    or "none". precision: "bf16" (GPU) or "fp32" (CPU runs).
    """
    if n_gpus < 1 or batch_size < 1 or images < 0 or (seq_len is not None and seq_len < 1):
        raise ValueError(f"plan needs gpus, seq_len and batch_size >= 1 and images >= 0 (got {n_gpus}, {seq_len}, {batch_size}, {images})")
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    p = check_pair(teacher_dir, student_dir, layer_pairs, layer_map, diagnosis)
    s = p.student  # one batch feeds both models: image processing is checked to be the same
    per_image = tokens_per_image if tokens_per_image is not None else \
        family_named(s.family).planned_image_tokens(s.vision, s.token_ids, s.image_processor, *image_size)
    seq_len = seq_len if seq_len is not None else images * (per_image + IMAGE_MARKERS) + TEXT_TOKENS
    n_img = min(images * per_image, seq_len)
    gains = sorted(gain_layers) if gain_layers is not None else sorted(s for s, _ in p.layer_pairs)
    mem = estimate_memory(p, n_gpus, seq_len, batch_size, max_response, chunk_size, sharding, gradient_checkpointing,
                          len(gains), precision, freeze_vision, n_img)  # fmt: skip
    return Plan(p, n_gpus, seq_len, batch_size, max_response, chunk_size, sharding, gradient_checkpointing, gains,
                images, per_image, n_img, mem, host_ram(p, n_gpus, sharding, precision))  # fmt: skip


def _run(args) -> int:
    result = plan(args.teacher, args.student, args.layer_pairs, n_gpus=args.gpus, seq_len=args.seq_len,
                  batch_size=args.batch_size, max_response=args.max_response, chunk_size=args.chunk_size,
                  sharding=args.sharding, gradient_checkpointing=not args.no_gradient_checkpointing,
                  precision=args.precision, layer_map=args.layer_map,
                  diagnosis=Diagnosis(args.teacher_diagnosis or "", args.diagnosed_layers, args.diagnosis_rows),
                  images=args.images, image_size=_size(args.image_size), tokens_per_image=args.tokens_per_image)
    print(result.format())
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--image-size {text!r} is not WIDTHxHEIGHT in pixels (e.g. 640x480)") from None
    return w, h


def register_plan(subparsers) -> None:
    """Add `laid plan` to the `laid` command (called by trainers/cli.py)."""
    p = subparsers.add_parser(
        "plan",
        help="check that a teacher/student pair can be distilled and print the plan (config files only)",
        description="From config.json alone: check the family, head_dim, RoPE, layers, vocabularies, processors; print "
        "layer pairs, mixer shapes, vocabulary handling and a memory estimate per GPU.",
    )
    p.add_argument("--teacher", required=True, help="teacher model folder (Hugging Face; Qwen2.5-VL, Qwen2-VL, Qwen3-VL, InternVL3 or Gemma 3)")
    p.add_argument("--student", required=True, help="student model folder")
    p.add_argument("--layer-pairs", default=None, help="STUDENT:TEACHER[,...] layer pairs, negatives from the end (default -1:-1, the last layers)")
    p.add_argument("--layer-map", choices=LAYER_MAPS, default="last",
                   help="named layer mapping when --layer-pairs is not given: last (default, the paper's), proportional "
                   "(every student layer) or diagnosed (where --teacher-diagnosis finds the teacher reading the needle)")
    p.add_argument("--teacher-diagnosis", help="diagnostics.nc (or its folder) of `laid diagnose` on the teacher, for --layer-map diagnosed")
    p.add_argument("--diagnosed-layers", type=int, default=1, help="teacher layers --layer-map diagnosed pairs (default 1)")
    p.add_argument("--diagnosis-rows", choices=tuple(DIAGNOSIS_ROWS), default="question",
                   help="rank layers by the needle mass of the question rows (default) or the answer row only (ablation)")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs the teacher and student are sharded over (default 1)")
    p.add_argument("--images", type=int, default=20, help="images per training haystack (default 20, the paper's largest)")
    p.add_argument("--image-size", default="640x480", help="WIDTHxHEIGHT of each image in pixels (default 640x480, a COCO photo)")
    p.add_argument("--tokens-per-image", type=int, default=None,
                   help="image tokens per image (default: what the family's processor makes of --image-size)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per training sequence (default: the haystack's, images x (tokens per image + 2) + 64 text tokens)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per GPU per micro-step (default 1, as the paper)")
    p.add_argument("--max-response", type=int, default=512, help="answer positions with logits (default 512, as the paper)")
    p.add_argument("--chunk-size", type=int, default=256, help="query chunk of the attention-matching loss (default 256)")
    p.add_argument("--sharding", choices=SHARDINGS, default="zero3", help="zero3 = DeepSpeed ZeRO-3 (default), fsdp2 = FSDP2 full sharding, none")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="activations and teacher weights: bf16 (GPU, default) or fp32 (CPU)")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="estimate without gradient checkpointing")
    p.set_defaults(func=_run)
