"""Request validation, auth and the error shape of the v2 API (no renders)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import Key, submit

SCENE = "from manim import *\n\nclass A(Scene):\n    def construct(self):\n        self.wait(0.2)\n"


def _post(client: Any, key: Key, body: Any, **kw: Any) -> Any:
    return client.post("/api/v2/render", json=body, headers=key.headers, **kw)


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def _valid(**overrides: Any) -> dict[str, Any]:
    return {"code": SCENE, "className": "A", "quality": "low", **overrides}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("code", ""),
        ("code", "   "),
        ("code", 12),
        ("className", "1abc"),
        ("className", "a-b"),
        ("className", ""),
        ("className", "Hello\n"),
        ("className", "Hello\x00"),
        ("quality", "ultra"),
        ("quality", None),
        ("aspectRatio", "4:3"),
        ("fps", 0),
        ("fps", 121),
        ("fps", "30"),
        ("fps", 29.5),
        ("webhookUrl", "http://example.com/hook"),
        ("webhookUrl", "not a url"),
        ("webhookUrl", "https://example.com/\x00"),
        ("code", "from manim import *\x00"),
        ("code", "x = '\ud800'"),
        ("metadata", {"a": "\x00"}),
        ("metadata", {"a\x00": 1}),
        ("metadata", ["\udfff"]),
        ("metadata", {"deep": _nested(32)}),
        ("metadata", {"big": "x" * (17 * 1024)}),
    ],
)
def test_bad_field_is_400_naming_it(client: Any, api_key: Key, field: str, value: Any) -> None:
    # Given a valid body with one field made bad; When it is submitted
    response = _post(client, api_key, _valid(**{field: value}))
    # Then the answer is a 400 in the one error shape, naming the field
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "validation_error"
    assert field in body["message"]


def test_unknown_fields_are_ignored(client: Any, api_key: Key) -> None:
    # A client built for a newer Kodisc may send fields this farm doesn't know.
    response = _post(client, api_key, _valid(surprise=1, options={"x": [1]}))
    assert response.status_code == 202


def test_fps_up_to_120_is_an_extension(client: Any, api_key: Key) -> None:
    assert _post(client, api_key, _valid(fps=120)).status_code == 202


def test_metadata_at_the_caps_is_accepted(client: Any, api_key: Key) -> None:
    deep = _nested(32)
    job_id = _post(client, api_key, _valid(metadata=deep)).get_json()["jobId"]
    job = client.get(f"/api/v2/render/{job_id}", headers=api_key.headers).get_json()
    assert job["metadata"] == deep
    assert _post(client, api_key, _valid(metadata={"b": "x" * 16000})).status_code == 202


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"code": "x", "className": "A", "metadata": NaN}', "metadata"),
        (b'{"code": "x", "className": "A", "metadata": {"a": Infinity}}', "metadata.a"),
        (b'{"code": "x", "className": "A", "metadata": [1e400]}', "metadata[0]"),
        (b'{"code": "x", "className": "A", "fps": -1e400}', "fps"),
        (b'{"code": "x", "className": "A", "metadata": "\\ud800"}', "metadata"),
        (b'{"code": "\\u0000", "className": "A"}', "code"),
        # 960 levels: past the depth cap, or (deep in a call stack) past the parser's recursion
        (
            b'{"code": "x", "className": "A", "metadata": ' + b"[" * 960 + b"]" * 960 + b"}",
            "body|metadata",
        ),
        (
            b'{"code": "x", "className": "A", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "body",
        ),
        (b'{"code": "x", "className": "A", "metadata": ' + b"1" * 5000 + b"}", "body"),
        (b'{"code": "\xff", "className": "A"}', "body"),
    ],
)
def test_values_postgres_cannot_store_are_400(
    client: Any, api_key: Key, raw: bytes, field: str
) -> None:
    # Given a body that Python's JSON parser accepts but PostgreSQL cannot store, or one that
    # no parser should accept; When it is submitted
    response = client.post(
        "/api/v2/render", data=raw, headers={**api_key.headers, "Content-Type": "application/json"}
    )
    # Then the answer is a 400 naming where, never a 500
    assert response.status_code == 400, response.get_json()
    message = response.get_json()["message"]
    assert message.startswith(tuple(field.split("|"))), message


def test_nul_in_job_id_or_cursor_is_not_found(client: Any, api_key: Key) -> None:
    for path in (
        "/api/v2/render/job_%00x",
        "/api/v2/render/job_%00x/logs",
        "/api/v2/render/%ED%A0%80",
        "/api/v2/render?cursor=%00",
    ):
        response = client.get(path, headers=api_key.headers)
        assert response.status_code == 404, (path, response.get_json())
    assert client.delete("/api/v2/render/job_%00", headers=api_key.headers).status_code == 404


def test_unknown_query_parameters_are_ignored(client: Any, api_key: Key) -> None:
    response = client.get("/api/v2/render?limit=1&page=2", headers=api_key.headers)
    assert response.status_code == 200
    assert client.get("/api/v2/render?limit=1e400", headers=api_key.headers).status_code == 400


@pytest.mark.parametrize("missing", ["code", "className"])
def test_missing_required_field(client: Any, api_key: Key, missing: str) -> None:
    body = _valid()
    del body[missing]
    response = _post(client, api_key, body)
    assert response.status_code == 400
    assert missing in response.get_json()["message"]


def test_body_must_be_json_object(client: Any, api_key: Key) -> None:
    response = client.post(
        "/api/v2/render",
        data="[1]",
        headers={**api_key.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.get_json()["message"].startswith("body")
    response = client.post(
        "/api/v2/render",
        data="{oops",
        headers={**api_key.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400


def test_body_over_200kb_is_413(client: Any, api_key: Key) -> None:
    response = _post(client, api_key, _valid(code="#" * (201 * 1024)))
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload_too_large"


def test_body_just_under_limit_is_accepted(client: Any, api_key: Key) -> None:
    code = SCENE + "#" * (190 * 1024)
    assert _post(client, api_key, _valid(code=code)).status_code == 202


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic abc",
        "Bearer ",
        "Bearer farm_live_xyz",
        "Bearer farm_live_" + "0" * 48,
    ],
)
def test_auth_failures_are_401(client: Any, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for response in (
        client.post("/api/v2/render", json=_valid(), headers=headers),
        client.get("/api/v2/me", headers=headers),
        client.get("/api/v2/render/job_x", headers=headers),
        client.get("/api/v2/render", headers=headers),
        client.delete("/api/v2/render/job_x", headers=headers),
        client.get("/api/v2/render/job_x/logs", headers=headers),
    ):
        assert response.status_code == 401
        assert response.get_json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    "data",
    [b"{oops", b"[1]", b'{"code": 1}', b"#" * (300 * 1024), b'{"metadata": NaN}'],
    ids=["malformed", "array", "invalid", "oversized", "nan"],
)
def test_auth_comes_before_the_body(client: Any, data: bytes) -> None:
    # Kodisc answers 401 to a request without a key, whatever its body.
    response = client.post(
        "/api/v2/render", data=data, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(client: Any, api_key: Key, scheme: str) -> None:
    headers = {"Authorization": f"{scheme} {api_key.key}"}
    assert client.get("/api/v2/me", headers=headers).status_code == 200


def test_revoked_key_is_401(client: Any, make_key: Any, pool: Any) -> None:
    from farm import keys

    key = make_key()
    assert client.get("/api/v2/me", headers=key.headers).status_code == 200
    with pool.connection() as conn:
        keys.revoke_key(conn, key.id)
    assert client.get("/api/v2/me", headers=key.headers).status_code == 401


def test_another_users_job_is_404(client: Any, make_key: Any) -> None:
    owner, stranger = make_key(), make_key()
    job_id = submit(client, owner, SCENE, "A")
    assert client.get(f"/api/v2/render/{job_id}", headers=owner.headers).status_code == 200
    for response in (
        client.get(f"/api/v2/render/{job_id}", headers=stranger.headers),
        client.delete(f"/api/v2/render/{job_id}", headers=stranger.headers),
        client.get(f"/api/v2/render/{job_id}/logs", headers=stranger.headers),
    ):
        assert response.status_code == 404
        assert response.get_json()["error"] == "not_found"


def test_submit_response_and_job_document(client: Any, api_key: Key) -> None:
    response = _post(client, api_key, _valid(metadata={"a": [1, {"b": None}]}))
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued" and body["endpoint"] == "render"
    job = client.get(f"/api/v2/render/{body['jobId']}", headers=api_key.headers).get_json()
    for field in (
        "jobId",
        "endpoint",
        "status",
        "creditsCost",
        "durationMs",
        "result",
        "error",
        "metadata",
        "createdAt",
        "completedAt",
    ):
        assert field in job
    assert job["metadata"] == {"a": [1, {"b": None}]}
    assert job["result"] is None and job["durationMs"] is None and job["completedAt"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", job["createdAt"])


def test_me_shows_user_key_and_credits(client: Any, make_key: Any) -> None:
    key = make_key(credits=42)
    me = client.get("/api/v2/me", headers=key.headers).get_json()
    assert me["keyId"] == key.id and me["userId"] == key.user_id
    assert me["keyPrefix"] == key.key[:16]  # Kodisc: "first 16 characters of the API key"
    assert me["credits"] == {"paid": 42, "free": 0, "total": 42}
    assert me["limits"]["maxActiveJobs"] >= 1 and me["limits"]["requestsPerSecond"] > 1
    assert me["name"] == "test" and me["createdAt"].endswith("Z")
    assert "webhookSecret" not in str(me) and key.webhook_secret not in str(me)


def test_unknown_route_and_method_are_json(client: Any, api_key: Key) -> None:
    response = client.get("/api/v2/nothing", headers=api_key.headers)
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"
    response = client.put("/api/v2/render", headers=api_key.headers)
    assert response.status_code == 405 and response.get_json()["error"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    response = client.post("/api/v2/me", headers=api_key.headers)
    assert response.status_code == 405 and "GET" in response.headers["Allow"]


def test_openapi_document(client: Any) -> None:
    from openapi_spec_validator import validate

    spec = client.get("/api/v2/openapi.json").get_json()
    validate(spec)  # a valid OpenAPI 3.1 document, as Kodisc publishes
    assert spec["openapi"] == "3.1.0"
    schemas = spec["components"]["schemas"]
    assert set(schemas["RenderRequest"]["required"]) == {"code", "className"}
    assert schemas["RenderRequest"]["properties"]["webhookUrl"]["pattern"] == "^https://"
    assert set(schemas["Job"]["required"]) >= {
        "jobId",
        "endpoint",
        "status",
        "creditsCost",
        "durationMs",
        "result",
        "error",
        "metadata",
        "createdAt",
        "completedAt",
    }
    assert set(schemas["Me"]["required"]) >= {"userId", "keyId", "keyPrefix", "credits"}
    assert set(schemas["Credits"]["required"]) == {"paid", "free", "total"}
    assert schemas["Job"]["properties"]["creditsCost"]["type"] == "number"
    assert set(spec["paths"]) >= {"/api/v2/render", "/api/v2/render/{jobId}", "/api/v2/me"}
    props = spec["components"]["schemas"]["RenderRequest"]["properties"]
    assert set(props) == {
        "code",
        "className",
        "quality",
        "aspectRatio",
        "fps",
        "metadata",
        "webhookUrl",
        "seed",  # an extension: the scene's random seed
    }
    assert props["quality"]["enum"] == ["low", "medium", "high", "twok", "fourk"]


def test_health_and_ready(client: Any) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"postgres": "ok", "redis": "ok", "s3": "ok"}
