"""Run one model over haystacks and collect every per-head statistic in one pass.

One forward per batch, with `record_qk` streaming each layer's pre- and post-RoPE Q/K to a
callback: the layer's statistics (answer-query statistics of every haystack, distance sums, Q/K
pair moments, rotary pair norms) are computed right there and the tensors dropped, so memory
holds one layer's Q/K at a time, never the whole model's. Distances are position-id differences
as the model's family assigns them (tokens.rope_positions: M-RoPE's temporal ids from
`get_rope_index` for the Qwen-VL families, token indices for InternVL3 / Gemma 3), and every
attention row uses the layer's real mask and scale (the family's AttentionPattern: Gemma 3's sliding
window and image blocks, query_pre_attn_scalar).
The LM head runs on the last position only (`logits_to_keep=1`): nothing here needs the logits.

Cost. The answer-query statistics are one row of attention per haystack (cheap; every haystack
of every size). The distance profile is O(S^2) per layer and the pair moments need pre-RoPE Q/K,
so both run on the `profile_sizes` only, on at most `profile_max_samples` haystacks of each.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field

import torch
import xarray as xr
from tqdm.auto import tqdm

from laid.data.vhs import VHsEntry
from laid.model.families import family_of
from laid.model.prompting import Example, encode_batch
from laid.model.hooks import record_qk, resolve_layers, text_decoder
from laid.model.pixel_cache import SHARED
from laid_analysis import spectra, tokens
from laid_analysis.distance import DistanceProfile
from laid_analysis.haystacks import to_example
from laid_analysis.key_activation import DEFAULT_LOCAL_THRESHOLD, AnswerStats
from laid_analysis.pair_spectrum import PairMoments
from laid_analysis.rope_usage import RopeUsage, rotary_pairs


@dataclass
class AnalysisSettings:
    layers: list[int] | None = None  # text decoder layers (None = all, negative from the end)
    queries: str = "all"  # distance profile / rope usage queries: all | text | question
    keys: str = "image"  # ... and keys: all | image | text (image leaves the prompt's attention sink out)
    profile_sizes: list[int] | None = None  # haystack sizes feeding the profile; None = the largest analysed
    profile_max_samples: int | None = 8  # haystacks per profile size feeding profile/spectrum, whole batches (None = all)
    distance_units: str = "positions"  # positions (M-RoPE temporal ids) | tokens (ablation: token index)
    chunk_size: int | None = None  # queries per chunk in the distance profile (None = from a memory budget)
    batch_size: int = 1
    local_threshold: float = DEFAULT_LOCAL_THRESHOLD  # locality (logit/100 positions) at or above which a head is local
    low_freq_cycles: float = spectra.DEFAULT_LOW_FREQ_CYCLES  # ablation score only
    global_threshold: float = spectra.DEFAULT_GLOBAL_THRESHOLD  # ablation reach classes only
    seed: int = 0  # haystack arrangement seed (laid.data.vhs.arrange_haystack)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.queries not in tokens.QUERY_CHOICES:
            raise ValueError(f"queries {self.queries!r} not in {tokens.QUERY_CHOICES}")
        if self.keys not in tokens.KEY_CHOICES:
            raise ValueError(f"keys {self.keys!r} not in {tokens.KEY_CHOICES}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.distance_units not in ("positions", "tokens"):
            raise ValueError(f"distance_units {self.distance_units!r}: choose positions or tokens")
        if self.profile_max_samples is not None and self.profile_max_samples < 1:
            raise ValueError(f"profile_max_samples must be >= 1 or None, got {self.profile_max_samples}")


def _to_device(batch: dict, model) -> dict:
    dtype = next(model.parameters()).dtype
    out = {}
    for k, v in batch.items():
        v = v.to(model.device)
        out[k] = v.to(dtype) if v.is_floating_point() else v
    return out


def analyse_model(model, processor, haystacks: dict[int, list[Example | VHsEntry]], settings: AnalysisSettings | None = None,
                  model_name: str = "", progress: bool = True) -> xr.Dataset:
    """Diagnostics dataset of one model: per-haystack answer statistics and health
    (layer, head, haystack_size, sample) with bootstrap intervals and head classes
    (key_activation.py), attention/logit(layer, head, distance) over positions, the exact pair
    spectrum pair_coef_*(layer, head, rotary_pair) and rope_profile (pair_spectrum.py),
    rope_usage, and the ablations power / low_freq_fraction / key_activation (see each module)."""
    settings = settings or AnalysisSettings()
    settings.validate()
    if not haystacks:
        raise ValueError("no haystacks to analyse")
    _, decoder_layers = text_decoder(model)
    layers = resolve_layers(settings.layers, len(decoder_layers))
    family = family_of(model)
    pairs = rotary_pairs(model, layers)  # refuses layers of different RoPE layouts (Gemma 3) before any work
    scaling = {i: float(decoder_layers[i].self_attn.scaling) for i in layers}
    profile_sizes = set(settings.profile_sizes or [max(haystacks)])
    image_id = family.image_token_id(model.config)
    start_id = family.image_start_token_id(model.config)
    answers, rope = AnswerStats(image_id, start_id), RopeUsage()
    profile, moments = DistanceProfile(settings.chunk_size, settings.distance_units), PairMoments()

    total = sum(-(-len(v) // settings.batch_size) for v in haystacks.values())
    bar = tqdm(total=total, desc=f"diagnose {model_name}".strip(), unit="batch", disable=not progress)
    for size in sorted(haystacks):
        items = haystacks[size]
        for start in range(0, len(items), settings.batch_size):
            examples = [to_example(e, settings.seed) if isinstance(e, VHsEntry) else e
                        for e in items[start:start + settings.batch_size]]
            batch = _to_device(encode_batch(processor, examples, pixel_cache=SHARED), model)
            real = tokens.real_token_mask(batch)
            positions = tokens.rope_positions(model, batch)[0]  # (B, S) temporal ids
            qsel = tokens.select(batch, settings.queries, image_id)
            ksel = tokens.select(batch, settings.keys, image_id)
            needles = [ex.needles[0] if ex.needles else None for ex in examples]
            limit = settings.profile_max_samples
            in_profile = size in profile_sizes and (limit is None or start < limit)
            pending: dict[tuple[int, str], torch.Tensor] = {}

            def consume(name: str, x: torch.Tensor) -> None:
                layer, site = int(name.split(".")[1]), name.rsplit(".", 1)[1]
                if site != "k_rot":  # q and k (projection hooks) and q_rot come before k_rot of a layer
                    pending[(layer, site)] = x
                    return
                q, k = pending.pop((layer, "q_rot")), x
                pattern = family.attention_pattern(model, layer, batch)
                answers.update(layer, size, q, k, scaling[layer], batch["input_ids"], real, positions, needles, pattern=pattern)
                if in_profile:
                    profile.update(layer, q, k, scaling[layer], real, qsel, ksel,
                                   positions if settings.distance_units == "positions" else None, pattern=pattern)
                    rope.update(layer, q, k, qsel, ksel)
                    moments.update(layer, pending.pop((layer, "q")), pending.pop((layer, "k")), qsel & real, ksel & real)

            sites = ("q_rot", "k_rot", "q", "k") if in_profile else ("q_rot", "k_rot")
            with torch.no_grad(), record_qk(model, layers=layers, sites=sites, callback=consume):
                model(**batch, use_cache=False, logits_to_keep=1)
            bar.update(1)
    bar.close()

    prof = profile.to_dataset()
    ds = xr.merge([answers.to_dataset(settings.local_threshold), prof,
                   spectra.spectra_dataset(prof, settings.low_freq_cycles, settings.global_threshold),
                   rope.to_dataset(pairs), moments.to_dataset(pairs, scaling, prof["distance"].values)],
                  compat="override", combine_attrs="drop_conflicts")
    settings_json = json.dumps({**asdict(settings), "layers": layers, "profile_sizes": sorted(profile_sizes)})
    ds.attrs.update(
        model_name=model_name, queries=settings.queries, keys=settings.keys,
        profile_sizes=json.dumps(sorted(profile_sizes)), settings=settings_json,
        distance_definition=prof["distance"].attrs["long_name"] + " (padding removed)",
        n_layers_total=len(decoder_layers), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return ds
