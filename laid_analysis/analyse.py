"""Run one model over haystacks and collect every per-head statistic in one pass.

One forward per batch, with `record_qk` streaming each layer's post-RoPE Q/K to a callback: the
layer's statistics (key activation, distance sums, rotary pair norms) are computed right there and
the tensors dropped, so memory holds one layer's Q/K at a time, never the whole model's.
The LM head runs on the last position only (`logits_to_keep=1`): nothing here needs the logits.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field

import torch
import xarray as xr
from tqdm.auto import tqdm

from laid.data.vhs import VHsEntry
from laid.model.prompting import Example, encode_batch
from laid_analysis import spectra, tokens
from laid_analysis.distance import DistanceProfile
from laid_analysis.haystacks import to_example
from laid.model.hooks import record_qk, resolve_layers, text_decoder
from laid_analysis.key_activation import KeyActivation
from laid_analysis.rope_usage import RopeUsage, rotary_pairs


@dataclass
class AnalysisSettings:
    layers: list[int] | None = None  # text decoder layers (None = all, negative from the end)
    queries: str = "all"  # distance profile / rope usage queries: all | text | question
    keys: str = "image"  # ... and keys: all | image | text (image leaves the prompt's attention sink out)
    profile_sizes: list[int] | None = None  # haystack sizes feeding the profile; None = the largest analysed
    chunk_size: int | None = None  # queries per chunk in the distance profile (None = from a memory budget)
    batch_size: int = 1
    low_freq_cycles: float = spectra.DEFAULT_LOW_FREQ_CYCLES
    global_threshold: float = spectra.DEFAULT_GLOBAL_THRESHOLD
    seed: int = 0  # haystack arrangement seed (laid.data.vhs.arrange_haystack)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.queries not in tokens.QUERY_CHOICES:
            raise ValueError(f"queries {self.queries!r} not in {tokens.QUERY_CHOICES}")
        if self.keys not in tokens.KEY_CHOICES:
            raise ValueError(f"keys {self.keys!r} not in {tokens.KEY_CHOICES}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def _to_device(batch: dict, model) -> dict:
    dtype = next(model.parameters()).dtype
    out = {}
    for k, v in batch.items():
        v = v.to(model.device)
        out[k] = v.to(dtype) if v.is_floating_point() else v
    return out


def analyse_model(model, processor, haystacks: dict[int, list[Example | VHsEntry]], settings: AnalysisSettings | None = None,
                  model_name: str = "", progress: bool = True) -> xr.Dataset:
    """Diagnostics dataset of one model: key_activation(layer, head, haystack_size),
    attention/logit(layer, head, distance), power(layer, head, freq_distance), low_freq_fraction,
    head_class, rope_usage(layer, head, rotary_pair) and their companions (see each module)."""
    settings = settings or AnalysisSettings()
    settings.validate()
    if not haystacks:
        raise ValueError("no haystacks to analyse")
    _, decoder_layers = text_decoder(model)
    layers = resolve_layers(settings.layers, len(decoder_layers))
    scaling = {i: float(decoder_layers[i].self_attn.scaling) for i in layers}
    profile_sizes = set(settings.profile_sizes or [max(haystacks)])
    image_id = model.config.image_token_id
    key_act, profile, rope = KeyActivation(), DistanceProfile(settings.chunk_size), RopeUsage()

    total = sum(-(-len(v) // settings.batch_size) for v in haystacks.values())
    bar = tqdm(total=total, desc=f"diagnose {model_name}".strip(), unit="batch", disable=not progress)
    for size in sorted(haystacks):
        items = haystacks[size]
        for start in range(0, len(items), settings.batch_size):
            examples = [to_example(e, settings.seed) if isinstance(e, VHsEntry) else e
                        for e in items[start:start + settings.batch_size]]
            batch = _to_device(encode_batch(processor, examples), model)
            real = tokens.real_token_mask(batch)
            image = tokens.image_token_mask(batch, image_id)
            qsel = tokens.select(batch, settings.queries, image_id)
            ksel = tokens.select(batch, settings.keys, image_id)
            answer_pos = real.shape[1] - 1 - real.flip(1).int().argmax(1)  # last real token of each row
            in_profile = size in profile_sizes
            pending: dict[int, torch.Tensor] = {}

            def consume(name: str, x: torch.Tensor) -> None:
                layer, site = int(name.split(".")[1]), name.rsplit(".", 1)[1]
                if site == "q_rot":  # the attention function emits q_rot, then k_rot of the same layer
                    pending[layer] = x
                    return
                q, k = pending.pop(layer), x
                key_act.update(layer, size, q, k, scaling[layer], image, answer_pos)
                if in_profile:
                    profile.update(layer, q, k, scaling[layer], real, qsel, ksel)
                    rope.update(layer, q, k, qsel, ksel)

            with torch.no_grad(), record_qk(model, layers=layers, callback=consume):
                model(**batch, use_cache=False, logits_to_keep=1)
            bar.update(1)
    bar.close()

    prof = profile.to_dataset()
    ds = xr.merge([key_act.to_dataset(), prof, spectra.spectra_dataset(prof, settings.low_freq_cycles, settings.global_threshold),
                   rope.to_dataset(rotary_pairs(model))], combine_attrs="drop_conflicts")
    settings_json = json.dumps({**asdict(settings), "layers": layers, "profile_sizes": sorted(profile_sizes)})
    ds.attrs.update(
        model_name=model_name, queries=settings.queries, keys=settings.keys,
        profile_sizes=json.dumps(sorted(profile_sizes)), settings=settings_json,
        distance_definition="query token index - key token index (padding removed)",
        n_layers_total=len(decoder_layers), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return ds
