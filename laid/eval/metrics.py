"""Visual Haystacks metrics: the official scoring rule (nltk word tokens), bootstrap accuracy, effective window, gains.

Pure numpy on purpose: the comparison and figure code uses these without importing torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Paper's Table 1 windows (haystack sizes in images, both ends inclusive).
SHORT_WINDOW = (1, 20)
LONG_WINDOW = (50, 150)
# Reference protocol: mean +- std over 100 bootstrap resamples.
N_BOOTSTRAP = 100
# See `effective_window` for why 0.6 and not the paper's ">0.5".
DEFAULT_THRESHOLD = 0.6

_WORD = re.compile(r"\w+")
WORD_RULES = ("official", "regex", "treebank")  # the last two: ablations that are not the official rule


def official_word_tokens(text: str) -> list[str]:
    """`nltk.word_tokenize(text)` as the official scorer calls it, without the punkt_tab data.

    The official code (visual-haystacks/vhs_benchmark, utils.py `run_eval` / `run_detailed_eval`)
    tests `gt in nltk.word_tokenize(pred.lower())`. word_tokenize = Punkt sentence split (English
    model from the `punkt_tab` data) then `NLTKWordTokenizer` per sentence; the split matters
    because the word tokenizer detaches only the *final* period of its input ("is yes. No" -> 'yes.'
    unsplit, whereas the sentence "is yes." -> 'yes', '.'). The data cannot be downloaded here, so
    the split uses Punkt with empty parameters. For whether "yes" or "no" is a token the two agree:
    Punkt breaks after any period-final word that is not an abbreviation, and the English model
    lists neither "yes" nor "no" among its abbreviations nor starts a collocation with them
    (nltk_data punkt_tab/english/abbrev_types.txt and collocations.tab, read for this); its
    orthographic and sentence-starter tables act only after abbreviations, initials and numbers.
    Other tokens may differ ("Dr." vs "Dr", "."), which the yes/no rule never looks at.
    """
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    words = NLTKWordTokenizer()
    return [tok for sent in PunktSentenceTokenizer().tokenize(text) for tok in words.tokenize(sent)]


def reply_words(reply: str, rule: str = "official") -> list[str]:
    """Word tokens of the lower-cased reply by the official rule (nltk), or an ablation (regex \\w+, treebank).

    "It is yes. No doubt." -> official ['it', 'is', 'yes', '.', 'no', 'doubt', '.']; "yes/no" ->
    official ['yes/no'] (neither word), regex ['yes', 'no'] (both): the regex is not the official rule.
    """
    if rule == "official":
        return official_word_tokens(reply.lower())
    if rule == "regex":
        return _WORD.findall(reply.lower())
    if rule == "treebank":  # nltk's word tokenizer without the sentence split: "yes. no" keeps 'yes.'
        from nltk.tokenize import NLTKWordTokenizer

        return NLTKWordTokenizer().tokenize(reply.lower())
    raise ValueError(f"unknown word rule {rule!r}; expected one of {WORD_RULES}")


def reference_correct(reply: str, truth: str, rule: str = "official") -> bool:
    """The Visual Haystacks rule: correct iff the ground-truth word is a word token of the reply.

    A reply that says both "yes" and "no" counts as correct for either truth, exactly as in the
    reference code; `is_compliant` and the logit margin are the places to look for such hedging.
    """
    return truth.strip().lower() in reply_words(reply, rule)


def is_compliant(reply: str, rule: str = "official") -> bool:
    """A reply answers the question if "yes" or "no" is one of its word tokens (the reference rule).

    Word tokens rather than substrings, so "not sure" or "I know" do not count as answers.
    """
    words = reply_words(reply, rule)
    return "yes" in words or "no" in words


@dataclass(frozen=True)
class BootstrapAccuracy:
    """Accuracy of one haystack size with its bootstrap spread.

    `mean` is the plain fraction correct (the bootstrap mean converges to it); `std` is the standard
    deviation (ddof=0) of the resampled accuracies; `ci_low`/`ci_high` their 2.5/97.5 percentiles;
    `resamples` the resampled accuracies themselves, shape (n_resamples,).
    """

    mean: float
    std: float
    ci_low: float
    ci_high: float
    resamples: np.ndarray


def bootstrap_accuracy(
    correct, n_resamples: int = N_BOOTSTRAP, seed: int | Sequence[int] = 0, confidence: float = 0.95
) -> BootstrapAccuracy:
    """Resample the 0/1 `correct` vector with replacement `n_resamples` times.

    `seed` (an int or a sequence of ints, as numpy's default_rng takes) makes it reproducible.

    An empty vector gives NaN everywhere (a size with no samples has no accuracy).
    """
    c = np.asarray(correct, dtype=np.float64).ravel()
    if c.size and not np.all((c == 0) | (c == 1)):
        raise ValueError("bootstrap_accuracy expects a vector of 0/1 (or bool) outcomes")
    if c.size == 0:
        nan = float("nan")
        return BootstrapAccuracy(nan, nan, nan, nan, np.full(n_resamples, np.nan))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, c.size, size=(n_resamples, c.size))  # (R, n)
    resamples = c[idx].mean(axis=1)  # (R,)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(resamples, [tail, 100 - tail])
    return BootstrapAccuracy(float(c.mean()), float(resamples.std()), float(low), float(high), resamples)


@dataclass(frozen=True)
class EffectiveWindow:
    """Effective window in images.

    censored: accuracy never fell below the threshold, so `value` (the largest evaluated size) is
    only a lower bound. below_range: accuracy is already below the threshold at the smallest
    evaluated size; `value` is NaN because there is no size above the threshold to interpolate from.
    """

    value: float
    censored: bool = False
    below_range: bool = False


def effective_window(sizes, accuracy, threshold: float = DEFAULT_THRESHOLD) -> EffectiveWindow:
    """Largest haystack size up to which accuracy stays >= `threshold`, interpolated in log size.

    Sizes are sorted; NaN accuracies (sizes not evaluated) are dropped. At the first size whose
    accuracy is below the threshold, the crossing is placed by linear interpolation of accuracy
    against log(size) between that size and the previous one (which is >= threshold). Later
    recoveries above the threshold are ignored: the window is where accuracy first stops holding.

    Why 0.6 by default: the task is binary, so chance is 0.5. The paper's Figure 1 calls a window
    effective while accuracy is ">0.5", which works for real Qwen2.5-VL models whose accuracy is far
    above chance at short range; for small models near chance, sampling noise alone (std ~0.05 at
    100 samples) crosses 0.5 at random sizes. 0.6 is two standard errors above chance at 100
    samples, so a crossing reflects the model, not the noise. Pass 0.5 to reproduce Figure 1.

    If the smallest size is already below the threshold the result is NaN with `below_range=True`
    (choice: we do not extrapolate below the evaluated grid, since accuracy at "fewer images than
    the smallest size" is not defined for the task). If accuracy never drops below the threshold
    the largest evaluated size is returned with `censored=True`.
    """
    s = np.asarray(sizes, dtype=np.float64).ravel()
    a = np.asarray(accuracy, dtype=np.float64).ravel()
    if s.shape != a.shape:
        raise ValueError(f"effective_window: {s.size} sizes but {a.size} accuracies")
    keep = ~np.isnan(a)
    s, a = s[keep], a[keep]
    if s.size == 0:
        return EffectiveWindow(float("nan"), below_range=True)
    if np.any(s <= 0):
        raise ValueError("effective_window: haystack sizes must be positive")
    order = np.argsort(s)
    s, a = s[order], a[order]
    below = np.flatnonzero(a < threshold)
    if below.size == 0:
        return EffectiveWindow(float(s[-1]), censored=True)
    i = int(below[0])
    if i == 0:
        return EffectiveWindow(float("nan"), below_range=True)
    x0, x1 = math.log(s[i - 1]), math.log(s[i])
    a0, a1 = a[i - 1], a[i]  # a0 >= threshold > a1
    t = (a0 - threshold) / (a0 - a1)
    return EffectiveWindow(float(math.exp(x0 + t * (x1 - x0))))


def relative_gain(sizes, accuracy, base_sizes, base_accuracy, window: tuple[float, float]) -> float:
    """Average relative gain (%) over a base run, as in the paper's Table 1.

    Mean over the sizes in `window` (inclusive) present in both runs of (acc - base) / base * 100.
    Sizes where either accuracy is NaN or the base accuracy is 0 (gain undefined) are skipped;
    NaN if no size is left. Works for accuracies in [0, 1] or in percent alike.
    """
    lo, hi = window
    ours = {float(k): float(v) for k, v in zip(np.ravel(sizes), np.ravel(accuracy))}
    base = {float(k): float(v) for k, v in zip(np.ravel(base_sizes), np.ravel(base_accuracy))}
    gains = [
        (ours[k] - base[k]) / base[k] * 100.0
        for k in sorted(set(ours) & set(base))
        if lo <= k <= hi and not math.isnan(ours[k]) and not math.isnan(base[k]) and base[k] != 0
    ]
    return float(np.mean(gains)) if gains else float("nan")


def average_gains(sizes, accuracy, base_sizes, base_accuracy) -> tuple[float, float]:
    """(short, long) average relative gains in %, windows SHORT_WINDOW and LONG_WINDOW."""
    return (
        relative_gain(sizes, accuracy, base_sizes, base_accuracy, SHORT_WINDOW),
        relative_gain(sizes, accuracy, base_sizes, base_accuracy, LONG_WINDOW),
    )
