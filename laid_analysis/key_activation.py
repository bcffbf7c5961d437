"""What the answer query reads from the haystack, per head and haystack, vs haystack size (Figure 4).

Per haystack, layer and query head h, at the answer position a (the last prompt token, whose
next-token logits give yes/no), with l_j = q_rot[h, a] . k_rot[g(h), j] * scaling the logits over
all causal real keys j and w_j their softmax (exactly the model's attention row):

    needle_mass    sum of w_j over the needle image's tokens          (what retrieval needs)
    image_mass     sum of w_j over all image tokens
    needle_margin  mean l_j over the needle's tokens - mean l_j over the distractor images' tokens
                   (logit units; NaN at haystack size 1, which has no distractor)
    locality       -100 x least-squares slope of l_j on the key's position distance a - p_j, over
                   image keys: logit drop per 100 positions (> 0: prefers near keys)
    attn_entropy   -sum w_j log w_j (nats) of the row;  sink_mass: w_j on the first SINK_TOKENS real
                   tokens and every <|vision_start|>;  logit_scale: std of l_j over the row
    q_norm, k_norm mean ||q_rot|| over the real tokens (per head) and ||k_rot|| (per KV head)
    key_activation_raw  mean l_j over image tokens (the old Figure 4 statistic, an ablation: a
                   perfect retrieval head with needle +5 and distractors 0 falls as 5/N with size)
    needle_mass_question  the largest needle mass over the *question rows* (every real token after
                   the last image: instruction, question words, answer position), each row its own
                   causal softmax; `needle_row_offset` says which row (tokens before the answer
                   position, 0 = the answer row). A retrieval head that reads the haystack from a
                   word of the question (the toy teacher's, from the anchor word at layer 0) shows
                   here and not in needle_mass; `layer_map: diagnosed` picks layers by it.

Everything is stored per haystack (dim `sample`), so intervals are bootstrap intervals over
haystacks (laid_analysis.intervals); masses and margins are in absolute units (no per-model
normalisation), so checkpoints can be put on one axis. Position-head classes come from locality
at the largest analysed size: "local" where its mean >= `local_threshold` (default 1 logit per 100
positions), with its interval and whether the interval excludes the threshold (head_class_certain).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import xarray as xr

from laid.model.families import AttentionPattern, require_pattern
from laid_analysis.intervals import bootstrap_mean
from laid_analysis.tokens import image_spans

SINK_TOKENS = 4
DEFAULT_LOCAL_THRESHOLD = 1.0
HEAD_VARS = ("needle_mass", "image_mass", "needle_margin", "locality", "attn_entropy", "sink_mass", "logit_scale",
             "q_norm", "key_activation_raw", "needle_mass_question", "needle_row_offset")
KV_VARS = ("k_norm",)
INTERVAL_VARS = ("needle_mass", "image_mass", "needle_margin", "locality", "needle_mass_question")
ATTRS = {
    "needle_mass": ("answer query's attention mass on the needle image", "1"),
    "image_mass": ("answer query's attention mass on all images", "1"),
    "needle_margin": ("mean needle-token logit - mean distractor-token logit", "logit"),
    "locality": ("logit drop per 100 positions of key distance (image keys)", "logit / 100 positions"),
    "attn_entropy": ("entropy of the answer query's attention row", "nats"),
    "sink_mass": (f"attention mass on the first {SINK_TOKENS} tokens and <|vision_start|> tokens", "1"),
    "logit_scale": ("std of the answer query's logits over its keys", "logit"),
    "q_norm": ("mean ||q_rot|| over real tokens", "1"),
    "k_norm": ("mean ||k_rot|| over real tokens", "1"),
    "key_activation_raw": ("ABLATION: mean answer-query logit over image keys (dilutes with size)", "logit"),
    "needle_mass_question": ("largest attention mass on the needle image over the question rows", "1"),
    "needle_row_offset": ("question row of needle_mass_question, in tokens before the answer position", "tokens"),
}


class AnswerStats:
    """Per (layer, haystack size): a list of per-haystack statistics (see the module docstring)."""

    def __init__(self, image_token_id: int, vision_start_id: int | None = None):
        self.image_id, self.start_id = image_token_id, vision_start_id
        self.rows: dict[tuple[int, int], list[dict]] = defaultdict(list)

    def update(self, layer: int, size: int, q_rot, k_rot, scaling: float, input_ids, real_mask, positions,
               needles, *, pattern: AttentionPattern) -> None:
        """q_rot (B, H, S, D), k_rot (B, H_kv, S, D), input_ids/real_mask (B, S), positions (B, S)
        temporal ids, needles: per row the needle image index (None if unknown); pattern: the layer's
        AttentionPattern (required). Keys the answer row cannot see (outside a sliding window)
        get weight 0 and leave the logit statistics (NaN where no needle / image key is visible)."""
        require_pattern(pattern, "the answer-row statistics")
        n_heads, n_kv = q_rot.shape[1], k_rot.shape[1]
        for b in range(q_rot.shape[0]):
            keep = real_mask[b].nonzero().squeeze(-1).to(q_rot.device)
            ids = input_ids[b].to(keep.device)[keep]
            pos = positions[b].to(keep.device)[keep].double()
            q, k = q_rot[b][:, keep].float(), k_rot[b][:, keep].float()  # (H, S, D), (H_kv, S, D)
            k_h = k.repeat_interleave(n_heads // n_kv, dim=0)
            seen = pattern.select(keep, b).visible(torch.tensor([len(keep) - 1], device=keep.device), len(keep))[0, 0]
            logits = torch.einsum("hd,hsd->hs", q[:, -1], k_h) * scaling  # (H, S): the answer row
            w = torch.softmax(logits.masked_fill(~seen, float("-inf")), dim=-1)
            if not bool((ids == self.image_id).any()):
                raise ValueError("answer statistics need image tokens; this haystack has none")
            image = (ids == self.image_id) & seen  # image keys the answer row sees
            row = {"image_mass": w[:, image].sum(-1), "key_activation_raw": logits[:, image].mean(-1),
                   "attn_entropy": -(w * torch.log(w.clamp_min(1e-30))).sum(-1), "logit_scale": logits[:, seen].std(-1),
                   "q_norm": q.norm(dim=-1).mean(-1), "k_norm": k.norm(dim=-1).mean(-1)}
            sink = torch.zeros_like(image)
            sink[:SINK_TOKENS] = True
            if self.start_id is not None:
                sink |= ids == self.start_id
            row["sink_mass"] = w[:, sink].sum(-1)
            spans = image_spans(ids.cpu(), self.image_id)
            nan = torch.full((n_heads,), float("nan"), device=q.device)
            needle = needles[b] if needles is not None else None
            if needle is not None and 0 <= needle < len(spans):
                s, e = spans[needle]
                in_needle = torch.zeros_like(image)
                in_needle[s:e] = True
                row["needle_mass"] = w[:, in_needle].sum(-1)
                row["needle_mass_question"], row["needle_row_offset"] = _question_needle_mass(
                    q, k_h, scaling, ids == self.image_id, in_needle, pattern.select(keep, b))
                distract, in_needle = image & ~in_needle, in_needle & seen
                row["needle_margin"] = (logits[:, in_needle].mean(-1) - logits[:, distract].mean(-1)
                                        if bool(distract.any()) and bool(in_needle.any()) else nan)
            else:
                row["needle_mass"], row["needle_margin"] = nan, nan
                row["needle_mass_question"], row["needle_row_offset"] = nan, nan
            dist = (pos[-1] - pos[image]).float()  # (N_img,)
            dc = dist - dist.mean()
            denom = (dc * dc).sum()
            row["locality"] = (-100 * (logits[:, image] - logits[:, image].mean(-1, keepdim=True)) @ dc / denom
                               if float(denom) > 0 else nan)
            self.rows[(layer, size)].append({k: v.double().cpu().numpy() for k, v in row.items()})

    def to_dataset(self, local_threshold: float = DEFAULT_LOCAL_THRESHOLD) -> xr.Dataset:
        if not self.rows:
            raise ValueError("no answer statistics accumulated: run the model on at least one haystack first")
        layers = sorted({l for l, _ in self.rows})
        sizes = sorted({s for _, s in self.rows})
        n_samples = max(len(v) for v in self.rows.values())
        some = next(iter(self.rows.values()))[0]
        n_heads, n_kv = len(some["q_norm"]), len(some["k_norm"])
        data = {v: np.full((len(layers), n_heads if v in HEAD_VARS else n_kv, len(sizes), n_samples), np.nan)
                for v in HEAD_VARS + KV_VARS}
        counts = np.zeros(len(sizes), dtype=np.int64)
        for (layer, size), rows in self.rows.items():
            li, si = layers.index(layer), sizes.index(size)
            counts[si] = len(rows)
            for j, row in enumerate(rows):
                for v in data:
                    data[v][li, :, si, j] = row[v]
        return answer_dataset(data, counts, layers, sizes, local_threshold)


def _question_needle_mass(q, k_h, scaling: float, image, in_needle, pattern: AttentionPattern) -> tuple[torch.Tensor, torch.Tensor]:
    """(H,) largest needle mass over the question rows and (H,) that row's offset before the answer.

    q (H, S, D), k_h (H, S, D) one haystack's real tokens (keys repeated to the query heads); image,
    in_needle (S,) bool; pattern: the layer's AttentionPattern of this haystack (one row, padding removed).
    Question rows: every token after the last image token, each with the keys its layer lets it see."""
    s = q.shape[1]
    first = int(image.nonzero().max()) + 1  # first question row
    rows = torch.arange(first, s, device=q.device)  # (R,)
    logits = torch.einsum("hrd,hsd->hrs", q[:, first:], k_h) * scaling  # (H, R, S)
    seen = pattern.visible(rows, s)[0]  # (R, S)
    w = torch.softmax(logits.masked_fill(~seen, float("-inf")), dim=-1)
    mass = w[..., in_needle].sum(-1)  # (H, R)
    best, arg = mass.max(-1)
    return best, (s - 1 - rows[arg]).double()


def answer_dataset(data: dict[str, np.ndarray], counts, layers, sizes, local_threshold: float = DEFAULT_LOCAL_THRESHOLD) -> xr.Dataset:
    """Per-haystack variables, their bootstrap means/intervals, the old key_activation, head classes."""
    coords = {
        "layer": ("layer", list(layers), {"long_name": "text decoder layer"}),
        "head": ("head", np.arange(data["q_norm"].shape[1]), {"long_name": "query head"}),
        "kv_head": ("kv_head", np.arange(data["k_norm"].shape[1]), {"long_name": "key/value head"}),
        "haystack_size": ("haystack_size", list(sizes), {"units": "images", "long_name": "haystack size"}),
        "sample": ("sample", np.arange(data["q_norm"].shape[-1]), {"long_name": "haystack index at this size"}),
    }
    ds = xr.Dataset(coords=coords)
    for v, x in data.items():
        dims = ("layer", "kv_head" if v in KV_VARS else "head", "haystack_size", "sample")
        name, units = ATTRS[v]
        ds[v] = (dims, x, {"long_name": name, "units": units})
    for v in INTERVAL_VARS:
        mean, lo, hi = bootstrap_mean(ds[v])
        ds[f"{v}_mean"], ds[f"{v}_lo"], ds[f"{v}_hi"] = mean, lo, hi
    ds["n_samples"] = (("haystack_size",), np.asarray(counts), {"long_name": "haystacks analysed", "units": "samples"})
    raw = ds["key_activation_raw"].mean("sample")
    lo, hi = raw.min(("head", "haystack_size")), raw.max(("head", "haystack_size"))
    ds["key_activation"] = ((raw - lo) / (hi - lo).where(hi > lo)).fillna(0.5).assign_attrs(
        long_name="ABLATION: key_activation_raw min-max normalised per layer (the old Figure 4)", units="1")
    return ds.merge(position_head_classes(ds, local_threshold))


def position_head_classes(ds: xr.Dataset, threshold: float = DEFAULT_LOCAL_THRESHOLD) -> xr.Dataset:
    """head_class (local/global) from locality at the largest haystack size, with its interval."""
    at = ds.isel(haystack_size=-1)
    mean, lo, hi = at["locality_mean"], at["locality_lo"], at["locality_hi"]
    rule = f"local if mean locality at the largest size ({int(at['haystack_size'])} images) >= {threshold} logit/100 positions"
    return xr.Dataset({
        "head_locality": mean.drop_vars("haystack_size").assign_attrs(units="logit / 100 positions", long_name="locality at the largest size"),
        "head_locality_lo": lo.drop_vars("haystack_size").assign_attrs(units="logit / 100 positions"),
        "head_locality_hi": hi.drop_vars("haystack_size").assign_attrs(units="logit / 100 positions"),
        "head_class": xr.where(mean >= threshold, "local", "global").astype(str).drop_vars("haystack_size").assign_attrs(
            long_name="position head class", rule=rule, threshold=threshold),
        "head_class_certain": ((lo > threshold) | (hi < threshold)).drop_vars("haystack_size").assign_attrs(
            long_name="the locality interval excludes the threshold"),
    })


def stack_models(datasets: dict[str, xr.Dataset], variables=("key_activation",)) -> xr.Dataset:
    """Concatenate per-model datasets along a new `model` dim (outer join: missing heads are NaN)."""
    parts = []
    for name, ds in datasets.items():
        part = ds[[v for v in variables if v in ds]]
        part = part.assign_coords({d: np.arange(n) for d, n in part.sizes.items() if d not in part.indexes})
        parts.append(part.expand_dims(model=[name]))
    return xr.concat(parts, dim="model", join="outer")
