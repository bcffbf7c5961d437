"""Question templates of Visual Haystacks, shared by the benchmark writer and zoo pretraining.

Single needle: "For the image with a <anchor>, is there a <target>?" (answer: does the one image
with the anchor also contain the target). Multi needle (2-3 images hold the anchor):
"For all images with a <anchor>, is there a <target>?" (yes iff every anchor image has the target)
and "For any image with a <anchor>, is there a <target>?" (yes iff at least one has it).
"""

from __future__ import annotations

SINGLE = "For the image with a {anchor}, is there a {target}?"
MULTI = {
    "all": "For all images with a {anchor}, is there a {target}?",
    "any": "For any image with a {anchor}, is there a {target}?",
}
CAPTION = "What objects are in the image?"
# Pretraining only: retrieval with a dense answer (every object of the anchor image), which gives
# the retrieval circuit several supervised tokens per example instead of one yes/no bit.
RETRIEVAL_CAPTION = "What objects are in the image with a {anchor}?"

# Pretraining only: naming tasks appended to a VHs question; the answer is the object the question
# names (its target or its anchor). A pure copy from the question, they teach the answer position
# to attend to the question's object words, which the yes/no answer alone never rewarded (docs/HISTORY.md).
NAME_TARGET = "What do you look for?"
NAME_ANCHOR = "Which object marks the image?"


def single_needle_question(anchor: str, target: str) -> str:
    return SINGLE.format(anchor=anchor, target=target)


def multi_needle_question(mode: str, anchor: str, target: str) -> str:
    if mode not in MULTI:
        raise ValueError(f"multi-needle mode must be one of {sorted(MULTI)}, got {mode!r}")
    return MULTI[mode].format(anchor=anchor, target=target)


def caption_answer(categories: list[str]) -> str:
    """Canonical caption for the pretraining task: categories in sorted order, comma-separated."""
    return " , ".join(sorted(categories))
