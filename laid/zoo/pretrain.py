"""CPU pretraining of a tiny zoo model on synthetic haystacks.

Why this makes a teacher with a long effective window and students with short ones: the teacher is larger, sees haystacks of 1-10 images and has a supervised retrieval head
(laid/zoo/retrieval_attention.py); the students are smaller and see one image. Answering a VHs
question over several images needs *binding*: find the image that holds the anchor, then check the
target there and not anywhere else. A model that only saw one image never had to learn it. Of
the two, training is what makes the gap at this scale (the size ablation is in docs/HISTORY.md).

Stage 1 (`pretrain_vision`) aligns the vision tower to the category words; stage 2 (`pretrain`)
freezes it and trains the LM on a task mix, one task per step:
- caption (single image -> "blue square , red circle"): dense supervision of reading an image;
- naming (a VHs question + "What do you look for?" -> its target, or "Which object marks the
  image?" -> its anchor): a copy task that gives the answer position a first-order reason to
  attend to the question's object words;
- retrieval caption ("What objects are in the image with a <anchor>?" over a haystack): dense
  supervision for the retrieval circuit (question -> needle image) that VHs questions need;
- single-needle VHs question over a haystack of size N, N log-uniform in [min, max], in minimal
  pairs (`sample_needle_pair`: same haystack, opposite answers);
- multi-needle VHs question ("all"/"any", 2-3 needles).
Images come from laid/zoo/image_bank.py: a bank of rendered images with cached frozen-tower
features (or fresh renders with `freeze_vision: false`); haystacks are recomposed at every step.
Loss: cross-entropy on answer tokens only, plus, if `retrieval_attention_weight` > 0 (default 0),
the retrieval-attention loss of laid/zoo/retrieval_attention.py on examples whose needles are known.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from laid.data import questions as qs
from laid.data.render import CATEGORIES, sample_image
from laid.data.synth import targets_in_distractors
from laid.model.prompting import Example, encode_batch
from laid.schedule import learning_rate
from laid.zoo.configs import RETRIEVAL_QUERIES, PretrainConfig
from laid.zoo.image_bank import FreshImages, ImageBank, encoder_outputs
from laid.model.families import family_of
from laid.model.hooks import record_qk, site_name
from laid.zoo.retrieval_attention import RetrievalAttentionLoss, needle_token_mask

# Vision tokens per 56x56 image (4) + <|vision_start|>/<|vision_end|>; prompt overhead in tokens.
TOKENS_PER_IMAGE = 6
PROMPT_TOKENS = 45


def _log_uniform_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 0.999)) - 0.499))) if hi > lo else lo


# P(an image shows a given category) under sample_image's 1-3 objects of 12: 2 / 12 on average.
TARGET_PREVALENCE = 1 / 6


def _needle_parts(rng: np.random.Generator, size: int, n_needles: int, mode: str, asked=CATEGORIES):
    """Anchor, target, answer and image recipes of one VHs haystack (laid/data/synth.py's rule).

    Returns (anchor, target, yes, recipes) with recipes a list of (must_have, must_not_have) in
    haystack order. As in the benchmark, the number of images that show the target is drawn
    independently of the answer (laid.data.synth.targets_in_distractors), so neither "is the
    target anywhere" nor "how often" answers the question: the model has to bind it to the anchor.
    """
    anchor, target = (str(c) for c in rng.choice(asked, size=2, replace=False))
    yes = bool(rng.integers(2))
    n = min(n_needles, size)
    if n == 1:
        j = int(yes)  # needles that hold the target
    elif mode == "all":
        j = n if yes else int(rng.integers(0, n))
    else:  # "any"
        j = int(rng.integers(1, n + 1)) if yes else 0
    m = targets_in_distractors(rng, size, n, j, TARGET_PREVALENCE)
    recipes = (
        [((anchor, target), ())] * j
        + [((anchor,), (target,))] * (n - j)
        + [((target,), (anchor,))] * m
        + [((), (anchor, target))] * (size - n - m)
    )
    return anchor, target, yes, [recipes[i] for i in rng.permutation(size)]


def _draw(rng: np.random.Generator, recipes, source) -> list[tuple]:
    """(image, categories) for each (must_have, must_not_have) recipe."""
    source = source or FreshImages()
    return [source.draw(rng, have, not_have) for have, not_have in recipes]


def sample_needle_example(
    rng: np.random.Generator, size: int, n_needles: int = 1, mode: str = "all", source=None, asked=CATEGORIES
) -> Example:
    """A VHs question over `size` images (single needle, or "all"/"any" multi needle).

    `source` gives the images (laid/zoo/image_bank.py); default: freshly rendered ones. Anchor and
    target are drawn from `asked` (the category curriculum, see TaskSampler); images show any category.
    """
    anchor, target, yes, recipes = _needle_parts(rng, size, n_needles, mode, asked)
    if min(n_needles, size) == 1:
        question = qs.single_needle_question(anchor, target)
    else:
        question = qs.multi_needle_question(mode, anchor, target)
    needles = tuple(i for i, (have, _) in enumerate(recipes) if anchor in have)
    images = [image for image, _ in _draw(rng, recipes, source)]
    return Example(images, question, "yes" if yes else "no", needles)


def sample_needle_pair(rng: np.random.Generator, size: int, source=None, asked=CATEGORIES) -> list[Example]:
    """Two single-needle questions over the *same* haystack and anchor with opposite answers.

    The second question asks for a target the needle image shows if the first one's answer was no,
    and for one it does not show if it was yes. Within a pair the images, the anchor and every
    word but the target are equal, so the only way to lower the loss on both is the interaction
    the task is about (is this target in the anchor's image?): everything that depends on the
    haystack or the question alone cancels out (the A/B that chose this: docs/HISTORY.md).
    Falls back to one unpaired question when no partner exists (the needle shows only the anchor).
    A twin whose answer is yes may name any category its needle shows, also one outside `asked`.
    """
    anchor, target, yes, recipes = _needle_parts(rng, size, 1, "all", asked)
    drawn = _draw(rng, recipes, source)
    images = [image for image, _ in drawn]
    needle = next(i for i, (have, _) in enumerate(recipes) if anchor in have)
    first = Example(images, qs.single_needle_question(anchor, target), "yes" if yes else "no", (needle,))
    shown = set(drawn[needle][1]) - {anchor}
    partners = sorted(set(asked) - shown - {anchor}) if yes else sorted(shown)
    if not partners:
        return [first]
    other = str(rng.choice(partners))
    return [first, Example(images, qs.single_needle_question(anchor, other), "no" if yes else "yes", (needle,))]


def sample_naming_example(rng: np.random.Generator, size: int, source=None, asked=CATEGORIES) -> Example:
    """A VHs question followed by "What do you look for?" (-> target) or "Which object marks the image?" (-> anchor).

    Copying a word of the question is learnable from the first step, unlike the yes/no answer, whose
    dependence on (target, image) is a pure interaction with no first-order signal: without this
    task a tiny LM stayed at chance on one-image questions for a long time (docs/HISTORY.md).
    """
    anchor, target, _, recipes = _needle_parts(rng, size, 1, "all", asked)
    ask_target = bool(rng.integers(2))
    follow_up = qs.NAME_TARGET if ask_target else qs.NAME_ANCHOR
    question = f"{qs.single_needle_question(anchor, target)} {follow_up}"
    images = [image for image, _ in _draw(rng, recipes, source)]
    return Example(images, question, target if ask_target else anchor)


def sample_caption_example(rng: np.random.Generator, source=None) -> Example:
    [(image, cats)] = _draw(rng, [((), ())], source)
    return Example([image], qs.CAPTION, qs.caption_answer(cats))


def sample_retrieval_caption_example(rng: np.random.Generator, size: int, source=None, asked=CATEGORIES) -> Example:
    """"What objects are in the image with a <anchor>?" over a haystack: answer = that image's objects."""
    anchor = str(rng.choice(asked))
    drawn = _draw(rng, [((anchor,), ())] + [((), (anchor,))] * (size - 1), source)
    cats = drawn[0][1]
    images = [image for image, _ in drawn]
    order = rng.permutation(size)
    question = qs.RETRIEVAL_CAPTION.format(anchor=anchor)
    return Example([images[i] for i in order], question, qs.caption_answer(cats), (int(np.argmin(order)),))


@dataclass
class TaskSampler:
    cfg: PretrainConfig
    rng: np.random.Generator
    source: object = None  # FreshImages or ImageBank (laid/zoo/image_bank.py); None = fresh renders
    step: int = 0  # set by the training loop; selects the stage of cfg.category_schedule

    @property
    def asked(self) -> tuple[str, ...]:
        """Categories questions may name at this step (the images always show all of them).

        Starting with a few categories (cfg.category_schedule) shortens the plateau before the
        first VHs answers are learned: with k targets, an image feature of each of them already
        correlates with the answer (with 12 that correlation is too weak to follow; docs/HISTORY.md).
        """
        k = len(CATEGORIES)
        for start, n in self.cfg.category_schedule:
            if self.step >= start:
                k = n
        return CATEGORIES[:k]

    def haystack_size(self) -> int:
        """Log-uniform in [min_haystack, max_haystack]; capped at short_max_haystack for the first
        short_haystack_steps steps (short haystacks first: the first answers are learned on them)."""
        c = self.cfg
        hi = min(c.max_haystack, c.short_max_haystack) if self.step < c.short_haystack_steps else c.max_haystack
        return _log_uniform_int(self.rng, c.min_haystack, hi)

    def batch(self) -> list[Example]:
        """One batch of a single task; batch size shrinks with haystack size (token budget)."""
        c, rng, src, asked = self.cfg, self.rng, self.source, self.asked
        if rng.random() < c.caption_fraction:
            return [sample_caption_example(rng, src) for _ in range(c.batch_size)]
        size = self.haystack_size()
        per_example = size * TOKENS_PER_IMAGE + PROMPT_TOKENS
        n = max(1, min(c.batch_size, c.max_tokens_per_batch // per_example))
        if rng.random() < c.retrieval_caption_fraction:
            return [sample_retrieval_caption_example(rng, size, src, asked) for _ in range(n)]
        if rng.random() < c.naming_fraction:
            return [sample_naming_example(rng, size, src, asked) for _ in range(n)]
        if rng.random() < c.multi_needle_fraction and size >= 2:
            needles = int(rng.integers(2, min(3, size) + 1))
            mode = str(rng.choice(["all", "any"]))
            return [sample_needle_example(rng, size, needles, mode, src, asked) for _ in range(n)]
        if c.minimal_pairs:
            out: list[Example] = []
            while len(out) < n:
                out.extend(sample_needle_pair(rng, size, src, asked))
            return out[:n]
        return [sample_needle_example(rng, size, source=src, asked=asked) for _ in range(n)]


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    """Warmup, then cosine decay to 10% of the peak rate."""
    return learning_rate(cfg.lr, step, cfg.steps, cfg.warmup_steps, "cosine", floor=0.1)


def category_token_ids(processor) -> list[int]:
    """Id of the first word of each category name (its colour, unique per category)."""
    return [processor.tokenizer.convert_tokens_to_ids(c.split(" ")[0]) for c in CATEGORIES]


def pretrain_vision(
    model, processor, cfg: PretrainConfig, steps: int, progress: bool = True, desc: str = "vision", position: int = 0
) -> dict:
    """Stage 1: align the vision tower (with its merger) to the words that name the objects.

    Real VLMs start from a ViT pretrained contrastively against text (CLIP-style); this is the toy's
    equivalent. Every merged vision token must predict the categories of its *whole* image through
    a dot product with the input embeddings of the category words (multi-label, sigmoid), so (1)
    each token carries the image's full content, which retrieval over a haystack needs, and (2)
    image features and question words live in one space, so matching "red circle" in a question to
    an image is a plain attention dot product. Without this stage the tiny LM did not learn to
    answer even one-image questions within the CPU budget. Nothing is added to the model.
    """
    rng = np.random.default_rng(cfg.seed + 1000)
    family = family_of(model)
    embed = model.get_input_embeddings()
    ids = torch.tensor(category_token_ids(processor))
    bias = torch.nn.Parameter(torch.full((len(CATEGORIES),), -2.0))
    log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))  # learnable inverse temperature
    params = [*family.vision_parameters(model), embed.weight, bias, log_scale]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    log = {"vision_loss": [], "vision_step": []}
    model.train()
    ema = None
    for step in tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0, position=position):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / 20)
        images, labels = [], torch.zeros(cfg.vision_batch_size, len(CATEGORIES))
        for i in range(cfg.vision_batch_size):
            image, cats = sample_image(rng)
            images.append(image)
            labels[i, [CATEGORIES.index(c) for c in cats]] = 1.0
        pix = processor.image_processor(images=images, return_tensors="pt")
        feats = family.image_features(model, pix).flatten(0, 1)  # (n_img * T, H)
        words = embed.weight[ids]  # (C, H)
        # Cosine similarity, not a raw dot product: the LM sees every token through RMSNorm, so only
        # directions matter; a raw dot product against small word embeddings instead drove the
        # features' norm into the hundreds and left several colours poorly separated (AUC ~0.7).
        cos = F.normalize(feats, dim=-1) @ F.normalize(words, dim=-1).T  # (n_img * T, C)
        logits = (log_scale.exp() * cos + bias).view(len(images), -1, len(CATEGORIES))  # (n_img, T, C)
        loss = F.binary_cross_entropy_with_logits(logits, labels[:, None, :].expand_as(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            log["vision_loss"].append(round(ema, 5))
            log["vision_step"].append(step)
    return log


def image_token_runs(input_ids: torch.Tensor, image_token_id: int) -> list[int]:
    """Tokens of each image of a batch (B, S), rows in order: the lengths of the image-token runs
    (every family puts one image's placeholders in one run)."""
    img = torch.nn.functional.pad((input_ids == image_token_id).int(), (1, 1))  # (B, S + 2)
    edges = torch.diff(img, dim=-1)
    return [int(e - s) for row in edges for s, e in zip((row == 1).nonzero().squeeze(-1), (row == -1).nonzero().squeeze(-1))]


def anchor_positions(input_ids: torch.Tensor, image_token_id: int, colour_ids: torch.Tensor) -> torch.Tensor:
    """(B,) position of each row's anchor word: the first category colour word after the last image.

    In every question with needles the anchor is the first object named ("For the image with a
    <anchor>, ...", "What objects are in the image with a <anchor>?"), and the instruction names
    none. input_ids (B, S); colour_ids (C,) the token id of each category's (unique) colour word.
    """
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)  # (S,)
    last_image = torch.where(input_ids == image_token_id, pos, -1).max(-1).values  # (B,)
    is_colour = torch.isin(input_ids, colour_ids.to(input_ids.device)) & (pos[None, :] > last_image[:, None])  # (B, S)
    if not bool(is_colour.any(-1).all()):
        raise ValueError("a row with needles names no object after its images; cannot place the anchor query")
    return is_colour.int().argmax(-1)


class _RetrievalSupervision:
    """Computes the retrieval-attention loss of a batch from recorded Q/K (laid/zoo/retrieval_attention.py)."""

    def __init__(self, model, processor, query: str = "answer"):
        if query not in RETRIEVAL_QUERIES:  # configs are checked at load; this guards direct callers
            raise ValueError(f"pretrain.retrieval_attention_query is {query!r}; use one of {list(RETRIEVAL_QUERIES)}")
        self.loss = RetrievalAttentionLoss(head=0)
        self.image_token_id = family_of(model).image_token_id(model.config)
        self.query = query
        self.colour_ids = torch.tensor(category_token_ids(processor))  # (C,)

    def __call__(self, batch, examples, rec) -> torch.Tensor:
        layer = rec.layers[0]
        q, k = rec.tensors[site_name(layer, "q_rot")], rec.tensors[site_name(layer, "k_rot")]  # (B, H, S, D), (B, H_kv, S, D)
        needles = needle_token_mask(batch["input_ids"], self.image_token_id, image_token_runs(batch["input_ids"], self.image_token_id),
                                    [ex.needles for ex in examples])
        if self.query == "anchor":
            query_pos = anchor_positions(batch["input_ids"], self.image_token_id, self.colour_ids)
        else:  # the position that predicts the first answer token: one before the first labelled one
            query_pos = (batch["labels"] != -100).int().argmax(-1) - 1  # (B,)
        return self.loss(q, k, query_pos, needles, batch["attention_mask"])


@torch.no_grad()
def max_position_seen(model, processor, cfg: PretrainConfig) -> int:
    """Largest M-RoPE position id + 1 of the longest pretraining haystack (the training length).

    YaRN and SelfExtend need it as `original_max_position_embeddings` / window: with M-RoPE an image
    advances the position by its grid side, not by its token count, so token counts overstate it.
    """
    seen = []
    hook = model.model.language_model.rotary_emb.register_forward_pre_hook(
        lambda mod, args: seen.append(int(args[1].max()))
    )
    try:
        example = sample_needle_example(np.random.default_rng(0), cfg.max_haystack)
        model(**encode_batch(processor, [example], with_answers=True))
    finally:
        hook.remove()
    return max(seen) + 1


def pretrain(
    model,
    processor,
    cfg: PretrainConfig,
    steps: int | None = None,
    progress: bool = True,
    desc: str = "pretrain",
    position: int = 0,
    on_step=None,
    image_size: int = 56,
) -> dict:
    """Train `model` in place; returns a log dict (loss curve, seconds, examples seen).

    on_step(step, model), if given, runs after every optimiser step (e.g. a periodic evaluation).
    """
    steps = steps or cfg.steps
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    source = None
    family = family_of(model)
    if cfg.freeze_vision:
        # The vision tower keeps what stage 1 taught it (as LLaVA-style VLMs keep their CLIP tower
        # frozen while the LM learns to use it; docs/HISTORY.md has the A/B), and its features can
        # be cached, which makes a step 1.5-2.1x faster (laid/zoo/image_bank.py), in the families
        # whose models take cached features; the others render fresh images through the frozen tower.
        for p in family.vision_parameters(model):
            p.requires_grad_(False)
        if family.encoder_cache:
            source = ImageBank(model, processor, cfg.image_bank_size, cfg.seed + 2000, image_size=image_size,
                               progress=progress, desc=desc)
    sampler = TaskSampler(cfg, rng, source)
    model.train()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2]
    no_decay = [p for n, p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    log = {"loss": [], "step": [], "examples": 0, "retrieval_attention_loss": []}
    retrieval = _RetrievalSupervision(model, processor, cfg.retrieval_attention_query) if cfg.retrieval_attention_weight > 0 else None
    t0 = time.time()
    ema = att_ema = None
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0, position=position)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        sampler.step = step
        examples = sampler.batch()
        batch = encode_batch(processor, examples, with_answers=True)
        if (cached := encoder_outputs(examples)) is not None:
            batch.pop("pixel_values")  # (0, D): bank images carry their features instead
            batch["mm_encoder_outputs"] = cached
        if retrieval is not None and any(ex.needles for ex in examples):
            with record_qk(model, layers=[cfg.retrieval_attention_layer], sites=("q_rot", "k_rot"), detach=False) as rec:
                out = model(**batch)
            att = retrieval(batch, examples, rec)
            loss = out.loss + cfg.retrieval_attention_weight * att
            att_ema = att.item() if att_ema is None else 0.98 * att_ema + 0.02 * att.item()
        else:
            out = model(**batch)
            loss = out.loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"pretraining loss is {loss.item()} at step {step}; lower pretrain.lr in the zoo config")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        log["examples"] += len(examples)
        if on_step is not None:
            on_step(step, model)
        ema = out.loss.item() if ema is None else 0.98 * ema + 0.02 * out.loss.item()
        if step % 25 == 0 or step == steps - 1:
            log["loss"].append(round(ema, 5))
            log["retrieval_attention_loss"].append(None if att_ema is None else round(att_ema, 5))
            log["step"].append(step)
            bar.set_postfix(loss=f"{ema:.3f}")
    log["seconds"] = round(time.time() - t0, 1)
    for p in family.vision_parameters(model):
        p.requires_grad_(True)  # later stages (distillation) decide for themselves
    model.eval()
    log["max_position"] = max_position_seen(model, processor, cfg)
    log["max_haystack"] = cfg.max_haystack
    return log
