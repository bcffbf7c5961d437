"""Training examples for distillation: the VHs train split, shuffled per epoch, resumable.

Where every example of an optimizer step goes is a pure function of (seed, epoch, step): the
epoch's order is a seeded permutation, and step t of an epoch takes the slice
order[t*G : (t+1)*G] of G = per_device_batch_size * grad_accum * num_processes examples. Inside
that slice, micro-batch a of process p is the block (a * num_processes + p). So

- resuming at (epoch, step) needs no RNG state to continue with exactly the same examples;
- 1 process with grad_accum 2 and 2 processes with grad_accum 1 see the same examples in the same
  optimizer step (the global batch is the same), which is what the 2-process test checks.

The last incomplete global batch of an epoch is dropped (as a DataLoader with drop_last), so
every optimizer step averages the same number of examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from laid.data.vhs import VHsEntry, arrange_haystack, load_size_range
from laid.model.pixel_cache import SHARED
from laid.model.prompting import Example, encode_batch


@dataclass
class DataPosition:
    """Where training stands: `step` optimizer steps of epoch `epoch` are done."""

    epoch: int = 0
    step: int = 0


def load_train_entries(
    train_dir: str | Path,
    image_root: str | Path,
    settings=("single_needle",),
    min_haystack: int = 2,
    max_haystack: int = 20,
    max_examples: int | None = None,
    seed: int = 0,
    check_images: bool = True,
    allow_outside_root: bool = False,
) -> list[VHsEntry]:
    """Entries of the train split with min_haystack <= N <= max_haystack, in file order.

    train_dir: a VHs split root, a setting folder or one visual_haystack_{N}.json
    (laid.data.vhs.find_vhs_files); image paths leaving image_root are refused unless allow_outside_root.

    With max_examples, a seeded subset is kept (stratified by nothing: a uniform draw over all
    entries, so the size/setting mix matches the split's).
    """
    entries = load_size_range(train_dir, image_root, settings, min_haystack, max_haystack, check_images=check_images,
                              allow_outside_root=allow_outside_root)
    if not entries:
        raise ValueError(
            f"no training entries with {min_haystack} <= N <= {max_haystack} and settings {list(settings)} "
            f"under {train_dir}; check data.train_dir / data.settings"
        )
    if max_examples is not None and max_examples < len(entries):
        keep = np.random.default_rng([seed, 7]).choice(len(entries), size=max_examples, replace=False)
        entries = [entries[i] for i in sorted(keep)]
    return entries


class TrainingExamples:
    """A list of VHs entries served as `laid.model.prompting.Example`s with per-epoch order."""

    def __init__(self, entries: list[VHsEntry], seed: int = 0):
        if not entries:
            raise ValueError("TrainingExamples needs at least one entry")
        self.entries = entries
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.entries)

    def order(self, epoch: int) -> np.ndarray:
        """Seeded permutation of entry indices for `epoch`, shape (len,)."""
        return np.random.default_rng([self.seed, 1, int(epoch)]).permutation(len(self.entries))

    def steps_per_epoch(self, global_batch: int) -> int:
        return len(self.entries) // global_batch

    def example(self, index: int, epoch: int) -> Example:
        """Entry `index` with its images shuffled (a new arrangement each epoch)."""
        entry = self.entries[index]
        paths, _ = arrange_haystack(entry, seed=self.seed * 100_003 + int(epoch))
        # Paths, not pixels: collate preprocesses each distinct file once (laid.model.pixel_cache; the
        # batch is tensor for tensor the processor's), which the toy's 3,000-image pool pays back at once.
        return Example(images=[str(p) for p in paths], question=entry.question, answer=entry.answer)

    def micro_batches(
        self, pos: DataPosition, per_device: int, grad_accum: int, process_index: int = 0, num_processes: int = 1
    ) -> list[list[int]]:
        """Entry indices of this process's `grad_accum` micro-batches for optimizer step `pos`."""
        global_batch = per_device * grad_accum * num_processes
        if pos.step >= self.steps_per_epoch(global_batch):
            raise ValueError(f"step {pos.step} is past the end of epoch {pos.epoch}")
        chunk = self.order(pos.epoch)[pos.step * global_batch : (pos.step + 1) * global_batch]
        blocks = chunk.reshape(grad_accum, num_processes, per_device)  # (A, P, b)
        return [[int(i) for i in blocks[a, process_index]] for a in range(grad_accum)]


def truncate_answer(processor, answer: str, max_tokens: int) -> str:
    """Keep at most `max_tokens` answer tokens (the paper's maximum response length)."""
    ids = processor.tokenizer(answer, add_special_tokens=False).input_ids
    return answer if len(ids) <= max_tokens else processor.tokenizer.decode(ids[:max_tokens])


def collate(processor, examples: list[Example], max_response_len: int) -> dict:
    """Model inputs with `labels` on answer tokens only (see `laid.model.prompting.encode_batch`)."""
    examples = [
        Example(ex.images, ex.question, truncate_answer(processor, ex.answer, max_response_len)) for ex in examples
    ]
    return encode_batch(processor, examples, with_answers=True, pixel_cache=SHARED)
