"""Models, recipes and corpora through the API: validation names the problem, nothing is stored on refusal."""
from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import func, select, text

from controlplane.audit.models import AuditEvent
from controlplane.auth.models import Role
from controlplane.corpora.models import Corpus
from controlplane.model_registry.models import RegisteredModel
from controlplane.recipes.models import Recipe
from tests.controlplane.databases import REFERENCE_MODEL
from tests.factories import RecipeFactory

FP8_YAML = """\
# fp8 weights and activations; comments survive storage
name: chat-fp8
description: fp8 everywhere
default:
  weights: {format: fp8_e4m3, strategy: channel}
  input_activations: {format: fp8_e4m3, strategy: token, dynamic: true}
"""


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def _yaml(client, headers, text_, **params):
    return client.post("/v1/recipes", content=text_.encode(), params=params,
                       headers={**headers, "Content-Type": "application/yaml"})


@pytest.fixture
def reference_model(client, as_role):
    response = client.post("/v1/models", json={"name": "pops-llama-tiny", "path": str(REFERENCE_MODEL),
                                               "reason": "reference"}, headers=as_role(Role.submitter))
    assert response.status_code == 201, response.text
    return response.json()


# --- models ---------------------------------------------------------------------------------

def test_register_model_pins_hash_and_is_idempotent(client, session, as_role, reference_model):
    from runtime.models import content_hash

    assert reference_model["content_hash"] == content_hash(REFERENCE_MODEL)
    assert reference_model["architecture"] == "LlamaForCausalLM"
    again = client.post("/v1/models", json={"name": "pops-llama-tiny", "path": str(REFERENCE_MODEL)},
                        headers=as_role(Role.submitter))
    assert again.status_code == 200 and again.json()["id"] == reference_model["id"]
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "model.register"))
    assert event.actor == "submitter-user" and event.reason == "reference"


@pytest.mark.parametrize("case, message", [
    ("missing", "no model folder at"),
    ("outside", "is outside the allowed model folders"),
    ("no_config", "config.json is missing"),
    ("no_weights", "has no weight files"),
])
def test_bad_model_paths_are_422_naming_path(client, session, as_role, settings, tmp_path, case, message):
    root = settings.models_roots[1]
    path = {"missing": root / "nope", "outside": tmp_path / "elsewhere", "no_config": root / "empty",
            "no_weights": root / "config-only"}[case]
    if case in ("outside", "no_config"):
        path.mkdir(parents=True)
    if case == "no_weights":
        path.mkdir(parents=True)
        shutil.copy(REFERENCE_MODEL / "config.json", path / "config.json")
    response = client.post("/v1/models", json={"name": "bad", "path": str(path)}, headers=as_role(Role.submitter))
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "path"] and message in detail["msg"]
    assert _count(session, RegisteredModel) == 0


# --- recipes --------------------------------------------------------------------------------

def test_submit_yaml_then_versions_and_diff(client, session, as_role):
    headers = as_role(Role.submitter)
    first = _yaml(client, headers, FP8_YAML, reason="initial")
    assert first.status_code == 201
    body = first.json()
    assert (body["name"], body["version"]) == ("chat-fp8", 1)
    assert body["yaml_text"].startswith("# fp8 weights") and body["content_hash"].startswith("sha256:")
    assert body["spec"]["default"]["weights"]["format"] == "fp8_e4m3"

    same = client.post("/v1/recipes", content=json.dumps(body["spec"]),
                       headers={**headers, "Content-Type": "application/json"})
    assert same.status_code == 200 and same.json()["id"] == body["id"]  # same content, no new version

    edited = _yaml(client, headers, FP8_YAML.replace("strategy: channel", "strategy: tensor"), reason="cheaper")
    assert edited.status_code == 201 and edited.json()["version"] == 2
    assert edited.json()["content_hash"] != body["content_hash"]
    assert client.get(f"/v1/recipes/{body['id']}", headers=headers).json()["spec"] == body["spec"]  # v1 untouched

    diff = client.get("/v1/recipes/by-name/chat-fp8/diff", params={"from_version": 1, "to_version": 2},
                      headers=headers)
    assert diff.status_code == 200
    assert diff.json()["changes"] == [{"path": "default.weights.strategy", "op": "changed",
                                       "before": "channel", "after": "tensor"}]
    v2 = client.get("/v1/recipes/by-name/chat-fp8/versions/2", headers=headers)
    assert v2.status_code == 200 and v2.json()["id"] == edited.json()["id"]
    assert client.get("/v1/recipes/by-name/chat-fp8/versions/3", headers=headers).status_code == 404
    events = session.scalars(select(AuditEvent).where(AuditEvent.action == "recipe.create")
                             .order_by(AuditEvent.id)).all()
    assert [e.reason for e in events] == ["initial", "cheaper"]
    assert events[1].before["version"] == 1 and events[1].after["version"] == 2


def test_recipes_are_immutable(client, session, as_role):
    recipe = RecipeFactory()
    session.commit()
    assert client.put(f"/v1/recipes/{recipe.id}", json={}, headers=as_role(Role.admin)).status_code == 405
    assert client.patch(f"/v1/recipes/{recipe.id}", json={}, headers=as_role(Role.admin)).status_code == 405
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError, match="append-only"):
        session.execute(text("UPDATE recipes SET yaml_text = 'x' WHERE id = :id"), {"id": recipe.id})
    session.rollback()


@pytest.mark.parametrize("payload, content_type, loc, message", [
    ("name: [unclosed", "application/yaml", ["body"], "malformed YAML"),
    ("{\"name\": ", "application/json", ["body"], "malformed JSON"),
    ("name: x\ncolour: blue\n", "application/yaml", ["body", "colour"], "Extra inputs are not permitted"),
    ("name: x\ndefault:\n  weights: {format: fp9}\n", "application/yaml", ["body", "default", "weights", "format"],
     "Input should be 'fp32'"),
    ("name: x\ndefault:\n  input_activations: {format: fp8_e4m3, strategy: tensor}\n", "application/yaml",
     ["body", "default", "input_activations", "dynamic"], "need a calibration source"),
    ("- just\n- a list\n", "application/yaml", ["body"], "a recipe must be a mapping"),
    ("", "application/yaml", ["body"], "the request body is empty"),
    ("name: x\n", "text/plain", ["header", "content-type"], "is not a recipe format"),
    ("name: x\nmodel: not-registered\n", "application/yaml", ["body", "model"], "not registered"),
])
def test_bad_recipes_are_422_naming_the_field_and_store_nothing(client, session, as_role, payload, content_type,
                                                                loc, message):
    response = client.post("/v1/recipes", content=payload.encode(),
                           headers={**as_role(Role.submitter), "Content-Type": content_type})
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"][:len(loc)] == loc and message in e["msg"] for e in errors), errors
    assert _count(session, Recipe) == 0
    assert session.scalar(select(AuditEvent).where(AuditEvent.action == "recipe.create")) is None


def test_recipe_validated_against_its_registered_model(client, as_role, reference_model):
    headers = as_role(Role.submitter)
    ok = _yaml(client, headers, FP8_YAML + "model: pops-llama-tiny\n")
    assert ok.status_code == 201 and ok.json()["model_id"] == reference_model["id"]
    # int4 groups of 1000 do not divide the reference model's hidden size: the model check names the field.
    bad = _yaml(client, headers, "name: int4-odd\nmodel: pops-llama-tiny\ndefault:\n"
                                 "  weights: {format: int4, strategy: group, group_size: 1000}\n")
    assert bad.status_code == 422, bad.text
    assert any(e["loc"][:3] == ["body", "default", "weights"] for e in bad.json()["detail"]), bad.json()
    mismatch = _yaml(client, headers, FP8_YAML + "model: other\n", model_id=reference_model["id"])
    assert mismatch.status_code == 422 and mismatch.json()["detail"][0]["loc"] == ["body", "model"]


def test_recipe_list_filters_and_paginates(client, session, as_role):
    for i in range(3):
        RecipeFactory(name="shared", version=i + 1)
    RecipeFactory(name="other")
    session.commit()
    page = client.get("/v1/recipes", params={"name": "shared", "limit": 2}, headers=as_role(Role.viewer)).json()
    assert page["count"] == 3 and [r["version"] for r in page["data"]] == [3, 2]
    page2 = client.get("/v1/recipes", params={"name": "shared", "limit": 2, "offset": 2},
                       headers=as_role(Role.viewer)).json()
    assert [r["version"] for r in page2["data"]] == [1]


# --- corpora --------------------------------------------------------------------------------

def _upload(client, headers, content: bytes, *, name="calib-en", model_id):
    return client.post("/v1/corpora", data={"name": name, "tokenizer_model_id": str(model_id), "reason": "calib"},
                       files={"file": ("corpus.jsonl", content, "application/x-ndjson")}, headers=headers)


CORPUS = "\n".join(json.dumps({"text": t, "slice": s}) for t, s in [
    ("The weather in Paris is mild today.", "en-short"),
    ("Quantization maps wide numbers onto a narrow grid.", "en-short"),
    ("Быстрая коричневая лиса прыгает через ленивую собаку.", "ru-short"),
]).encode() + b"\n"


def test_upload_corpus_profiles_and_stores_content_addressed(client, session, as_role, settings, reference_model):
    response = _upload(client, as_role(Role.submitter), CORPUS, model_id=reference_model["id"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sample_count"] == 3 and body["coverage"]["samples"] == 3
    assert body["coverage"]["scripts"]["Cyrillic"] == pytest.approx(1 / 3)
    assert body["coverage"]["slices"] == {"en-short": pytest.approx(2 / 3), "ru-short": pytest.approx(1 / 3)}
    stored = settings.artifact_root / "corpora" / f"{body['content_hash'].split(':')[1]}.jsonl"
    assert body["uri"] == str(stored) and stored.is_file()
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no temporary file left behind
    again = _upload(client, as_role(Role.submitter), CORPUS, model_id=reference_model["id"])
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    changed = _upload(client, as_role(Role.submitter), CORPUS + CORPUS, model_id=reference_model["id"])
    assert changed.status_code == 409 and changed.json()["detail"][0]["loc"] == ["body", "name"]


@pytest.mark.parametrize("content, loc, message", [
    (b"", ["body", "file"], "empty"),
    (b"\n\n  \n", ["body", "file"], "has no samples"),
    (b"text,slice\nhello,en\n", ["body", "file", "line", 1], "invalid JSON"),
    (b'{"text": "fine"}\n["not", "an object"]\n', ["body", "file", "line", 2], "expected a JSON object"),
    (b'{"txt": "typo"}\n', ["body", "file", "line", 1], "text"),
    (b"\xff\xfe not utf-8", ["body", "file"], "not UTF-8"),
])
def test_bad_corpora_are_422_and_store_nothing(client, session, as_role, settings, reference_model, content, loc,
                                               message):
    response = _upload(client, as_role(Role.submitter), content, model_id=reference_model["id"])
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"][:len(loc)] == loc and message in e["msg"] for e in errors), errors
    assert _count(session, Corpus) == 0
    corpus_dir = settings.artifact_root / "corpora"
    assert not corpus_dir.exists() or not any(corpus_dir.iterdir())


def test_corpus_needs_a_registered_tokenizer_model(client, session, as_role):
    response = _upload(client, as_role(Role.submitter), CORPUS, model_id=424242)
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["body", "tokenizer_model_id"]
