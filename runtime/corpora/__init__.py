"""Corpora: content-hashed JSONL text sets and their coverage profiles."""
from runtime.corpora.corpus import DEFAULT_SLICE, Corpus, Sample
from runtime.corpora.coverage import (
    BUCKET_LABELS,
    LENGTH_BUCKETS,
    SCRIPTS,
    CoverageGap,
    CoverageProfile,
    check_coverage,
    coverage_profile,
    is_code,
    length_bucket,
    text_script,
)

__all__ = [
    "BUCKET_LABELS", "DEFAULT_SLICE", "LENGTH_BUCKETS", "SCRIPTS", "Corpus", "CoverageGap", "CoverageProfile",
    "Sample", "check_coverage", "coverage_profile", "is_code", "length_bucket", "text_script",
]
