"""factory_boy factories for control-plane rows (Dispatch's tests/factories.py pattern).

Tests bind the session the factories write through with `bind(session)`; rows are flushed, not
committed, so they vanish with the test's transaction. Foreign keys are filled by parameters:
`EngineFactory(model=some_model)` or left to sub-factories.
"""
from __future__ import annotations

import hashlib
import json

import factory
from factory.alchemy import SQLAlchemyModelFactory
from sqlalchemy.orm import Session

from controlplane.accelerators.models import Accelerator
from controlplane.alerts.models import Alert, AlertStatus
from controlplane.calibrations.models import Calibration
from controlplane.corpora.models import Corpus
from controlplane.deployments.models import Deployment, DriftPolicy, Stage
from controlplane.engines.models import Engine
from controlplane.evaluations.models import Evaluation, Verdict
from controlplane.model_registry.models import RegisteredModel
from controlplane.recipes.models import Recipe
from runtime.recipes import PRESETS
from runtime.recipes import Recipe as RecipeSpec


class _Bound:
    session: Session | None = None


def bind(session: Session | None) -> None:
    """Points every factory at `session` (None unbinds)."""
    _Bound.session = session


def _digest(*parts: object) -> str:
    return "sha256:" + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


class BaseFactory(SQLAlchemyModelFactory):
    class Meta:
        abstract = True
        sqlalchemy_session_factory = lambda: _Bound.session  # noqa: E731
        sqlalchemy_session_persistence = "flush"


class RegisteredModelFactory(BaseFactory):
    class Meta:
        model = RegisteredModel

    name = factory.Sequence(lambda n: f"model-{n}")
    path = factory.LazyAttribute(lambda o: f"/srv/models/{o.name}")
    content_hash = factory.LazyAttribute(lambda o: _digest("model", o.name))
    architecture = "LlamaForCausalLM"
    model_type = "llama"
    size_bytes = 9_445_976
    created_by = "factory"


def _spec(name: str, preset: str) -> RecipeSpec:
    return RecipeSpec.from_dict({**PRESETS[preset], "name": name})


class RecipeFactory(BaseFactory):
    class Meta:
        model = Recipe

    class Params:
        preset = "fp8_w8a8"
        recipe_spec = factory.LazyAttribute(lambda o: _spec(o.name, o.preset))

    name = factory.Sequence(lambda n: f"recipe-{n}")
    version = 1
    content_hash = factory.LazyAttribute(lambda o: o.recipe_spec.content_hash())
    yaml_text = factory.LazyAttribute(lambda o: o.recipe_spec.to_yaml())
    spec = factory.LazyAttribute(lambda o: json.loads(o.recipe_spec.canonical_json()))
    description = factory.LazyAttribute(lambda o: o.recipe_spec.description or None)
    created_by = "factory"


class CorpusFactory(BaseFactory):
    class Meta:
        model = Corpus

    class Params:
        tokenizer_model = factory.SubFactory(RegisteredModelFactory)

    name = factory.Sequence(lambda n: f"corpus-{n}")
    content_hash = factory.LazyAttribute(lambda o: _digest("corpus", o.name))
    uri = factory.LazyAttribute(lambda o: f"/srv/artifacts/corpora/{o.content_hash[7:]}.jsonl")
    size_bytes = 4096
    sample_count = 32
    coverage = factory.LazyFunction(lambda: {"samples": 32, "max_tokens": 120, "mean_tokens": 40.0,
                                             "length_buckets": {"0-128": 1.0}, "scripts": {"Latin": 1.0}})
    tokenizer_model_id = factory.SelfAttribute("tokenizer_model.id")
    created_by = "factory"


class AcceleratorFactory(BaseFactory):
    class Meta:
        model = Accelerator

    name = factory.Sequence(lambda n: f"test-accel-{n}")
    description = "an accelerator made by a test"
    min_capability = 89
    reference_only = False


class CalibrationFactory(BaseFactory):
    class Meta:
        model = Calibration

    class Params:
        model = factory.SubFactory(RegisteredModelFactory)
        recipe = factory.SubFactory(RecipeFactory)
        corpus = factory.SubFactory(CorpusFactory)

    content_hash = factory.Sequence(lambda n: _digest("calibration", n))
    model_id = factory.SelfAttribute("model.id")
    recipe_id = factory.SelfAttribute("recipe.id")
    corpus_id = factory.SelfAttribute("corpus.id")
    stats_uri = factory.LazyAttribute(lambda o: f"/srv/artifacts/calibrations/{o.content_hash[7:]}")
    samples = 16
    seq_len = 128
    summary = factory.LazyFunction(lambda: {"tensors": 14, "max_amax": 12.5})


class EngineFactory(BaseFactory):
    class Meta:
        model = Engine

    class Params:
        model = factory.SubFactory(RegisteredModelFactory)
        recipe = factory.SubFactory(RecipeFactory)
        accelerator = factory.SubFactory(AcceleratorFactory)

    content_hash = factory.Sequence(lambda n: _digest("engine", n))
    uri = factory.LazyAttribute(lambda o: f"/srv/artifacts/engines/{o.content_hash[7:]}")
    manifest = factory.LazyFunction(lambda: {"ops": [{"name": "model.layers.0.mlp.down_proj", "weight": "fp8_e4m3"}],
                                             "fallbacks": []})
    model_id = factory.SelfAttribute("model.id")
    recipe_id = factory.SelfAttribute("recipe.id")
    accelerator_id = factory.SelfAttribute("accelerator.id")
    size_bytes = 5_000_000


class EvaluationFactory(BaseFactory):
    class Meta:
        model = Evaluation

    class Params:
        engine = factory.SubFactory(EngineFactory)
        corpus = factory.SubFactory(CorpusFactory)

    engine_id = factory.SelfAttribute("engine.id")
    corpus_id = factory.SelfAttribute("corpus.id")
    metrics = factory.LazyFunction(lambda: {"kl_mean": 0.004, "top1_agreement": 0.98, "ppl_delta": 0.01})
    by_slice = factory.LazyFunction(dict)
    by_bucket = factory.LazyFunction(dict)
    gates = factory.LazyFunction(lambda: [{"name": "kl_mean", "threshold": 0.05, "value": 0.004, "passed": True}])
    verdict = Verdict.passed


def passing_engine(**kwargs) -> Engine:
    """An engine with an evaluation that passed its gates (what a deployment needs)."""
    engine = EngineFactory(**kwargs)
    EvaluationFactory(engine=engine)
    return engine


class DeploymentFactory(BaseFactory):
    class Meta:
        model = Deployment

    class Params:
        engine = factory.LazyFunction(passing_engine)

    endpoint = factory.Sequence(lambda n: f"endpoint-{n}")
    engine_id = factory.SelfAttribute("engine.id")
    stage = Stage.shadow
    traffic_share = 0.0
    created_by = "factory"

    @factory.post_generation
    def drift_policy(obj, create, extracted, **kwargs):  # noqa: N805 (factory_boy hook)
        if create:
            DriftPolicyFactory(deployment_id=obj.id, **(extracted or {}))


class DriftPolicyFactory(BaseFactory):
    class Meta:
        model = DriftPolicy

    kl_mean_max = 0.05
    kl_p95_max = 0.2
    top1_agreement_min = 0.9
    saturation_max = 0.001
    amax_ratio_max = 2.0
    window_seconds = 300
    min_samples = 50
    false_alarm_rate = 0.01
    consecutive_failure_limit = 2
    consecutive_error_limit = 3
    updated_by = "factory"


class AlertFactory(BaseFactory):
    class Meta:
        model = Alert

    class Params:
        deployment = factory.SubFactory(DeploymentFactory)

    deployment_id = factory.SelfAttribute("deployment.id")
    engine_id = factory.SelfAttribute("deployment.engine_id")
    metric = "kl_mean"
    message = "window KL mean 0.12 above 0.05 over 80 samples"
    evidence = factory.LazyFunction(lambda: {"window": 300, "value": 0.12, "threshold": 0.05})
    status = AlertStatus.open
