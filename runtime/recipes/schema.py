"""The recipe: a model's precision contract, modelled on compressed-tensors' scheme and extended.

Beyond compressed-tensors: fp8 E5M2, an accumulator format, a fallback format for ops the
accelerator cannot run, and a required `reason` on every exception (rule or ignore entry).
"""
from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from runtime.errors import InputError
from runtime.formats import FORMAT_NAMES, WIDE_FORMATS, PerChannel, PerGroup, PerTensor, PerToken

FormatName = Literal["fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "int8", "int4"]
WideFormat = Literal["fp32", "bf16", "fp16"]
assert set(FormatName.__args__) == set(FORMAT_NAMES)


class Strategy(str, Enum):
    tensor = "tensor"
    channel = "channel"
    token = "token"
    group = "group"


class ObserverName(str, Enum):
    minmax = "minmax"
    percentile = "percentile"
    mse = "mse"
    amax_history = "amax_history"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class QuantArgs(_Strict):
    """How one tensor (weights or input activations) is represented."""

    format: FormatName = Field(description="numeric format of the tensor")
    strategy: Strategy = Field(Strategy.tensor, description="scale granularity")
    group_size: int | None = Field(None, description="elements per scale for strategy=group (32, 64 or 128)")
    symmetric: bool = Field(True, description="symmetric (no zero point) or asymmetric (int4 only)")
    dynamic: bool = Field(False, description="scales computed at run time rather than calibrated")
    observer: ObserverName = Field(ObserverName.minmax, description="how calibration turns statistics into scales")
    observer_kwargs: dict[str, float] = Field(default_factory=dict, description="e.g. {q: 99.99} or {history: 16}")

    @model_validator(mode="after")
    def _consistent(self) -> "QuantArgs":
        if self.strategy == Strategy.group:
            if self.group_size is None:
                raise ValueError("strategy 'group' needs `group_size` (32, 64 or 128)")
            if self.group_size not in (32, 64, 128):
                raise ValueError(f"group_size must be 32, 64 or 128, got {self.group_size}")
        elif self.group_size is not None:
            raise ValueError(f"`group_size` is only valid with strategy 'group', not {self.strategy.value!r}")
        if self.format == "int4" and self.strategy != Strategy.group:
            raise ValueError("int4 needs strategy 'group' with a group_size")
        if self.strategy == Strategy.token and not self.dynamic:
            raise ValueError("static per-token quantization is impossible; use `dynamic: true`")
        if not self.symmetric and self.format != "int4":
            raise ValueError(f"asymmetric quantization is supported for int4 only, not {self.format}")
        return self

    @property
    def is_wide(self) -> bool:
        return self.format in WIDE_FORMATS

    def granularity(self):
        """The frozen granularity type this strategy stands for."""
        return {
            Strategy.tensor: PerTensor(),
            Strategy.channel: PerChannel(0),
            Strategy.token: PerToken(),
        }.get(self.strategy) or PerGroup(self.group_size)


class Scheme(_Strict):
    """Formats for one linear op; `None` keeps that tensor in the model's wide dtype."""

    weights: QuantArgs | None = None
    input_activations: QuantArgs | None = None
    accumulator: WideFormat = Field("fp32", description="matmul accumulation format")
    fallback: WideFormat = Field("bf16", description="format used where the accelerator cannot run the requested one")

    @field_validator("input_activations")
    @classmethod
    def _activations(cls, v: QuantArgs | None) -> QuantArgs | None:
        if v is not None and v.format == "int4":
            raise ValueError("int4 activations are not supported; use fp8_e4m3 or int8")
        if v is not None and v.strategy in (Strategy.channel, Strategy.group):
            raise ValueError(f"activations are quantized per tensor or per token, not per {v.strategy.value}")
        return v

    def signature(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include={"weights", "input_activations", "accumulator", "fallback"})


class ChannelRule(Scheme):
    """Formats for some output features (rows of the [out, in] weight) of the ops a rule matches."""

    channels: list[int] = Field(min_length=1, description="output feature indices; stored sorted")
    reason: str = Field(min_length=1, description="why these output features depart from the rule")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[int]) -> list[int]:
        if any(c < 0 for c in v):
            raise ValueError("channels are output feature indices and must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("channels must not repeat")
        return sorted(v)  # order carries no meaning; sorting keeps the content hash canonical


class Rule(Scheme):
    """An exception to the default: the first rule whose target matches an op wins."""

    targets: list[str] = Field(min_length=1, description="module names, `re:` regexes, or the class name `Linear`")
    reason: str = Field(min_length=1, description="why this op departs from the default")
    output_channels: list[ChannelRule] = Field(
        default_factory=list,
        description="per-output-feature exceptions: these rows take other formats; the rest take the rule's")

    @field_validator("output_channels")
    @classmethod
    def _disjoint(cls, v: list[ChannelRule]) -> list[ChannelRule]:
        owner: dict[int, int] = {}
        for j, part in enumerate(v):
            for c in part.channels:
                if c in owner:
                    raise ValueError(f"output_channels[{j}] repeats channel {c} of output_channels[{owner[c]}]; "
                                     "each output feature takes one format")
                owner[c] = j
        return v

    @model_serializer(mode="wrap")
    def _omit_empty_channels(self, handler):
        # Rules without per-feature exceptions serialize (and hash) exactly as before the field existed.
        data = handler(self)
        if isinstance(data, dict) and not self.output_channels:
            data.pop("output_channels", None)
        return data

    def signature(self) -> dict[str, Any]:
        sig = super().signature()
        if self.output_channels:
            sig["output_channels"] = [c.model_dump(mode="json") for c in self.output_channels]
        return sig


class Ignore(_Strict):
    """An op kept in the model's wide dtype."""

    target: str = Field(min_length=1)
    reason: str = Field(min_length=1, description="why this op stays wide")


class KVCacheScheme(_Strict):
    """How the attention key/value cache is stored."""

    format: Literal["fp8_e4m3", "fp8_e5m2", "int8"]
    strategy: Literal["tensor", "head"] = "head"
    dynamic: bool = Field(False, description="scales from each step's amax instead of calibration")
    observer: ObserverName = ObserverName.minmax


class CalibrationSource(_Strict):
    """Where static scales come from."""

    corpus: str = Field(min_length=1, description="corpus name, path or content hash")
    samples: int = Field(64, gt=0)
    seq_len: int = Field(256, gt=0)


class Recipe(_Strict):
    """The precision contract of one model."""

    name: str = Field(min_length=1)
    description: str = ""
    model: str | None = Field(None, description="model name or path this recipe was written for")
    default: Scheme = Field(default_factory=Scheme, description="applies to every linear no rule or ignore matches")
    rules: list[Rule] = Field(default_factory=list)
    ignore: list[Ignore] = Field(default_factory=list)
    kv_cache_scheme: KVCacheScheme | None = None
    calibration: CalibrationSource | None = None

    @model_validator(mode="after")
    def _sources_and_contradictions(self) -> "Recipe":
        errors: list[dict] = []
        schemes = [(("default",), self.default)] + [(("rules", i), r) for i, r in enumerate(self.rules)]
        schemes += [(("rules", i, "output_channels", j), c) for i, r in enumerate(self.rules)
                    for j, c in enumerate(r.output_channels)]
        for loc, scheme in schemes:
            act = scheme.input_activations
            if act is not None and not act.is_wide and not act.dynamic and self.calibration is None:
                errors.append({"loc": loc + ("input_activations", "dynamic"),
                               "msg": f"static {act.format} activations need a calibration source: "
                                      "add `calibration: {corpus: ...}` or set `dynamic: true`"})
        kv = self.kv_cache_scheme
        if kv is not None and not kv.dynamic and self.calibration is None:
            errors.append({"loc": ("kv_cache_scheme", "dynamic"),
                           "msg": f"a {kv.format} KV cache needs a scale source: add `calibration: {{corpus: ...}}` "
                                  "or set `dynamic: true`"})
        literal_owner: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            for j, t in enumerate(rule.targets):
                if t in literal_owner and self.rules[literal_owner[t]].signature() != rule.signature():
                    errors.append({"loc": ("rules", i, "targets", j),
                                   "msg": f"target {t!r} contradicts rules[{literal_owner[t]}], which gives it other formats"})
                literal_owner.setdefault(t, i)
        for k, ig in enumerate(self.ignore):
            if ig.target in literal_owner:
                errors.append({"loc": ("ignore", k, "target"),
                               "msg": f"{ig.target!r} is ignored but rules[{literal_owner[ig.target]}] quantizes it"})
        if errors:
            raise RecipeError(errors)
        return self

    # --- reading and writing -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> "Recipe":
        """Validates a parsed recipe document."""
        if not isinstance(data, dict):
            raise RecipeError("a recipe must be a mapping", loc=("body",))
        try:
            return cls.model_validate(data)
        except RecipeError:
            raise
        except ValidationError as exc:
            raise RecipeError.from_pydantic(exc) from None

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        """Parses and validates a YAML recipe."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"malformed YAML: {exc}", loc=("body",), type="yaml_error") from None
        return cls.from_dict(data)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        """Parses and validates a JSON recipe."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"malformed JSON: {exc}", loc=("body",), type="json_error") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def canonical_json(self) -> str:
        """Every default spelled out, keys sorted, no whitespace: the form the hash is taken over."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def content_hash(self) -> str:
        """sha256 over the canonical form; key order, whitespace and spelled-out defaults don't change it."""
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()


class RecipeError(InputError):
    """A recipe that cannot be used; each error names the offending field."""


def load_recipe(path: str) -> Recipe:
    """Reads a recipe file (.yaml, .yml or .json)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return Recipe.from_json(text) if path.endswith(".json") else Recipe.from_yaml(text)
