"""The evaluation loop: Visual Haystacks files -> scored samples -> result Dataset (-> netCDF).

evaluate()         from folders: loads the data, then the model variant, runs, writes the result.
evaluate_loaded()  for a model already in memory (the trainers evaluate during/after training).

All haystacks of all sizes are arranged first (seeded per entry by `arrange_haystack`), their
prompt lengths estimated from image headers alone, and batches planned by token budget over the
whole run; images are decoded only for the batch being scored. By default each distinct image
is decoded and preprocessed once per process (laid/model/pixel_cache.py: a bounded LRU of the image
processor's output, shared by every evaluation); `pixel_cache=False` decodes through a bounded
cache of PIL images and lets the processor preprocess every image of every batch (the same
inputs, tensor for tensor, only slower).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import xarray as xr
from PIL import Image
from tqdm.auto import tqdm

from laid.data.vhs import (
    VHsEntry, VHsImageError, VHsImageMissing, arrange_images, data_setting, image_size, load_entries, load_image,
    needle_positions,
)
from laid.eval.metrics import DEFAULT_THRESHOLD, N_BOOTSTRAP
from laid.eval.protocol import Answered, Protocol, official_dir, official_records, resolve_protocol, write_official_json
from laid.eval.results import SampleResult, build_result, with_position_table, write_result
from laid.eval.scoring import estimate_input_tokens, plan_batches, resolve_answer_tokens, score_examples
from laid.eval.settings import SCORINGS
from laid.eval.variants import load_for_eval
from laid.model.loading import check_model_dir
from laid.model.pixel_cache import SHARED, PixelCache
from laid.model.prompting import Example

# Padded tokens per forward pass. One real 150-image haystack (~54k tokens) exceeds it and runs
# alone; toy haystacks (~6 tokens per image) are batched by the dozen.
DEFAULT_BATCH_TOKENS = 8192
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_IMAGE_CACHE = 512  # decoded images kept per run without a pixel cache (COCO-size RGB: ~1 MB each)


class ImageCache:
    """Decoded RGB images by path, least recently used evicted beyond `max_images`."""

    def __init__(self, max_images: int = DEFAULT_IMAGE_CACHE):
        self.max_images = max_images
        self._images: OrderedDict[Path, Image.Image] = OrderedDict()
        self._sizes: dict[Path, tuple[int, int]] = {}

    def get(self, path: Path) -> Image.Image:
        if path in self._images:
            self._images.move_to_end(path)
            return self._images[path]
        image = load_image(path)
        self._sizes[path] = image.size
        if self.max_images > 0:
            self._images[path] = image
            if len(self._images) > self.max_images:
                self._images.popitem(last=False)
        return image

    def size(self, path: Path) -> tuple[int, int]:
        """(width, height) from the file header; cheap, and kept for every path (tuples only)."""
        if path not in self._sizes:
            self._sizes[path] = image_size(path)
        return self._sizes[path]


@dataclass
class _Haystack:
    size: int
    sample: int
    entry: VHsEntry
    paths: list[Path]
    needle_index: int
    input_tokens: int = 0  # estimate, for batch planning
    rel_paths: tuple[str, ...] = ()  # the image order as written in the file (for the official JSON)


def _name_entry(error: Exception, haystacks) -> Exception:
    """An image error re-raised with the VHs file and entry that use the image (one line)."""
    path = getattr(error, "path", None)
    for h in haystacks:
        if path is not None and Path(path).resolve() in {Path(p).resolve() for p in h.paths}:
            cls = FileNotFoundError if isinstance(error, FileNotFoundError) else ValueError
            return cls(f"{h.entry.source}: entry {h.entry.index}: {error}")
    return error


def arrange_all(
    entries_by_size: Mapping[int, Sequence[VHsEntry]], seed: int, needle_position_mode: bool | str
) -> list[_Haystack]:
    """Every haystack of the run, in (size, entry, needle position) order.

    needle_position_mode: a placement of laid.data.vhs.arrange_images, or a bool (True =
    "shuffle_at", False = "shuffle"). With a positional placement (the "detailed" protocol) each
    entry is evaluated once per needle position in range(0, N, max(N // 10, 1)), so a size has
    entries x positions samples.
    """
    placement = needle_position_mode if isinstance(needle_position_mode, str) else (
        "shuffle_at" if needle_position_mode else "shuffle")
    haystacks = []
    for size in sorted(entries_by_size):
        sample = 0
        for entry in entries_by_size[size]:
            positions = [None] if placement == "shuffle" else needle_positions(entry.haystack_size)
            for position in positions:
                rel, needles = arrange_images(entry, seed, needle_position=position, placement=placement)
                paths = [Path(entry.resolve(r)) for r in rel]
                haystacks.append(_Haystack(int(size), sample, entry, paths, min(needles), rel_paths=tuple(rel)))
                sample += 1
    return haystacks


def evaluate_loaded(
    model,
    processor,
    entries_by_size: Mapping[int, Sequence[VHsEntry]],
    *,
    scoring: str = "logits",
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    needle_position_mode: bool | str = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_new_tokens: int = 8,
    n_bootstrap: int = N_BOOTSTRAP,
    image_cache_size: int = DEFAULT_IMAGE_CACHE,
    progress: bool = True,
    attrs: Mapping | None = None,
    pixel_cache: PixelCache | bool = True,
    answered: list | None = None,
) -> xr.Dataset:
    """Evaluate an in-memory model on {size: entries}; returns the result Dataset (not written).

    `attrs` are stored on the Dataset (model_name, variant, data_path, ... of the contract).
    Deterministic for a seed: arrangement and bootstrap are seeded, batching is fixed by lengths.
    needle_position_mode: see `arrange_all` (a placement name or a bool).
    pixel_cache: True = the process-wide cache (laid.model.pixel_cache.SHARED), a PixelCache = that one,
    False (or None) = no pixel cache (images decoded through an ImageCache of `image_cache_size`).
    answered: a list that receives one `laid.eval.protocol.Answered` per haystack, in run order
    (entry, image order, reply; under logit scoring the reply is "yes"/"no" from the margin's sign).
    An unreadable or missing image stops the run with one line naming the VHs file and entry.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {SCORINGS}")
    tokens = resolve_answer_tokens(processor.tokenizer, model.config.get_text_config().vocab_size)
    haystacks = arrange_all(entries_by_size, seed, needle_position_mode)
    cache = ImageCache(image_cache_size)
    pixels = SHARED if pixel_cache is True else None if pixel_cache is False or pixel_cache is None else pixel_cache
    for h in haystacks:
        try:
            h.input_tokens = estimate_input_tokens(processor, h.entry.question, [cache.size(p) for p in h.paths])
        except (VHsImageError, VHsImageMissing) as e:
            raise _name_entry(e, [h]) from None
    batches = plan_batches([h.input_tokens for h in haystacks], batch_tokens, max_batch_size)

    def images_of(h: _Haystack) -> list:
        # With a pixel cache the examples carry paths: it decodes and preprocesses misses only.
        return list(h.paths) if pixels is not None else [cache.get(p) for p in h.paths]

    results: dict[int, dict[int, SampleResult]] = {int(s): {} for s in entries_by_size}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(haystacks), unit="haystack", desc="eval", disable=not progress) as bar:
            for batch in batches:
                group = [haystacks[i] for i in batch]
                try:
                    examples = [Example(images_of(h), h.entry.question, h.entry.answer) for h in group]
                    scores = score_examples(
                        model, processor, examples, tokens, scoring == "generate", max_new_tokens, pixel_cache=pixels
                    )
                except (VHsImageError, VHsImageMissing) as e:
                    raise _name_entry(e, group) from None
                for h, s in zip(group, scores):
                    results[h.size][h.sample] = SampleResult(
                        s.correct, s.margin, s.compliant, s.input_tokens, h.needle_index, h.entry.answer == "yes", s.reply
                    )
                bar.set_postfix(size=max(h.size for h in group))
                bar.update(len(group))
    finally:
        model.train(was_training)
    if answered is not None:
        for h in haystacks:
            r = results[h.size][h.sample]
            reply = r.reply if r.reply is not None else ("yes" if r.margin > 0 else "no")
            answered.append(Answered(h.entry, h.rel_paths, reply))

    # Defaults for the contract's attributes when the caller (e.g. a trainer) gives none.
    name_or_path = str(getattr(model, "name_or_path", "") or "")
    sources = sorted({str(e.source.parent) for rows in entries_by_size.values() for e in rows})
    placement = needle_position_mode if isinstance(needle_position_mode, str) else (
        "shuffle_at" if needle_position_mode else "shuffle")
    run_attrs = {
        "model_name": Path(name_or_path).name or "in-memory",
        "model_dir": name_or_path,
        "variant": "base",
        "variant_options": "{}",
        "data_path": ";".join(sources),
        "needle_setting": "",
        "config": "{}",
        "scoring": scoring,
        "needle_position_mode": placement != "shuffle",
        "placement": placement,
    }
    run_attrs.update(attrs or {})
    ordered = {size: [rows[i] for i in sorted(rows)] for size, rows in results.items()}
    ds = build_result(ordered, threshold=threshold, seed=seed, n_bootstrap=n_bootstrap, attrs=run_attrs)
    return ds if placement == "shuffle" else with_position_table(ds)


def evaluate(
    model_dir: str | Path,
    data_root: str | Path,
    image_root: str | Path,
    out_path: str | Path | None = None,
    *,
    sizes: Sequence[int] | None = None,
    setting: str | None = "single_needle",
    max_samples_per_size: int | None = None,
    variant: str = "base",
    variant_options: dict | None = None,
    protocol: str | Protocol = "auto",
    scoring: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    needle_position_mode: bool = False,
    device=None,
    dtype: torch.dtype | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_new_tokens: int | None = None,
    progress: bool = True,
    model_name: str | None = None,
    pixel_cache: PixelCache | bool = True,
    allow_outside_image_root: bool = False,
) -> xr.Dataset:
    """Evaluate `variant` of the model folder on VHs data; write the result to out_path if given.

    data_root is a VHs split root, a setting folder or one visual_haystack_{N}.json file;
    image_root is the folder image paths in the JSON are relative to. protocol: "auto" (official
    for real VHs data, ours for `laid data synth` data), "official" or "ours"
    (laid/eval/protocol.py); `scoring` / `max_new_tokens` override the protocol's. With out_path,
    the official per-question JSON goes to `<out stem>_official/` beside it, then the netCDF; both
    atomically, so a failed write (a full disk) keeps the earlier result.
    """
    if scoring is not None and scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {SCORINGS}")
    check_model_dir(model_dir)  # fail before reading data
    if out_path is not None:
        if Path(out_path).is_dir():
            raise ValueError(f"--out {out_path} is a folder; name the result file, e.g. {Path(out_path) / 'result.nc'}")
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)  # fail before the run, not after
    setting = data_setting(data_root, setting)
    proto = protocol if isinstance(protocol, Protocol) else resolve_protocol(
        protocol, setting, data_root, scoring, needle_position_mode, max_new_tokens)
    entries = load_entries(data_root, image_root, setting, sizes, max_samples_per_size,
                           allow_outside_root=allow_outside_image_root)
    model, processor = load_for_eval(model_dir, variant, variant_options, device=device, dtype=dtype)
    config = {
        "model_dir": str(model_dir), "data_root": str(data_root), "image_root": str(image_root),
        "out_path": None if out_path is None else str(out_path), "sizes": sorted(entries),
        "setting": setting, "max_samples_per_size": max_samples_per_size, "variant": variant,
        "variant_options": variant_options or {}, "protocol": proto.name, "placement": proto.placement,
        "scoring": proto.scoring, "threshold": threshold, "seed": seed,
        "needle_position_mode": proto.needle_positions, "device": None if device is None else str(device),
        "dtype": str(next(model.parameters()).dtype), "batch_tokens": batch_tokens,  # as loaded ("auto" resolved)
        "max_new_tokens": proto.max_new_tokens,
    }  # fmt: skip
    attrs = {
        "model_name": model_name or Path(model_dir).resolve().name,
        "model_dir": str(model_dir),
        "variant": variant,
        "variant_options": json.dumps(variant_options or {}, sort_keys=True),
        "data_path": str(data_root),
        "image_root": str(image_root),
        "needle_setting": setting,
        "protocol": proto.name,
        "config": json.dumps(config, sort_keys=True),
    }
    answered: list[Answered] = []
    ds = evaluate_loaded(
        model, processor, entries, scoring=proto.scoring, threshold=threshold, seed=seed,
        needle_position_mode=proto.placement, batch_tokens=batch_tokens, max_new_tokens=proto.max_new_tokens,
        progress=progress, attrs=attrs, pixel_cache=pixel_cache, answered=answered,
    )  # fmt: skip
    if out_path is not None:
        # The JSON folder is swapped in only once the netCDF is written: a failure (a full disk) keeps both.
        records = official_records(answered, proto.placement != "shuffle")
        write_official_json(records, official_dir(out_path), then=lambda: write_result(ds, out_path))
    return ds
