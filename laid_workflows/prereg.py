"""Preregistration: hypotheses fixed in a committed file before the confirmatory runs, then judged once.

A preregistration (configs/preregistration/<name>.yaml; an example: docs/preregistration-example.yaml)
names the study config it reads (its path and the sha256 of its content when the file was frozen),
the students, arms, seeds, budgets, the split (test), the non-inferiority margin, the interval
(kind, confidence) and the hypotheses, each a difference arm - reference over a group of haystack
sizes of the study (`laid study`, laid_workflows/study_stats.py):

    superiority       "arm - ref over sizes S > 0"   held: lower bound > 0; not held: upper bound below
                                                     the smallest effect of interest (default: the margin)
    non-inferiority   "arm - ref over sizes S non-inferior at margin m"
                                                     held: lower bound > -m; not held: upper bound < -m

anything else is inconclusive, as is an interval that does not count seed variance (a trained side
with one seed), a study that ran other seeds than registered, or a missing cell. Why: a claim is
only as good as the choice before it; a threshold, margin or group picked after seeing the numbers
can make any of them look supported.

Frozen: the file is tracked by git, has no uncommitted changes, and its last commit (the freeze
commit, returned) is an ancestor of HEAD; the study config it names still has the registered hash
and was committed with that content no later than the freeze commit. `laid prereg FILE` prints all
of it (and the verdicts, with --run-dir); the results page prints the commit and one line per
hypothesis for every preregistration whose study is in the run folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import xarray as xr

from laid.config import load_config
from laid.eval.paired import DEFAULT_MARGIN, METHODS, Interval, interval_description
from laid_workflows.study_stats import REFERENCES  # what a study pairs each arm with

REPO = Path(__file__).resolve().parents[1]
PREREG_DIR = REPO / "configs" / "preregistration"
KINDS = ("superiority", "non-inferiority")
OUTCOMES = ("held", "not held", "inconclusive")


@dataclass
class StudyRef:
    config: str = ""  # the study config, relative to the repository root
    sha256: str = ""  # of its content when the preregistration was frozen (`laid prereg` prints it)
    # Other files that decide the runs ({path relative to the repository root: sha256}): the distill
    # configs the study names, the zoo configs of its models. An edit to one is an edit to the study.
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Analysis:
    interval: str = "seed-t"  # laid.eval.paired.METHODS
    confidence: float = 0.95


@dataclass
class Hypothesis:
    id: str = ""
    kind: str = "superiority"  # KINDS
    student: str = ""
    arm: str = ""  # an arm of the study
    ref: str = "kd"  # base | kd | sft
    budget: int = 0  # optimizer steps
    group: str = ""  # a group of the study config, e.g. far
    sizes: list[int] = field(default_factory=list)  # that group's haystack sizes, restated (checked)
    margin: float | None = None  # non-inferiority margin; null = the preregistration's
    smallest_effect: float | None = None  # superiority: below this the effect is not worth claiming; null = margin

    def statement(self, margin: float) -> str:
        head = f"{self.arm} - {self.ref} over sizes {self.sizes} at {self.budget} steps on {self.student}"
        if self.kind == "superiority":
            return f"{head} > 0"
        return f"{head} non-inferior at margin {100 * self.margin_or(margin):g} points"

    def margin_or(self, margin: float) -> float:
        return self.margin if self.margin is not None else margin


@dataclass
class Preregistration:
    name: str = ""
    study: StudyRef = field(default_factory=StudyRef)
    split: str = "test"  # claims read test, once
    students: list[str] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    margin: float = DEFAULT_MARGIN  # accuracy (0.03 = 3 points)
    analysis: Analysis = field(default_factory=Analysis)
    hypotheses: list[Hypothesis] = field(default_factory=list)

    def __post_init__(self):
        if not self.name or not self.study.config or len(self.study.sha256) != 64:
            raise ValueError("name, study.config and study.sha256 (64 hex digits; `laid prereg FILE` prints the config's) are required")
        if self.split != "test":
            raise ValueError(f"split {self.split!r}: a preregistered claim reads the test split (choices read val)")
        if self.analysis.interval not in METHODS or not 0 < self.analysis.confidence < 1:
            raise ValueError(f"analysis: interval must be one of {METHODS} and confidence in (0, 1), got {self.analysis}")
        if not 0 < self.margin < 1 or not self.hypotheses or not self.seeds:
            raise ValueError("margin must be in (0, 1) (accuracy), and seeds and hypotheses must not be empty")
        ids = [h.id for h in self.hypotheses]
        if len(set(ids)) != len(ids) or not all(ids):
            raise ValueError(f"hypothesis ids must be given and distinct, got {ids}")
        for h in self.hypotheses:
            where = f"hypothesis {h.id}"
            if h.kind not in KINDS:
                raise ValueError(f"{where}: kind {h.kind!r} is not one of {KINDS}")
            if h.student not in self.students or h.arm not in self.arms or h.budget not in self.budgets:
                raise ValueError(f"{where}: student, arm and budget must be among the registered {self.students}, "
                                 f"{self.arms}, {self.budgets}")
            if h.ref not in REFERENCES or (h.ref != "base" and h.ref not in self.arms):
                raise ValueError(f"{where}: ref {h.ref!r} must be base or a registered arm among {REFERENCES}")
            if not h.group or not h.sizes:
                raise ValueError(f"{where}: name the study's group and restate its sizes")


def load_prereg(path: str | Path) -> Preregistration:
    """The preregistration at `path`; a missing file, unknown key or inconsistent field is one line."""
    return load_config(Preregistration, path, what="preregistration")


# --- frozen? -------------------------------------------------------------------------------------


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)


def _repo_root(path: Path) -> Path | None:
    out = _git(path.parent, "rev-parse", "--show-toplevel")
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Freeze:
    """Whether a preregistration is frozen, at which commit, and (one line each) what is wrong."""

    frozen: bool
    commit: str | None
    problems: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.frozen:
            return f"frozen at commit {self.commit[:10]}"
        return "NOT FROZEN: " + "; ".join(self.problems)


def freeze_status(path: str | Path) -> Freeze:
    """Frozen = tracked by git, clean, last committed at an ancestor of HEAD (that commit is returned)."""
    path = Path(path).resolve()
    root = _repo_root(path) if path.is_file() else None
    if root is None:
        return Freeze(False, None, (f"{path} is not a file in a git repository",))
    rel = path.relative_to(root).as_posix()
    if _git(root, "ls-files", "--error-unmatch", rel).returncode != 0:
        return Freeze(False, None, (f"{rel} is not committed (git add + commit it before the confirmatory runs)",))
    commit = _git(root, "log", "-n", "1", "--format=%H", "--", rel).stdout.strip() or None
    problems = []
    if _git(root, "status", "--porcelain", "--", rel).stdout.strip():
        problems.append(f"{rel} has uncommitted changes (commit them: that commit becomes the freeze)")
    if commit is None or _git(root, "merge-base", "--is-ancestor", commit, "HEAD").returncode != 0:
        problems.append(f"the commit of {rel} is not an ancestor of HEAD")
    return Freeze(not problems, commit, tuple(problems))


def config_problems(prereg: Preregistration, prereg_path: str | Path, freeze: Freeze | None = None) -> list[str]:
    """What is wrong between a preregistration and the study config it names (empty: they match):
    a missing or edited config (sha256 differs), one not committed with that content by the freeze
    commit, or registered students, arms, seeds or budgets the config does not run."""
    from laid_workflows.study import load_study_config

    root = _repo_root(Path(prereg_path).resolve()) or REPO
    config = root / prereg.study.config
    if not config.is_file():
        return [f"study config {prereg.study.config} not found under {root}"]
    now = sha256_of(config)
    if now != prereg.study.sha256:
        return [f"study config {prereg.study.config} was edited after the freeze (sha256 now {now}, registered "
                f"{prereg.study.sha256[:12]}...); run the registered config or register anew"]
    problems = [f"{rel} was edited after the freeze (sha256 now {sha256_of(root / rel) if (root / rel).is_file() else 'missing'}, "
                f"registered {sha[:12]}...)" for rel, sha in prereg.study.inputs.items()
                if not (root / rel).is_file() or sha256_of(root / rel) != sha]
    if freeze is not None and freeze.commit:
        shown = subprocess.run(["git", "-C", str(root), "show", f"{freeze.commit}:{prereg.study.config}"], capture_output=True,
                               timeout=30)  # bytes: the hash of exactly what was committed
        if shown.returncode != 0 or hashlib.sha256(shown.stdout).hexdigest() != now:
            problems.append(f"study config {prereg.study.config} was not committed with this content by the freeze commit "
                            f"{freeze.commit[:10]}")
    cfg = load_study_config(config)
    for what, registered, runs in (("students", prereg.students, cfg.students), ("arms", prereg.arms, list(cfg.arms)),
                                   ("seeds", prereg.seeds, cfg.seeds), ("budgets", prereg.budgets, cfg.budgets)):
        missing = sorted(set(registered) - set(runs), key=str)
        if missing:
            problems.append(f"registered {what} {missing} are not in the study config's {runs}")
    for h in prereg.hypotheses:
        if cfg.groups.get(h.group) != list(h.sizes):
            problems.append(f"hypothesis {h.id}: group {h.group!r} is {cfg.groups.get(h.group)} in the study config, "
                            f"registered {h.sizes}")
    return problems


def study_name(prereg: Preregistration, prereg_path: str | Path) -> str | None:
    """The `name` of the study config a preregistration reads (its result is study/<name>.nc)."""
    from laid_workflows.study import load_study_config

    config = (_repo_root(Path(prereg_path).resolve()) or REPO) / prereg.study.config
    return load_study_config(config).name if config.is_file() else None


def registered_in(folder: Path) -> list[tuple[Path, Preregistration | str]]:
    """Every preregistration in `folder` by file name, or the one-line error that loading it gave (a
    page that reports them must not fail on one bad file)."""
    out: list[tuple[Path, Preregistration | str]] = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            out.append((path, load_prereg(path)))
        except (ValueError, FileNotFoundError) as e:
            out.append((path, str(e)))
    return out


@dataclass(frozen=True)
class Claim:
    """What a study may report of the test split: confirmatory under `prereg` (frozen at `commit`), or not."""

    prereg: Path | None = None
    commit: str | None = None

    @property
    def confirmatory(self) -> bool:
        return self.prereg is not None

    def attrs(self) -> dict:
        """The study result's attrs that say so (laid_workflows/study.py)."""
        if not self.confirmatory:
            return {"confirmatory": 0, "preregistration": "", "prereg_commit": ""}
        return {"confirmatory": 1, "preregistration": self.prereg.name, "prereg_commit": self.commit}


def claim_for(config: str | Path | None, modified: bool = False) -> Claim:
    """The frozen preregistration that registers the study config file `config` as it is, if any.

    `modified`: the config in memory is not the file (--override, --quick): no preregistration covers
    it. Preregistrations are looked up in the config's own repository (configs/preregistration/)."""
    if config is None or modified or not Path(config).is_file():
        return Claim()
    config = Path(config).resolve()
    root = _repo_root(config)
    if root is None:
        return Claim()
    for path, p in registered_in(root / "configs" / "preregistration"):
        if isinstance(p, str) or (root / p.study.config).resolve() != config:
            continue
        freeze = freeze_status(path)
        if freeze.frozen and not config_problems(p, path, freeze):
            return Claim(path, freeze.commit)
    return Claim()


# --- verdicts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    hypothesis: Hypothesis
    outcome: str  # OUTCOMES
    interval: Interval | None
    reason: str = ""  # why inconclusive (or empty)


def _judge(h: Hypothesis, iv: Interval, margin: float) -> tuple[str, str]:
    if not iv.seed_variance_estimable:
        return "inconclusive", "a trained side had one seed: seed variance not estimable"
    if h.kind == "superiority":
        smallest = h.smallest_effect if h.smallest_effect is not None else margin
        if iv.ci_low > 0:
            return "held", ""
        return ("not held", "") if iv.ci_high < smallest else ("inconclusive", "the interval holds 0 and effects worth claiming")
    m = h.margin_or(margin)
    if iv.ci_low > -m:
        return "held", ""
    return ("not held", "") if iv.ci_high < -m else ("inconclusive", f"the interval reaches below -{100 * m:g} points and above it")


def evaluate(prereg: Preregistration, ds: xr.Dataset) -> list[Verdict]:
    """Each hypothesis on a study Dataset (laid_workflows.study_stats.build_study). A study whose groups
    or interval differ from the registered ones is refused (one line): that is another analysis."""
    groups = json.loads(ds.attrs.get("groups", "{}"))
    want = interval_description(prereg.analysis.interval, prereg.analysis.confidence)
    if "diff" in ds and ds["diff"].attrs.get("interval") != want:
        raise ValueError(f"preregistration {prereg.name}: the study's intervals are {ds['diff'].attrs.get('interval')!r}, "
                         f"registered {prereg.analysis.interval} at {prereg.analysis.confidence}")
    out = []
    for h in prereg.hypotheses:
        if groups.get(h.group) != list(h.sizes):
            raise ValueError(f"preregistration {prereg.name}, hypothesis {h.id}: the study's group {h.group!r} is "
                             f"{groups.get(h.group)}, registered {h.sizes}")
        sel = {"student": h.student, "arm": h.arm, "budget": h.budget, "group": h.group, "ref": h.ref}
        if "diff" not in ds or any(v not in ds[k].values for k, v in sel.items()):
            out.append(Verdict(h, "inconclusive", None, "not in the study"))
            continue
        values = [float(ds["diff" + s].sel(sel)) for s in ("", "_ci_low", "_ci_high")]
        if math.isnan(values[0]):
            out.append(Verdict(h, "inconclusive", None, "no result in the study"))
            continue
        n = int(ds["n_seeds"].sel({k: sel[k] for k in ("student", "arm", "budget")}))
        counted = bool(int(ds["diff_seeds_counted"].sel(sel))) if "diff_seeds_counted" in ds else False
        iv = Interval(*values, n_seeds=(n,), method=prereg.analysis.interval, confidence=prereg.analysis.confidence,
                      seed_variance_estimable=counted)
        if n != len(prereg.seeds):
            out.append(Verdict(h, "inconclusive", iv, f"{n} seeds ran, {len(prereg.seeds)} registered"))
            continue
        outcome, reason = _judge(h, iv, prereg.margin)
        out.append(Verdict(h, outcome, iv, reason))
    return out


def verdict_line(v: Verdict, margin: float) -> str:
    """'- H1: laid - kd over sizes [...] > 0: **held**, +5.1 [+1.2, +9.0] points (5 seeds)'."""
    iv = v.interval
    numbers = "" if iv is None else f", {100 * iv.value:+.1f} [{100 * iv.ci_low:+.1f}, {100 * iv.ci_high:+.1f}] points ({iv.n_seeds[0]} seeds)"
    why = f" ({v.reason})" if v.reason else ""
    return f"- {v.hypothesis.id}: {v.hypothesis.statement(margin)}: **{v.outcome}**{numbers}{why}"


def registered() -> list[tuple[Path, Preregistration | str]]:
    """Every preregistration of this repository (PREREG_DIR, configs/preregistration/)."""
    return registered_in(PREREG_DIR)


def study_status(study: str | None) -> str:
    """'Confirmatory: ...' when a frozen preregistration with an unchanged config reads study/<study>.nc,
    else 'Exploratory: ...' (every comparison, every study without one)."""
    for path, p in registered() if study is not None else []:
        if not isinstance(p, str) and study_name(p, path) == study:
            freeze = freeze_status(path)
            if freeze.frozen and not config_problems(p, path, freeze):
                return f"Confirmatory: preregistered in `{path.name}`, frozen at commit `{freeze.commit[:10]}`."
    return "Exploratory: no frozen preregistration reads it."


def page_section(run) -> str | None:
    """The results page's section (a RunLayout): every preregistration whose study is in the run folder."""
    from laid.io import read_netcdf

    parts = []
    for path, p in registered():
        if isinstance(p, str):
            parts.append(f"- `{path.name}`: cannot be read: {p}")
            continue
        name = study_name(p, path)
        result = run.study_result(name) if name else None
        if result is not None and result.is_file():
            parts += report(path, p, read_netcdf(result, "study"))
    if not parts:
        return None
    return "\n".join(["## Preregistered hypotheses", "",
                      "Hypotheses fixed in a committed file before the confirmatory runs (laid_workflows/prereg.py): held "
                      "(the interval supports it), not held (the interval excludes it) or inconclusive. Everything else on "
                      "this page is exploratory.", "", *parts])


def report(path: str | Path, prereg: Preregistration, ds: xr.Dataset | None,
           absent: str = "its study is not in this run folder") -> list[str]:
    """Markdown lines: the file, its freeze, its config check and (with the study) one line per hypothesis."""
    freeze = freeze_status(path)
    problems = config_problems(prereg, path, freeze)
    lines = [f"- `{Path(path).name}` ({prereg.name}): {freeze.describe()}; study config `{prereg.study.config}` "
             + ("as registered" if not problems else "DIFFERS: " + "; ".join(problems))]
    if ds is None:
        return lines + [f"  ({absent})"]
    confirmatory = freeze.frozen and not problems
    lines.append(f"  {'Confirmatory' if confirmatory else 'Not confirmatory (see above), shown for the record'}: split "
                 f"{prereg.split}, {len(prereg.seeds)} seeds, interval {prereg.analysis.interval} at {prereg.analysis.confidence:g}, "
                 f"margin {100 * prereg.margin:g} points")
    try:
        verdicts = evaluate(prereg, ds)
    except ValueError as e:  # another analysis of the same name (a --quick run, edited groups): no verdicts
        return lines + [f"  No verdicts: {e}"]
    return lines + ["  " + verdict_line(v, prereg.margin) for v in verdicts]


def _prereg(args: argparse.Namespace) -> int:
    from laid.layout import RunLayout

    prereg = load_prereg(args.file)
    ds = None
    if args.run_dir is not None:
        name = study_name(prereg, args.file)
        path = RunLayout(args.run_dir).study_result(name) if name else None
        ds = xr.load_dataset(path) if path is not None and path.is_file() else None
    absent = "pass --run-dir to judge its hypotheses" if args.run_dir is None else f"its study is not in {args.run_dir}"
    print("\n".join(report(args.file, prereg, ds, absent)))
    freeze = freeze_status(args.file)
    return 0 if freeze.frozen and not config_problems(prereg, args.file, freeze) else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prereg", help="check a preregistration: frozen in git, its study config unchanged; with --run-dir, its verdicts",
        description="Load a preregistration (configs/preregistration/*.yaml), say whether it is frozen (committed, clean, "
        "an ancestor of HEAD: its commit) and whether the study config it names still has the registered sha256 (the "
        "config's current sha256 is printed when it differs); with --run-dir, judge each hypothesis on the run's study. "
        "Exit status 1 when not frozen or the config differs.")
    p.add_argument("file", help="the preregistration YAML")
    p.add_argument("--run-dir", default=None, help="a run folder holding the study (study/<name>.nc) to judge")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.set_defaults(func=_prereg)
