"""Coverage profiles (length buckets, script mix, tags) and the gaps between calibration and traffic."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.corpora.corpus import Corpus, Sample
from runtime.errors import InputError

# Token-length buckets as (label, low inclusive, high exclusive); shared with evaluation.
LENGTH_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0-128", 0, 128),
    ("128-512", 128, 512),
    ("512-2048", 512, 2048),
    ("2048+", 2048, None),
)
BUCKET_LABELS = tuple(label for label, _, _ in LENGTH_BUCKETS)

SCRIPTS = ("Latin", "CJK", "Cyrillic", "Arabic", "Greek", "Devanagari", "Hangul", "code", "other")

# Unicode blocks per script, as inclusive code-point ranges.
_SCRIPT_RANGES: tuple[tuple[str, int, int], ...] = (
    ("Latin", 0x0041, 0x024F), ("Latin", 0x1E00, 0x1EFF),
    ("Greek", 0x0370, 0x03FF), ("Greek", 0x1F00, 0x1FFF),
    ("Cyrillic", 0x0400, 0x052F), ("Cyrillic", 0x2DE0, 0x2DFF), ("Cyrillic", 0xA640, 0xA69F),
    ("Arabic", 0x0600, 0x06FF), ("Arabic", 0x0750, 0x077F), ("Arabic", 0x08A0, 0x08FF),
    ("Arabic", 0xFB50, 0xFDFF), ("Arabic", 0xFE70, 0xFEFF),
    ("Devanagari", 0x0900, 0x097F), ("Devanagari", 0xA8E0, 0xA8FF),
    ("Hangul", 0x1100, 0x11FF), ("Hangul", 0x3130, 0x318F), ("Hangul", 0xAC00, 0xD7AF),
    ("CJK", 0x3040, 0x30FF),  # Japanese kana count as CJK
    ("CJK", 0x3400, 0x4DBF), ("CJK", 0x4E00, 0x9FFF), ("CJK", 0xF900, 0xFAFF), ("CJK", 0x20000, 0x2FA1F),
)

# The code heuristic: a sample is code when at least 30% of its non-blank lines look like code
# and at least 3% of its non-space characters are code punctuation ({}[]();=<>_). A line looks
# like code when it starts with a keyword (`def`, `import`, `return`, `#include`, `const`, ...)
# or a decorator, is an assignment (`x = ...`, `a.b += 1`) or a bare call (`f(x)`), or ends
# with `;`, `{`, `}`, `:` after a closing bracket or `else`/`try`/`finally`, or `=>`.
# Prose with a few parentheses fails the first test; one-line formulas fail the second.
_CODE_LINE = re.compile(
    r"^\s*(def \w+\(|class \w+\s*[(:]|import [\w.]+(\s+as\s+\w+)?(\s*,\s*[\w.]+)*\s*$|from [\w.]+ import |#include|#define|return\b|raise |yield\b|assert |async |await |"
    r"elif |else:|try:|except\b|finally:|with .+:\s*$|if .+:\s*$|for .+ in .+:\s*$|while .+:\s*$|"
    r"function\b|const |let |var |public |private |fn |func |package |if \(|for \(|while \(|SELECT |@\w+)"
    r"|^\s*[A-Za-z_][\w.\[\]'\"]*\s*(=|\+=|-=|\*=|/=)\s*[^=\s]"
    r"|^\s*[A-Za-z_][\w.]*\(.*\)\s*$"
    r"|[;{}]\s*$|[)\]]:\s*$|=>\s*$",
)
_CODE_PUNCT = set("{}[]();=<>_")
CODE_LINE_SHARE = 0.30
# Profiles keep the most common tags only: per-file provenance tags would otherwise grow a
# profile with its corpus.
MAX_TAGS = 64
CODE_PUNCT_SHARE = 0.03


class CoverageProfile(BaseModel):
    """What a set of texts covers: sample count, token-length buckets and script mix as shares."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(description="Number of texts profiled.")
    max_tokens: int = Field(description="Longest text, in tokens.")
    mean_tokens: float = Field(description="Mean text length, in tokens.")
    length_buckets: dict[str, float] = Field(description="Share of texts per token-length bucket (all buckets).")
    scripts: dict[str, float] = Field(description="Share of texts per dominant script (all scripts).")
    tags: dict[str, float] = Field(
        default_factory=dict, description=f"Share of texts carrying each tag (the {MAX_TAGS} most common).")
    slices: dict[str, float] = Field(default_factory=dict, description="Share of texts per slice.")


class CoverageGap(BaseModel):
    """A part of traffic the calibration set does not cover, with a human-readable message."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["length", "script", "tag"]
    key: str = Field(description="The uncovered bucket label, script name or tag.")
    traffic_share: float
    calibration_share: float
    message: str

    def __str__(self) -> str:
        return self.message


def length_bucket(n_tokens: int) -> str:
    """The label of the token-length bucket `n_tokens` falls in."""
    for label, low, high in LENGTH_BUCKETS:
        if n_tokens >= low and (high is None or n_tokens < high):
            return label
    raise InputError(f"token count must be >= 0, got {n_tokens}", loc=("n_tokens",))


def is_code(text: str) -> bool:
    """The documented heuristic above: code-looking lines and code punctuation density."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return False
    code_lines = sum(1 for line in lines if _CODE_LINE.search(line))
    chars = [c for c in text if not c.isspace()]
    punct = sum(1 for c in chars if c in _CODE_PUNCT)
    return code_lines / len(lines) >= CODE_LINE_SHARE and punct / max(len(chars), 1) >= CODE_PUNCT_SHARE


def char_script(ch: str) -> str | None:
    """The script of one letter by Unicode range; None for non-letters (digits, punctuation, space)."""
    if not ch.isalpha():
        return None
    cp = ord(ch)
    for script, low, high in _SCRIPT_RANGES:
        if low <= cp <= high:
            return script
    # Fullwidth Latin letters and other compatibility forms fold to their base letter.
    folded = unicodedata.normalize("NFKC", ch)
    if folded != ch and len(folded) == 1 and folded.isalpha() and ord(folded) < 0x250:
        return "Latin"
    return "other"


def text_script(text: str) -> str:
    """The dominant script of a text: "code" by the heuristic, else the script of most letters."""
    if is_code(text):
        return "code"
    counts = Counter(s for s in map(char_script, text) if s is not None)
    if not counts:
        return "other"
    return counts.most_common(1)[0][0]


def coverage_profile(
    source: Corpus | Iterable[str] | Iterable[Sample],
    tokenizer=None,
    *,
    token_counts: Sequence[int] | None = None,
) -> CoverageProfile:
    """Profiles a corpus or a list of texts (e.g. served requests).

    Args:
        source: a Corpus, Samples, or bare strings (bare strings have no slice or tags).
        tokenizer: a transformers tokenizer used to count tokens (no special tokens).
        token_counts: precomputed token counts, one per text, instead of a tokenizer
            (serving already knows each request's length).
    """
    samples = list(source.samples if isinstance(source, Corpus) else source)
    if not samples:
        raise InputError("cannot profile an empty set of texts", loc=("source",))
    texts = [s.text if isinstance(s, Sample) else s for s in samples]
    if not all(isinstance(t, str) for t in texts):
        raise InputError("every item must be a str or a Sample", loc=("source",))
    if token_counts is None:
        if tokenizer is None:
            raise InputError("give a tokenizer or token_counts to measure lengths", loc=("tokenizer",))
        token_counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    elif len(token_counts) != len(texts):
        raise InputError(
            f"token_counts has {len(token_counts)} entries for {len(texts)} texts", loc=("token_counts",))
    n = len(texts)
    buckets = Counter(length_bucket(int(c)) for c in token_counts)
    scripts = Counter(text_script(t) for t in texts)
    tags = Counter(tag for s in samples if isinstance(s, Sample) for tag in set(s.tags))
    slices = Counter(s.slice for s in samples if isinstance(s, Sample))
    return CoverageProfile(
        samples=n,
        max_tokens=int(max(token_counts)),
        mean_tokens=float(sum(token_counts)) / n,
        length_buckets={label: buckets[label] / n for label in BUCKET_LABELS},
        scripts={script: scripts[script] / n for script in SCRIPTS},
        tags={tag: count / n for tag, count in sorted(tags.most_common(MAX_TAGS))},
        slices={name: count / n for name, count in slices.items()},
    )


def check_coverage(
    calibration: CoverageProfile,
    traffic: CoverageProfile,
    *,
    min_share: float = 0.01,
    tag_prefixes: Sequence[str] = ("domain:",),
) -> list[CoverageGap]:
    """Lists every length bucket, script and tag that is at least `min_share` of traffic
    but has no calibration sample at all.

    Only tags starting with one of `tag_prefixes` are compared (default: `domain:` tags;
    provenance tags such as `source:...` name single files and would all be gaps); pass
    `("",)` to compare every tag.
    """
    if not 0.0 <= min_share <= 1.0:
        raise InputError(f"min_share must be in [0, 1], got {min_share}", loc=("min_share",))
    gaps: list[CoverageGap] = []
    for label, low, high in LENGTH_BUCKETS:
        share = traffic.length_buckets.get(label, 0.0)
        if share < min_share or calibration.length_buckets.get(label, 0.0) > 0.0:
            continue
        if low >= calibration.max_tokens:
            # Traffic is longer than anything calibrated: say how long calibration goes.
            span = f"longer than {low} tokens" if high is None else f"{low}-{high} tokens long"
            message = (f"no calibration sample longer than {calibration.max_tokens} tokens; "
                       f"{_pct(share)} of traffic is {span}")
        else:
            message = (f"no calibration sample of {label} tokens; "
                       f"{_pct(share)} of traffic is {label} tokens long")
        gaps.append(CoverageGap(kind="length", key=label, traffic_share=share, calibration_share=0.0,
                                message=message))
    for script in SCRIPTS:
        share = traffic.scripts.get(script, 0.0)
        if share >= min_share and calibration.scripts.get(script, 0.0) == 0.0:
            what = "code" if script == "code" else f"script {script}"
            gaps.append(CoverageGap(
                kind="script", key=script, traffic_share=share, calibration_share=0.0,
                message=f"no calibration sample in {what}; {_pct(share)} of traffic is {script}"))
    for tag, share in traffic.tags.items():
        if not tag.startswith(tuple(tag_prefixes)):
            continue
        if share >= min_share and calibration.tags.get(tag, 0.0) == 0.0:
            gaps.append(CoverageGap(
                kind="tag", key=tag, traffic_share=share, calibration_share=0.0,
                message=f"no calibration sample tagged {tag!r}; {_pct(share)} of traffic is tagged {tag!r}"))
    return gaps


def _pct(share: float) -> str:
    value = share * 100
    return f"{value:.0f}%" if value >= 1 or value == 0 else f"{value:.1f}%"
