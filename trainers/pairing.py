"""Can this teacher distil into this student? Checks from config files alone (no weights).

`check_pair(teacher_dir, student_dir, layer_pairs)` reads config.json (and tokenizer / processor
files when present), builds both models on the meta device to count parameters, and returns a
`Pairing`: resolved layer pairs, mixer shapes, vocabulary handling. It raises `PairingError`
(a ValueError: `laid` prints it as one line) naming every reason the pair cannot work:

- one supported family for both (`laid.model.families`; a cross-family pair is refused in one line:
  tokenizers, image tokens and RoPE differ);
- the same RoPE at every layer pair: the paired layers' rotary layouts (frequency and position axis
  per rotary pair, from each model's own rotary module, so rope_type, theta, mrope_section,
  interleaving and Gemma 3's per-layer-type bases all count) must agree, or rotated Q/K at the same
  position would not be comparable. Where head_dims differ (Gemma 3 27B: 128, 4B: 256) the pair
  works if every rotary pair of the smaller head has a twin in the larger one: the Q/K alignment
  then runs on those shared pairs (`Pairing.qk_dims`); otherwise "head_dim differs" is an error.
  Named maps move a teacher layer to the nearest one of the student layer's type (Gemma 3: sliding
  or full), explicit pairs of different types are refused;
- valid layer pairs (student layer, teacher layer), student layers distinct: explicit pairs, or a
  named map (`map_layers`): "last" (default, the last full-attention layer of each: the paper's
  27 <-> 63 for 7B <- 32B, 35 <- 63 for 3B; Gemma 3, whose last layers are sliding-window ones,
  29 <- 59 for 4B <- 27B) or "proportional" (every student layer, spread over the teacher's),
  or "diagnosed" (where the teacher's diagnosis finds it reading the needle: trainers.layer_choice);
  a pair on a sliding-window layer is allowed but warned about (`Pairing.warnings`: what the window
  sees);
- the same image processing and vision token layout (patch size, merge size, temporal patch size,
  normalisation, pixel bounds, special token ids): the student and the teacher must turn one batch
  into the same token sequence, so token i is the same token in both;
- the same tokenizer where both folders ship tokenizer.json: shared ids must mean the same token,
  and every token id must fit under both vocabularies so the KL over shared ids covers all text.
Vocabulary sizes may differ: the KL then runs over the shared ids (trainers.losses.distillation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from laid.model.families import (FULL, SLIDING, RotaryLayout, family_named, family_of, pair_dims, rotary_from_config,
                                 shared_pairs, snap_to_type, text_decoder)
from laid.model.loading import check_model_dir
from trainers.layer_choice import LayerChoice, choose_layers
from trainers.losses.distillation import shared_vocab_note


class PairingError(ValueError):
    """Teacher and student cannot be distilled as configured; the message lists the reasons."""


@dataclass
class ModelShape:
    """What distillation needs to know about one model folder (from its config files)."""

    path: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rope: dict
    vision: dict
    token_ids: dict
    tie_word_embeddings: bool
    n_params: int  # whole model
    n_vision_params: int
    n_layer_params: int  # one text decoder layer (the largest unit ZeRO-3 gathers)
    vision_hidden_size: int = 0
    vision_intermediate_size: int = 0
    vision_depth: int = 0
    image_processor: dict | None = None
    tokenizer_vocab: dict | None = field(default=None, repr=False)  # id -> token, if tokenizer.json exists
    family: str = "qwen2_5_vl"  # laid.model.families key
    layer_types: list[str] = field(default_factory=list)  # per text layer: full_attention | sliding_attention
    layouts: dict[str, RotaryLayout] = field(default_factory=dict, repr=False)  # layer type -> rotary layout
    qk_norm: bool = False  # per-head QK-norm before RoPE (the RoPE gain is then shared by all heads)
    deepstack: list[int] = field(default_factory=list)  # text layers after which vision features are added
    patches_per_token: int = 4  # vision-tower patches behind one image token
    sliding_window: int | None = None  # tokens a sliding-window layer's query sees (Gemma 3: 1024)

    def layout(self, layer: int) -> RotaryLayout:
        return self.layouts[self.layer_types[layer]]



def _read_image_processor(path: Path) -> dict | None:
    if (path / "preprocessor_config.json").is_file():  # real checkpoints
        return json.loads((path / "preprocessor_config.json").read_text())
    if (path / "processor_config.json").is_file():  # our zoo folders (processor + image processor in one)
        return json.loads((path / "processor_config.json").read_text()).get("image_processor")
    return None


def _read_tokenizer_vocab(path: Path) -> dict[int, str] | None:
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    vocab = data.get("model", {}).get("vocab") or {}
    if isinstance(vocab, list):  # unigram: [[token, score], ...]
        vocab = {tok: i for i, (tok, _) in enumerate(vocab)}
    ids = {int(i): tok for tok, i in vocab.items()}
    ids.update({int(t["id"]): t["content"] for t in data.get("added_tokens", [])})
    return ids


def read_shape(model_dir: str | Path) -> ModelShape:
    """ModelShape of a model folder of any supported family from config.json (+ tokenizer / processor files)."""
    path = check_model_dir(model_dir)
    family = family_of(path)
    cfg = AutoConfig.from_pretrained(path)
    text, vision = family.text_config(cfg), cfg.vision_config
    cfg.tie_word_embeddings = family.tie_word_embeddings(cfg)  # as the checkpoint holds them (InternVL3: untied)
    with torch.device("meta"):  # exact parameter counts without allocating anything
        model = AutoModelForImageTextToText.from_config(cfg)
    count = lambda params: sum(p.numel() for p in params)
    attn = text_decoder(model)[1][0].self_attn  # head_dim as the model computes it (Qwen2-VL ignores config.head_dim)
    rotary = rotary_from_config(model)  # real frequencies: the meta model's buffers hold none
    types = family.layer_types(cfg)
    v_width, v_mlp, v_depth = family.vision_dims(cfg)
    return ModelShape(
        path=str(path),
        n_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        n_heads=text.num_attention_heads,
        n_kv_heads=text.num_key_value_heads,
        head_dim=attn.head_dim,
        vocab_size=text.vocab_size,
        max_position_embeddings=text.max_position_embeddings,
        rope=dict(text.rope_parameters or {}),
        vision={k: getattr(vision, k, None) for k in family.vision_keys},
        token_ids={k: getattr(cfg, k, None) for k in family.token_keys},
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        n_params=count(model.parameters()),
        n_vision_params=count(p for n, p in model.named_parameters() if n.startswith(family.vision_prefixes)),
        n_layer_params=count(text_decoder(model)[1][0].parameters()),
        vision_hidden_size=v_width,
        vision_intermediate_size=v_mlp,
        vision_depth=v_depth,
        image_processor=_read_image_processor(path),
        tokenizer_vocab=_read_tokenizer_vocab(path),
        family=family.name,
        layer_types=types,
        layouts={t: family.rotary_layout(rotary, t) for t in set(types)},
        qk_norm=hasattr(attn, "q_norm"),
        deepstack=family.deepstack_layers(cfg),
        patches_per_token=family.patches_per_token(cfg),
        sliding_window=getattr(text, "sliding_window", None) if SLIDING in types else None,
    )


def parse_layer_pairs(spec: str | list | None) -> list[tuple[int, int]] | None:
    """'27:63,13:31' (student:teacher, negatives count from the end) -> [(27, 63), (13, 31)]."""
    if spec is None or spec == "" or spec == []:
        return None
    if isinstance(spec, str):
        items = [p.strip() for p in spec.split(",") if p.strip()]
        pairs = []
        for item in items:
            parts = item.split(":")
            try:
                if len(parts) != 2:
                    raise ValueError
                pairs.append((int(parts[0]), int(parts[1])))
            except ValueError:
                raise PairingError(f"layer pair {item!r} is not STUDENT:TEACHER with integer layers (e.g. 27:63,-1:-1)") from None
        return pairs
    return [(int(s), int(t)) for s, t in spec]


LAYER_MAPS = ("last", "proportional", "diagnosed")


def last_full_layer(types: list[str]) -> int:
    """The last full-attention layer (layers typed as in `Family.layer_types`); the last layer if none is."""
    full = [i for i, kind in enumerate(types) if kind == FULL]
    return full[-1] if full else len(types) - 1


def map_layers(layer_map: str, n_student: int, n_teacher: int, student_types: list[str] | None = None,
               teacher_types: list[str] | None = None) -> list[tuple[int, int]]:
    """Layer pairs of a named map (student layer, teacher layer), non-negative.

    "last": the last full-attention layer of each (types from the family adapter's `layer_types`;
    all layers are full ones where none are given), the paper's choice (27 <-> 63), and for Gemma 3
    the last global layers (29 <- 59 for 4B <- 27B) rather than its last, sliding-window, ones
    (33 <- 61: each query sees 1024 tokens). "proportional": every student
    layer i <- teacher layer round(i (L_t - 1) / (L_s - 1)) (half up), so the first layers pair, the
    last layers pair and the rest spread evenly: depth fraction matched to depth fraction (7B <- 32B:
    0 <- 0, 1 <- 2, ..., 27 <- 63; tiny-7b <- tiny-32b: 0 <- 0, 1 <- 2, 2 <- 3). A one-layer student
    gets the last teacher layer.
    """
    if layer_map not in LAYER_MAPS:
        raise PairingError(f"layer_map {layer_map!r} is not one of {LAYER_MAPS}")
    if layer_map == "diagnosed":
        raise PairingError("layer_map diagnosed needs the teacher's diagnosis (trainers.layer_choice): pass it to check_pair")
    s_types, t_types = student_types or [FULL] * n_student, teacher_types or [FULL] * n_teacher
    if layer_map == "last" or n_student == 1:
        return [(last_full_layer(s_types) if layer_map == "last" else 0, last_full_layer(t_types))]
    return [(i, int(i * (n_teacher - 1) / (n_student - 1) + 0.5)) for i in range(n_student)]


@dataclass
class Pairing:
    teacher: ModelShape
    student: ModelShape
    layer_pairs: list[tuple[int, int]]  # (student layer, teacher layer), non-negative
    q_mixer_shape: tuple[int, int]  # (student heads, teacher heads)
    k_mixer_shape: tuple[int, int]  # (student KV heads, teacher KV heads)
    shared_vocab: int
    vocab_note: str  # one line: how the KL treats the vocabularies
    notes: list[str]  # what was (not) checked
    warnings: list[str] = field(default_factory=list)  # allowed but probably not meant (a sliding-window pair)
    layer_map: str = "last"  # how layer_pairs were chosen: "explicit" or a named map (map_layers)
    choice: LayerChoice | None = None  # the evidence behind layer_map: diagnosed
    # student layer -> (student dims, teacher dims) of the rotary pairs both share, where head_dims differ
    qk_dims: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)

    @property
    def n_laid_params(self) -> int:
        """Mixer weights of all pairs (RoPE gains are counted by the plan, they depend on layers)."""
        (qs, qt), (ks, kt) = self.q_mixer_shape, self.k_mixer_shape
        return len(self.layer_pairs) * (qs * qt + ks * kt)


def _resolve_pairs(pairs, n_student: int, n_teacher: int, problems: list[str]) -> list[tuple[int, int]]:
    out = []
    for s, t in pairs or [(-1, -1)]:
        s2, t2 = (s + n_student if s < 0 else s), (t + n_teacher if t < 0 else t)
        if not 0 <= s2 < n_student:
            problems.append(f"student layer {s} out of range (student has {n_student} layers)")
        elif not 0 <= t2 < n_teacher:
            problems.append(f"teacher layer {t} out of range (teacher has {n_teacher} layers)")
        else:
            out.append((s2, t2))
    students = [s for s, _ in out]
    if len(set(students)) != len(students):
        problems.append(f"student layers repeat in layer pairs {out}: map each student layer once")
    return out


def _compare(what: str, a: dict | None, b: dict | None, keys, problems: list[str]) -> None:
    if a is None or b is None:
        return
    diff = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    if diff:
        problems.append(f"{what} differ (teacher vs student): " + "; ".join(diff))


def _check_tokenizers(teacher: ModelShape, student: ModelShape, shared: int, problems: list[str], notes: list[str]) -> None:
    tv, sv = teacher.tokenizer_vocab, student.tokenizer_vocab
    if tv is None or sv is None:
        notes.append("tokenizers not compared (tokenizer.json missing in one folder)")
        return
    mismatched = sorted(i for i in set(tv) & set(sv) if tv[i] != sv[i])
    if mismatched:
        i = mismatched[0]
        problems.append(f"tokenizers differ: {len(mismatched)} shared ids map to different tokens (first: id {i} is {tv[i]!r} vs {sv[i]!r})")
    top = max(max(tv), max(sv))
    if top >= shared:
        problems.append(f"token id {top} does not fit under the shared vocabulary of {shared} rows: the KL over shared ids would miss real tokens")
    if not mismatched and top < shared:
        notes.append(f"tokenizers agree on all shared ids; every token id (max {top}) is below {shared}")


@dataclass(frozen=True)
class Diagnosis:
    """Where `layer_map: diagnosed` reads the teacher's diagnosis, and how (trainers.layer_choice)."""

    path: str = ""  # diagnostics.nc of the teacher (or its folder); "" = none given
    n_layers: int = 1
    rows: str = "question"

    @classmethod
    def of(cls, cfg) -> "Diagnosis":
        """From a DistillConfig (teacher_diagnosis, diagnosed_layers, diagnosis_rows)."""
        return cls(cfg.teacher_diagnosis, cfg.diagnosed_layers, cfg.diagnosis_rows)


def _shared_dims(pairs, student: ModelShape, teacher: ModelShape, problems: list[str], notes: list[str]) -> dict:
    """Check every layer pair's RoPE (module docstring); {student layer: (student dims, teacher dims)}
    where head_dims differ and the smaller head's rotary pairs all have twins in the larger one."""
    out = {}
    for s, t in pairs:
        a, b = student.layout(s), teacher.layout(t)
        if a.signature() == b.signature():
            continue
        shared = shared_pairs(a, b)
        small = min(a.n_pairs, b.n_pairs)
        what = (f"student layer {s} ({student.layer_types[s]}, {a.n_pairs} rotary pairs) and teacher layer {t} "
                f"({teacher.layer_types[t]}, {b.n_pairs})")
        if student.layer_types[s] != teacher.layer_types[t]:
            problems.append(f"RoPE differs between {what}: pair layers of one type")
            continue
        if student.head_dim == teacher.head_dim:
            continue  # the settings themselves differ: reported once by check_pair
        if len(shared) < small:
            problems.append(f"head_dim differs (teacher {teacher.head_dim}, student {student.head_dim}) and {what} share "
                            f"only {len(shared)} rotary frequencies: per-head Q/K cannot be aligned")
            continue
        out[s] = (pair_dims([i for i, _ in shared], a.n_pairs), pair_dims([j for _, j in shared], b.n_pairs))
        notes.append(f"head_dim differs (teacher {teacher.head_dim}, student {student.head_dim}): the Q/K alignment of "
                     f"{s} <- {t} runs on the {len(shared)} rotary pairs both share (same frequency and axis)")
    return out


def _sliding_warnings(pairs, student: ModelShape, teacher: ModelShape) -> list[str]:
    """One warning per pair on a sliding-window layer: what its window sees, and the full layers instead."""
    out = []
    last = (last_full_layer(student.layer_types), last_full_layer(teacher.layer_types))
    for s, t in pairs:
        sides = [f"{who} layer {i} sees the last {shape.sliding_window} tokens" for who, i, shape in
                 (("student", s, student), ("teacher", t, teacher)) if shape.layer_types[i] == SLIDING]
        if sides:
            out.append(f"layer pair {s} <- {t} is on sliding-window layers ({'; '.join(sides)}): it aligns local "
                       f"attention only, not the long-range retrieval LAid is for; the last full-attention layers "
                       f"are {last[0]} <- {last[1]} (layer_map: last)")
    return out


def check_pair(teacher_dir: str | Path, student_dir: str | Path, layer_pairs=None, layer_map: str = "last",
               diagnosis: Diagnosis | None = None) -> Pairing:
    """Check that the pair can be distilled; raise PairingError listing every reason it cannot.

    layer_pairs: explicit pairs (list or "27:63,..."), or None to use the named `layer_map`;
    `diagnosis` is read when layer_map is "diagnosed".
    """
    teacher, student = read_shape(teacher_dir), read_shape(student_dir)
    if teacher.family != student.family:
        t, s = family_named(teacher.family).label, family_named(student.family).label
        raise PairingError(f"cannot distil {teacher.path} -> {student.path}: the teacher is {t} and the student {s}; "
                           "LAid pairs models of one family (tokenizers, image tokens and RoPE differ)")
    problems: list[str] = []
    notes: list[str] = []
    if teacher.head_dim == student.head_dim:
        _compare("RoPE settings", teacher.rope, student.rope, sorted(set(teacher.rope) | set(student.rope)), problems)
    for shape in (teacher, student):
        if shape.n_heads % shape.n_kv_heads:
            problems.append(f"{shape.path}: {shape.n_heads} query heads not a multiple of {shape.n_kv_heads} KV heads")
    explicit = parse_layer_pairs(layer_pairs)
    if explicit is not None and layer_map != "last":
        problems.append(f"both layer pairs {explicit} and layer_map {layer_map!r} given: choose one")
    choice = None
    named = explicit is None
    if named and layer_map == "diagnosed":
        if diagnosis is None or not diagnosis.path:
            raise PairingError("layer_map: diagnosed needs teacher_diagnosis: run `laid diagnose` on the teacher and give its "
                               "diagnostics.nc (or use layer_map: last / proportional)")
        choice = choose_layers(diagnosis.path, diagnosis.n_layers, diagnosis.rows, expect_layers=teacher.n_layers)
        explicit = choice.pairs(student.n_layers, teacher.n_layers)
    elif named:
        explicit = map_layers(layer_map, student.n_layers, teacher.n_layers, student.layer_types, teacher.layer_types)
    pairs = _resolve_pairs(explicit, student.n_layers, teacher.n_layers, problems)
    if named:
        pairs = snap_to_type(pairs, student.layer_types, teacher.layer_types)
    qk_dims = _shared_dims(pairs, student, teacher, problems, notes)
    warnings = _sliding_warnings(pairs, student, teacher)
    if student.deepstack or teacher.deepstack:
        notes.append(f"DeepStack: vision features are added after text layers {teacher.deepstack} (teacher) and "
                     f"{student.deepstack} (student); image-token Q/K of the layers after them carry those features")
    family = family_named(student.family)
    _compare("vision patching", teacher.vision, student.vision, family.vision_keys, problems)
    _compare("vision token ids", teacher.token_ids, student.token_ids, family.token_keys, problems)
    if teacher.image_processor is None or student.image_processor is None:
        notes.append("image processors not compared (no preprocessor_config.json / processor_config.json in one folder)")
    else:
        _compare("image processors", teacher.image_processor, student.image_processor, family.processor_keys, problems)
    shared = min(teacher.vocab_size, student.vocab_size)
    _check_tokenizers(teacher, student, shared, problems, notes)
    if problems:
        raise PairingError(f"cannot distil {teacher.path} -> {student.path}: " + " | ".join(problems))
    return Pairing(
        teacher=teacher,
        student=student,
        layer_pairs=pairs,
        q_mixer_shape=(student.n_heads, teacher.n_heads),
        k_mixer_shape=(student.n_kv_heads, teacher.n_kv_heads),
        shared_vocab=shared,
        vocab_note=shared_vocab_note(student.vocab_size, teacher.vocab_size) or f"same vocabulary ({shared}): KL over all ids",
        notes=notes,
        warnings=warnings,
        layer_map="explicit" if parse_layer_pairs(layer_pairs) is not None else layer_map,
        choice=choice,
        qk_dims=qk_dims,
    )
