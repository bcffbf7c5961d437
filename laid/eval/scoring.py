"""Score Visual Haystacks examples with a model of any supported family (toy or real, same code).

Two scorings:
- logits (default): one forward pass; the answer is read from the next-token logits at the last
  prompt position (the batch is left-padded, so that is column -1 of every row). The margin is
  logsumexp(logits of the "yes" tokens) - logsumexp(logits of the "no" tokens); yes iff margin > 0.
  Every reply is compliant by construction. `logits_to_keep=1` makes the LM head run on one
  position only: memory does not grow as vocab x sequence (152k x 53k floats for 150 real images).
- generate: greedy decoding of a few tokens, scored with the reference rule (`metrics.py`); the
  margin is still recorded, from the raw logits of the first generated step.

Batches are planned by token budget: examples sorted by length, rows x longest row <= budget, so
short haystacks share a forward pass and a long one runs alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import GenerationConfig

from laid.eval.metrics import is_compliant, reference_correct
from laid.model.families import family_of
from laid.model.pixel_cache import PixelCache
from laid.model.prompting import Example, encode_batch, render_prompt

# Spellings of the answers that a tokenizer may hold as single tokens (Qwen's BPE has all of
# "yes", "Yes", " yes" ("Ġyes"), " Yes"...; the toy word-level tokenizer lower-cases to one id).
YES_FORMS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_FORMS = ("no", "No", "NO", " no", " No", " NO")


@dataclass(frozen=True)
class AnswerTokens:
    """Token ids whose logits stand for the answers "yes" and "no"."""

    yes: tuple[int, ...]
    no: tuple[int, ...]


def resolve_answer_tokens(tokenizer, vocab_size: int | None = None) -> AnswerTokens:
    """Find the ids of every spelling of yes / no that the tokenizer encodes as one token.

    A spelling counts only if it encodes to exactly one id, that id is not the unknown token, and it
    decodes back to the word (guards against normalisers mapping it elsewhere). `vocab_size` (the
    model's logit width) rejects ids the LM head cannot score.
    """
    unk = getattr(tokenizer, "unk_token_id", None)

    def single_ids(forms: Sequence[str], word: str) -> tuple[int, ...]:
        ids = []
        for form in forms:
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1 and enc[0] != unk and tokenizer.decode(enc).strip().lower() == word:
                ids.append(int(enc[0]))
        return tuple(dict.fromkeys(ids))

    tokens = AnswerTokens(single_ids(YES_FORMS, "yes"), single_ids(NO_FORMS, "no"))
    for word, ids, forms in (("yes", tokens.yes, YES_FORMS), ("no", tokens.no, NO_FORMS)):
        if not ids:
            raise ValueError(
                f"the tokenizer has no single-token spelling of {word!r} among {list(forms)}: "
                "logit scoring needs one; use generation scoring (--generate) instead"
            )
    if set(tokens.yes) & set(tokens.no):
        raise ValueError(f"the tokenizer maps yes and no to shared ids {sorted(set(tokens.yes) & set(tokens.no))}")
    if vocab_size is not None and max(tokens.yes + tokens.no) >= vocab_size:
        raise ValueError(f"answer token ids {tokens} exceed the model's vocabulary of {vocab_size}")
    return tokens


def yes_no_margin(logits: torch.Tensor, tokens: AnswerTokens) -> torch.Tensor:
    """logits (B, V) -> margin (B,) = logsumexp(logits[yes ids]) - logsumexp(logits[no ids])."""
    logits = logits.float()
    yes = torch.logsumexp(logits[:, list(tokens.yes)], dim=-1)  # (B,)
    no = torch.logsumexp(logits[:, list(tokens.no)], dim=-1)  # (B,)
    return yes - no


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def to_model(batch: dict, model) -> dict:
    device = model_device(model)
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def answer_logits(model, batch: dict) -> torch.Tensor:
    """Next-token logits at the last position of each (left-padded) row: (B, V), float32.

    use_cache=False: a single pass needs no KV cache, and for 50k-token haystacks it is gigabytes.
    """
    out = model(**batch, logits_to_keep=1, use_cache=False)
    return out.logits[:, -1, :].float()  # (B, 1, V) -> (B, V)


def generate_replies(model, tokenizer, batch: dict, tokens: AnswerTokens, max_new_tokens: int = 8):
    """Greedy replies and first-step margins: (margin (B,), list of B decoded strings).

    A fresh GenerationConfig (greedy, no penalties) so that a checkpoint's own sampling settings
    (real Qwen folders ship temperature / repetition_penalty) do not change the protocol.
    """
    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        return_dict_in_generate=True,
        output_logits=True,  # raw (unprocessed) logits of each step: (B, V) per step
    )
    out = model.generate(**batch, generation_config=config)
    new_tokens = out.sequences[:, batch["input_ids"].shape[1] :]  # (B, <= max_new_tokens)
    replies = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return yes_no_margin(out.logits[0], tokens), [r.strip() for r in replies]


@dataclass
class Score:
    """Outcome of one example. `reply` is None under logit scoring."""

    margin: float
    correct: bool
    compliant: bool
    input_tokens: int
    reply: str | None = None


def truth_word(example: Example) -> str:
    truth = (example.answer or "").strip().lower()
    if truth not in ("yes", "no"):
        raise ValueError(f"ground truth must be 'yes' or 'no', got {example.answer!r} (question: {example.question!r})")
    return truth


def score_examples(
    model,
    processor,
    examples: list[Example],
    tokens: AnswerTokens,
    generate: bool = False,
    max_new_tokens: int = 8,
    pixel_cache: PixelCache | None = None,
) -> list[Score]:
    """Score one batch of examples (all in one forward pass / one generate call).

    Call under torch.inference_mode(). A margin of exactly 0 counts as "no". Image paths in the
    examples are preprocessed through `pixel_cache` when given (same inputs, less work).
    """
    truths = [truth_word(ex) for ex in examples]
    batch = encode_batch(processor, examples, pixel_cache=pixel_cache)
    n_tokens = batch["attention_mask"].sum(dim=1).tolist()  # real tokens per row, padding excluded
    batch = to_model(batch, model)
    if generate:
        margins, replies = generate_replies(model, processor.tokenizer, batch, tokens, max_new_tokens)
        return [
            Score(float(m), reference_correct(r, t), is_compliant(r), int(n), r)
            for m, r, t, n in zip(margins.tolist(), replies, truths, n_tokens)
        ]
    margins = yes_no_margin(answer_logits(model, batch), tokens)
    return [
        Score(float(m), ("yes" if m > 0 else "no") == t, True, int(n))
        for m, t, n in zip(margins.tolist(), truths, n_tokens)
    ]


def image_token_count(processor, width: int, height: int) -> int:
    """Prompt tokens one width x height image becomes (the processor's family says how).

    Real Qwen2.5-VL: a 448x448 image -> 32x32 patches of 14 px -> 256 tokens after the merge;
    InternVL3: 256 per 448 px tile + <img> </img>; Gemma 3: 256 + <start_of_image> <end_of_image>.
    """
    return family_of(processor).image_tokens(processor, width, height)


def estimate_input_tokens(processor, question: str, image_sizes: Sequence[tuple[int, int]]) -> int:
    """Prompt length in tokens for a haystack, from image sizes (w, h) only (no pixels decoded).

    The rendered prompt holds one image placeholder per image, which the processor expands to the
    image's token count; used to plan batches before any image is loaded.
    """
    prompt = render_prompt(processor, len(image_sizes), question)
    n_text = len(processor.tokenizer(prompt, add_special_tokens=False).input_ids)
    return n_text + sum(image_token_count(processor, w, h) - 1 for w, h in image_sizes)


def plan_batches(token_counts: Sequence[int], batch_tokens: int, max_batch_size: int = 64) -> list[list[int]]:
    """Group indices into batches with rows x longest row <= batch_tokens (padded cost).

    Indices are taken by increasing length (ties by index), so rows of a batch have similar lengths
    and little padding; an example longer than the budget gets a batch of its own.
    """
    if batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("batch_tokens and max_batch_size must be positive")
    order = sorted(range(len(token_counts)), key=lambda i: (token_counts[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        grown = max(longest, token_counts[i])
        if current and (grown * (len(current) + 1) > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, grown = [], token_counts[i]
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches
