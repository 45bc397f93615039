"""A corpus: a content-hashed set of text samples, each with a slice and tags, read from JSONL."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.errors import InputError

DEFAULT_SLICE = "default"


class Sample(BaseModel):
    """One corpus line. `slice` groups samples for per-slice evaluation; `tags` mark domains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(description="The sample text; must not be empty or whitespace only.")
    slice: str = Field(DEFAULT_SLICE, description="Named subset used to break metrics down.")
    tags: tuple[str, ...] = Field((), description="Domain tags, e.g. 'code', 'legal'.")

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty")
        return text

    @field_validator("slice")
    @classmethod
    def _slice_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("slice is empty; leave it out to use the default slice")
        return value


class Corpus:
    """An immutable, ordered set of samples, identified by the hash of its content."""

    def __init__(self, samples: Iterable[Sample], *, name: str = "corpus"):
        self.samples: tuple[Sample, ...] = tuple(samples)
        self.name = name
        if not self.samples:
            raise InputError(f"corpus {name!r} has no samples", loc=("samples",))
        self._hash: str | None = None

    @classmethod
    def load(cls, path: str | Path, *, name: str | None = None) -> "Corpus":
        """Reads a JSONL corpus; a bad line raises InputError with loc ("line", n) saying what is wrong.

        Blank lines are skipped but still counted, so line numbers match an editor's.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"corpus file {str(path)!r} does not exist", loc=("path",)) from None
        except UnicodeDecodeError as exc:
            raise InputError(f"corpus file {str(path)!r} is not UTF-8: {exc.reason}", loc=("path",)) from None
        samples = [
            _parse_line(line, lineno)
            for lineno, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        ]
        name = name or path.stem
        if not samples:
            raise InputError(f"corpus file {str(path)!r} has no samples", loc=("path",))
        return cls(samples, name=name)

    @classmethod
    def from_texts(cls, texts: Iterable[str], *, name: str = "corpus", slice: str = DEFAULT_SLICE) -> "Corpus":
        """Builds a corpus from bare strings, all in one slice."""
        try:
            return cls([Sample(text=t, slice=slice) for t in texts], name=name)
        except ValidationError as exc:
            raise InputError.from_pydantic(exc, prefix=("texts",)) from None

    @property
    def content_hash(self) -> str:
        """"sha256:<hex>" over the canonical JSON of the samples (the name is not content)."""
        if self._hash is None:
            canonical = json.dumps(
                [s.model_dump(mode="json") for s in self.samples],
                sort_keys=True, separators=(",", ":"), ensure_ascii=False,
            )
            self._hash = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return self._hash

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]

    def slices(self) -> list[str]:
        """Slice names in first-seen order."""
        return list(dict.fromkeys(s.slice for s in self.samples))

    def balanced(self, n: int) -> list[Sample]:
        """Up to `n` samples taken round-robin across slices (first-seen slice order, file order
        within a slice), so a cap on samples never drops a slice that sits late in the file."""
        if n >= len(self.samples):
            return list(self.samples)
        queues = {name: [s for s in self.samples if s.slice == name] for name in self.slices()}
        picked: list[Sample] = []
        depth = 0
        while len(picked) < n:
            for queue in queues.values():
                if depth < len(queue) and len(picked) < n:
                    picked.append(queue[depth])
            depth += 1
        return picked

    def head(self, n: int) -> "Corpus":
        """The first `n` samples as a corpus of the same name."""
        return Corpus(self.samples[:n], name=self.name)

    def save(self, path: str | Path) -> Path:
        """Writes the corpus as JSONL (temporary name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for s in self.samples:
                fh.write(json.dumps(s.model_dump(mode="json"), ensure_ascii=False) + "\n")
        tmp.replace(path)
        return path

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return f"Corpus(name={self.name!r}, samples={len(self.samples)}, hash={self.content_hash[:19]}...)"


def _parse_line(line: str, lineno: int) -> Sample:
    loc = ("line", lineno)
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg} at column {exc.colno}", loc=loc, type="json_invalid") from None
    if not isinstance(record, dict):
        raise InputError(
            f"expected a JSON object with a 'text' field, got {type(record).__name__}", loc=loc, type="dict_type")
    try:
        return Sample.model_validate(record)
    except ValidationError as exc:
        # Keep loc ("line", n) and name the field in the message, so one line reads as one problem.
        raise InputError([
            {"loc": loc, "msg": f"field {'.'.join(map(str, e['loc'])) or 'record'!r}: {e['msg']}", "type": e["type"]}
            for e in exc.errors(include_url=False)
        ]) from None
