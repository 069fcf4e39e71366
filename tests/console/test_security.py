"""Who may do what, bad input refused before anything starts, and secrets that never come out."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from conftest import PASSWORDS, SECRETS, SEEN, Client, Server, cli


def job_count(admin: Client) -> int:
    return len(admin.get("/api/jobs", params={"limit": 500}).json())


def test_session_cookie_is_httponly_and_samesite_strict(server: Server) -> None:
    r = httpx.post(f"{server.url}/login", data={"name": "viewer", "password": PASSWORDS["viewer"]})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; behind TLS the proxy's X-Forwarded-Proto turns it on


def test_cookie_is_secure_behind_tls(server: Server) -> None:
    # Behind TLS means through the proxy the console trusts (security.trusted_proxies), which says https.
    nginx = Client(server, via_proxy="192.0.2.10")
    r = nginx.post("/login", data={"name": "viewer", "password": PASSWORDS["viewer"]},
                   headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in r.headers["set-cookie"]


def test_pages_and_api_need_a_sign_in(server: Server) -> None:
    r = httpx.get(f"{server.url}/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    for path in ("/api/jobs", "/api/jobs/1", "/api/jobs/1/events", "/api/environments"):
        assert httpx.get(f"{server.url}{path}").status_code == 401, path
    bogus = httpx.get(f"{server.url}/api/jobs", headers={"Authorization": "Bearer fdc_not-a-token"})
    assert bogus.status_code == 401


def test_wrong_password_is_refused_and_sign_ins_are_rate_limited(server: Server, admin: Client) -> None:
    url = f"{server.url}/login"
    # "stager" only: the limit is per address and user name (and, four times higher, per address).
    for _ in range(5):
        r = httpx.post(url, data={"name": "stager", "password": "wrong-password!"})
        assert r.status_code == 401 and "wrong user name or password" in r.text
    blocked = httpx.post(url, data={"name": "stager", "password": PASSWORDS["stager"]})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    audit = admin.get("/api/audit", params={"action": "login_failed", "actor": "stager"}).json()
    assert len(audit) >= 5


def test_viewer_has_no_launch_button_and_gets_403(server: Server, admin: Client) -> None:
    viewer = Client(server, "viewer")
    page = viewer.get("/").text
    assert 'id="nav-launch"' not in page and "launch…" not in page
    assert viewer.get("/launch").status_code == 403
    before = job_count(admin)
    r = viewer.post("/api/jobs", json={"environment": "fleet", "action": "deploy", "release": "v1.2.0"})
    assert r.status_code == 403 and "may not" in r.json()["detail"]
    token = Client(server, token=server.tokens["ci-viewer"])
    assert token.post("/api/jobs", json={"environment": "fleet", "action": "deploy",
                                         "release": "v1.2.0"}).status_code == 403
    assert job_count(admin) == before
    assert 'id="nav-launch"' in Client(server, "deployer").get("/").text


def test_scoped_deployer_cannot_touch_other_environments(server: Server, admin: Client) -> None:
    unscoped = [e["name"] for e in Client(server, "deployer").get("/api/environments").json()]
    assert unscoped == ["fleet", "broken", "staging"]
    scoped = _login_scoped(server)
    envs = [e["name"] for e in scoped.get("/api/environments").json()]
    assert envs == ["staging"]
    r = scoped.post("/api/jobs", json={"environment": "fleet", "action": "deploy", "release": "v1.2.0"})
    assert r.status_code == 422 and "unknown environment 'fleet'" in r.json()["detail"]
    fleet_job = admin.get("/api/jobs", params={"environment": "fleet", "limit": 1}).json()
    if fleet_job:
        assert scoped.get(f"/api/jobs/{fleet_job[0]['id']}").status_code == 404


def _login_scoped(server: Server) -> Client:
    # "stager" may be rate-limited by the test above; a fresh scoped user keeps this test independent.
    done = cli(server.config, "create-user", "stager2", "--role", "deployer", "--environments", "staging",
               "--password-stdin", stdin="stager2-password-1234\n")
    assert done.returncode == 0, done.stderr
    PASSWORDS["stager2"] = "stager2-password-1234"
    return Client(server, "stager2")


def test_admin_only_actions_need_admin(server: Server) -> None:
    deployer = Client(server, "deployer")
    assert deployer.get("/audit").status_code == 403
    assert deployer.get("/admin/users").status_code == 403
    assert deployer.post("/api/tokens", json={"name": "x", "role": "viewer"}).status_code == 403


@pytest.mark.parametrize("body, status, words", [
    ({"environment": "nowhere", "action": "deploy", "release": "v1.2.0"}, 422, "unknown environment 'nowhere'"),
    ({"environment": "fleet", "action": "explode", "release": "v1.2.0"}, 422, "unknown action 'explode'"),
    ({"environment": "fleet", "action": "deploy", "release": "v9.9.9"}, 422, "not in the registry"),
    ({"environment": "fleet", "action": "deploy", "release": "../etc"}, 422, "not a valid image tag"),
    ({"environment": "fleet", "action": "deploy"}, 422, "needs a release"),
    ({"environment": "fleet", "action": "deploy", "release": "v1.2.0", "extra_vars": []}, 422, "extra_vars"),
    ({"environment": "fleet", "action": "deploy", "release": "v1.2.0", "extra_vars": {"fixture_batch": "two"}},
     422, "fixture_batch"),
    ({"environment": "fleet", "action": "deploy", "release": "v1.2.0", "extra_vars": {"surprise": 1}},
     422, "surprise"),
    ({"environment": "fleet", "action": "deploy", "release": "v1.2.0",
      "extra_vars": {"ansible_ssh_common_args": "-o ProxyCommand=id"}}, 422, "not allowed"),
    ({"environment": "fleet", "action": "soak", "extra_vars": {"x": "{{ lookup('pipe', 'id') }}"}}, 422, "template"),
    ({"environment": "fleet", "action": "soak", "release": "v1.2.0"}, 422, "takes no release"),
    ({"action": "deploy"}, 422, "environment"),
])
def test_bad_input_is_refused_and_starts_nothing(ci: Client, admin: Client, body: dict[str, Any], status: int,
                                                 words: str) -> None:
    before = job_count(admin)
    r = ci.post("/api/jobs", json=body)
    assert r.status_code == status, r.text
    assert words in json.dumps(r.json()["detail"]), r.text
    assert job_count(admin) == before


def test_malformed_and_oversized_bodies(ci: Client, admin: Client) -> None:
    before = job_count(admin)
    r = ci.post("/api/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    huge = {"environment": "fleet", "action": "deploy", "release": "v1.2.0", "extra_vars": {"pad": "x" * 100_000}}
    r = ci.post("/api/jobs", json=huge)
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    assert job_count(admin) == before


def test_state_changes_from_a_browser_session_need_the_csrf_token(server: Server, admin: Client) -> None:
    deployer = Client(server, "deployer")
    r = deployer.http.post("/api/jobs", json={"environment": "fleet", "action": "deploy", "release": "v1.2.0"})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = deployer.http.post("/launch", data={"environment": "fleet", "action": "deploy", "release": "v1.2.0"})
    assert r.status_code == 403
    r = deployer.http.post("/launch", data={"environment": "fleet", "action": "deploy", "release": "v1.2.0",
                                             "csrf": "forged"})
    assert r.status_code == 403


def test_event_stream_checks_the_session(server: Server, finished: dict[str, dict[str, Any]]) -> None:
    job_id = finished["fleet"]["id"]
    assert httpx.get(f"{server.url}/api/jobs/{job_id}/events", cookies={"fd_session": "forged"}).status_code == 401
    viewer = Client(server, "viewer")
    with viewer.http.stream("GET", f"/api/jobs/{job_id}/events") as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
    viewer.post("/logout", data={"csrf": viewer.csrf})
    assert viewer.get(f"/api/jobs/{job_id}/events").status_code == 401


def test_api_tokens_are_shown_once_stored_hashed_and_revocable(server: Server, admin: Client) -> None:
    r = admin.post("/api/tokens", json={"name": "ci-staging", "role": "deployer", "environments": ["staging"]})
    assert r.status_code == 201
    token, token_id = r.json()["token"], r.json()["id"]
    ci = Client(server, token=token)
    assert ci.get("/api/me").json() == {"name": "token:ci-staging", "role": "deployer",
                                        "environments": ["staging"], "token": True}
    page = admin.get("/admin/tokens").text
    assert token not in page and token[:10] in page
    db = (server.root / "data" / "console.db").read_bytes() + _wal(server)
    assert token.encode() not in db
    assert admin.http.delete(f"/api/tokens/{token_id}", headers={"X-CSRF-Token": admin.csrf}).status_code == 200
    assert ci.get("/api/me").status_code == 401


def _wal(server: Server) -> bytes:
    wal = server.root / "data" / "console.db-wal"
    return wal.read_bytes() if wal.exists() else b""


def test_alertmanager_webhook_shows_alerts_on_the_dashboard(server: Server, admin: Client) -> None:
    am = Client(server, token=server.tokens["alertmanager"])
    payload = {"version": "4", "status": "firing", "commonLabels": {"environment": "fleet"}, "alerts": [
        {"status": "firing", "labels": {"alertname": "HighErrorRate", "severity": "critical"},
         "annotations": {"summary": "5xx above 1% on web"}, "startsAt": "2026-11-25T10:00:00Z",
         "fingerprint": "abc123"},
    ]}
    assert am.post("/api/alerts", json=payload).status_code == 200
    page = admin.get("/").text
    fleet = page[page.index('id="env-fleet"'):].split("</section>")[0]
    assert "HighErrorRate" in fleet and "5xx above 1% on web" in fleet
    # The alerting token can do nothing else; a viewer cannot post alerts.
    assert am.get("/api/jobs").status_code == 403
    assert Client(server, token=server.tokens["ci-viewer"]).post("/api/alerts", json=payload).status_code == 403
    payload["alerts"][0]["status"] = "resolved"
    assert am.post("/api/alerts", json=payload).status_code == 200
    assert "HighErrorRate" not in admin.get("/").text
    assert am.post("/api/alerts", json={"nothing": 1}).status_code == 422


def test_users_page_creates_a_scoped_user_who_can_sign_in(server: Server, admin: Client) -> None:
    r = admin.http.post("/admin/users", data={"csrf": admin.csrf, "name": "newbie", "role": "viewer",
                                               "environments": "staging", "password": "newbie-password-1234"})
    assert r.status_code == 303
    PASSWORDS["newbie"] = "newbie-password-1234"
    newbie = Client(server, "newbie")
    assert [e["name"] for e in newbie.get("/api/environments").json()] == ["staging"]
    audit = admin.get("/audit").text
    assert "user_create" in audit and "newbie" in audit


def test_openapi_documents_the_ci_api(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events", "/api/jobs/{job_id}/cancel",
                 "/api/jobs/{job_id}/relaunch"):
        assert path in spec["paths"], path


def test_secrets_never_reach_the_database_disk_log_or_any_response(
        server: Server, admin: Client, ci: Client, finished: dict[str, dict[str, Any]]) -> None:
    # The job really used the secrets: its no_log task needs both vaulted values to render.
    assert finished["fleet"]["status"] == "successful"
    msgs = ci.events(finished["fleet"]["id"])
    logins = [m for m in msgs if m["type"] == "event" and m["event"]["event_data"].get("task", "").startswith("Log in")
              and m["event"]["event"] == "runner_on_ok"]
    assert len(logins) == 6
    for m in logins:
        assert set(m["event"]["event_data"]["res"]) <= {"censored", "changed"}, m
        assert "hidden" in m["event"]["event_data"]["res"]["censored"]
    # Everything a person or CI can be served.
    for job in finished.values():
        admin.get(f"/jobs/{job['id']}")
        admin.get(f"/api/jobs/{job['id']}")
        admin.events(job["id"])
    for path in ("/", "/jobs", "/launch", "/audit", "/admin/users", "/admin/tokens", "/api/jobs", "/api/environments",
                 "/api/actions", "/api/audit", "/api/releases?action=deploy", "/openapi.json"):
        assert admin.get(path).status_code == 200, path
    served = "\n".join(SEEN)
    stored = [p for p in (server.root / "data").rglob("*") if p.is_file()] + [server.log]
    assert len(stored) > 3
    for name, value in SECRETS.items():
        assert value not in served, f"{name} was served"
        for path in stored:
            assert value.encode() not in path.read_bytes(), f"{name} is in {path}"


def test_pages_carry_no_inline_script_for_the_csp(admin: Client) -> None:
    # The log is painted by job.js from JSON; the page itself must carry no inline script for CSP.
    page = admin.get("/").text
    assert not re.search(r"<script>(?!\s*</script>)", page)
    assert "script-src 'self'" in admin.get("/").headers["content-security-policy"]


def test_launch_form_errors_are_shown_in_place_and_start_nothing(server: Server, admin: Client) -> None:
    deployer = Client(server, "deployer")
    before = job_count(admin)
    form = {"csrf": deployer.csrf, "environment": "fleet", "action": "deploy", "release": "v1.2.0",
            "extra_vars": "fixture_batch: [unclosed"}
    r = deployer.http.post("/launch", data=form)
    assert r.status_code == 422 and "not valid YAML or JSON" in r.text
    assert "fixture_batch: [unclosed" in r.text  # kept in the form, not sent through a URL
    form["extra_vars"] = "fixture_batch: 99"
    r = deployer.http.post("/launch", data=form)
    assert r.status_code == 422 and "fixture_batch" in r.text and "99 is greater than the maximum" in r.text
    assert job_count(admin) == before


# ----- issue 21: who may grant what, what a deployer may pass, input that amplifies or crashes -----

def _add_user(admin: Client, name: str, role: str, environments: str = "") -> None:
    """A user made through the admin page (fast: no CLI process), with a password in PASSWORDS."""
    PASSWORDS[name] = f"{name}-password-1234"
    r = admin.http.post("/admin/users", data={"csrf": admin.csrf, "name": name, "role": role,
                                               "environments": environments, "password": PASSWORDS[name]})
    assert r.status_code == 303 and "error=" not in r.headers["location"], r.headers["location"]


def _user_id(admin: Client, name: str) -> int:
    page = admin.get("/admin/users").text
    m = re.search(rf"<tr><td>{re.escape(name)}</td>.*?action=\"/admin/users/(\d+)/", page, re.S)
    assert m, page
    return int(m.group(1))


def test_a_scoped_admin_grants_nothing_wider_than_its_own_scope(server: Server, admin: Client) -> None:
    _add_user(admin, "envadmin", "admin", "staging")
    scoped = Client(server, "envadmin")
    for body in ({"name": "x", "role": "admin"}, {"name": "x", "role": "deployer", "environments": ["fleet"]},
                 {"name": "x", "role": "viewer", "environments": ["staging", "fleet"]},
                 {"name": "x", "role": "alertmanager", "environments": ["staging"]}):
        r = scoped.post("/api/tokens", json=body)
        assert r.status_code == 403 and "envadmin" in r.json()["detail"], (body, r.text)
    r = scoped.post("/api/tokens", json={"name": "staging-ci", "role": "deployer", "environments": ["staging"]})
    assert r.status_code == 201 and r.json()["environments"] == ["staging"]
    # The pages go through the same rule: no unscoped admin, no disabling the admin of every environment.
    r = scoped.http.post("/admin/users", data={"csrf": scoped.csrf, "name": "rootish", "role": "admin",
                                                "environments": "", "password": "rootish-password-1234"})
    assert r.status_code == 303 and "every+environment" in r.headers["location"], r.headers["location"]
    assert "rootish" not in admin.get("/admin/users").text
    r = scoped.http.post(f"/admin/users/{_user_id(admin, 'admin')}/disable", data={"csrf": scoped.csrf})
    assert r.status_code == 403
    # Nor change it from its row's form (an update with the password kept): its present scope is wider.
    r = scoped.http.post("/admin/users", data={"csrf": scoped.csrf, "update": "1", "name": "admin", "role": "viewer",
                                                "environments": "staging", "password": ""})
    assert r.status_code == 303 and "error=" in r.headers["location"], r.headers["location"]
    assert admin.get("/api/me").status_code == 200  # the global admin's session lives on
    # Its own kind it may manage; the global admin may manage it.
    _add_user(scoped, "stageviewer", "viewer", "staging")
    assert scoped.http.post(f"/admin/users/{_user_id(admin, 'stageviewer')}/disable",
                            data={"csrf": scoped.csrf}).status_code == 303
    assert admin.http.post(f"/admin/users/{_user_id(admin, 'envadmin')}/disable",
                           data={"csrf": admin.csrf}).status_code == 303
    assert scoped.get("/api/me").status_code == 401


def _launch_form(client: Client, extra_vars: str, action: str = "deploy") -> httpx.Response:
    return client.http.post("/launch", data={"csrf": client.csrf, "environment": "fleet", "action": action,
                                             "release": "v1.2.0", "extra_vars": extra_vars})


def test_yaml_aliases_dates_and_tags_are_refused_at_parse_time(server: Server, admin: Client) -> None:
    deployer = Client(server, "deployer")
    before = job_count(admin)
    # A small alias bomb (the 369 bytes became 12.5 MB): refused before anything expands it.
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcd", "bcde"))
    r = _launch_form(deployer, bomb)
    assert r.status_code == 422 and "anchors and aliases" in r.text, r.text[-2000:]
    r = _launch_form(deployer, "fixture_batch: 2\nnote: 2024-01-01")
    assert r.status_code == 422 and "note" in r.text  # a date is a plain string, then the schema speaks
    r = _launch_form(deployer, "x: !!binary aGVsbG8=", action="soak")
    assert r.status_code == 422 and "!!binary is not allowed" in r.text
    r = _launch_form(deployer, "x: .nan", action="soak")
    assert r.status_code == 422 and "not a number JSON can hold" in r.text
    # The API's JSON cannot alias, but its expanded size is bounded the same way.
    r = deployer.post("/api/jobs", json={"environment": "fleet", "action": "soak",
                                         "extra_vars": {"pad": "x" * 40_000}})
    assert r.status_code == 413 and "extra vars are" in r.json()["detail"], r.text
    assert job_count(admin) == before


def test_forwarded_headers_count_only_from_the_trusted_proxy(server: Server, admin: Client) -> None:
    direct = httpx.post(f"{server.url}/login", data={"name": "nobody-direct", "password": "wrong-password!"},
                        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert direct.status_code == 401
    nginx = Client(server, via_proxy="203.0.113.8")
    assert nginx.post("/login", data={"name": "nobody-proxied", "password": "wrong-password!"}).status_code == 401
    ips = {a["actor"]: a["ip"] for a in admin.get("/api/audit", params={"action": "login_failed"}).json()}
    assert ips["nobody-direct"] == "127.0.0.1"
    assert ips["nobody-proxied"] == "203.0.113.8"


def test_failed_sign_ins_lock_the_address_and_name_not_the_name(server: Server, admin: Client) -> None:
    _add_user(admin, "lockme", "viewer")
    attacker = Client(server, via_proxy="198.51.100.66")
    for _ in range(5):
        assert attacker.post("/login", data={"name": "lockme", "password": "wrong-password!"}).status_code == 401
    blocked = attacker.post("/login", data={"name": "lockme", "password": PASSWORDS["lockme"]})
    assert blocked.status_code == 429
    # The user, from their own address, is not locked out by someone else's guesses.
    assert Client(server, "lockme").get("/api/me").json()["name"] == "lockme"
    assert Client(server, "lockme", via_proxy="198.51.100.67").get("/api/me").status_code == 200


def test_a_password_change_ends_the_users_sessions_and_sign_out_can_end_all(server: Server, admin: Client) -> None:
    _add_user(admin, "changer", "viewer")
    first, second = Client(server, "changer"), Client(server, "changer")
    done = cli(server.config, "create-user", "changer", "--role", "viewer", "--update", "--password-stdin",
               stdin="changer-new-password-1234\n")
    assert done.returncode == 0, done.stderr
    assert first.get("/api/me").status_code == 401 and second.get("/api/me").status_code == 401
    PASSWORDS["changer"] = "changer-new-password-1234"
    first, second = Client(server, "changer"), Client(server, "changer")
    r = first.http.post("/logout", data={"csrf": first.csrf, "everywhere": "1"})
    assert r.status_code == 303
    assert second.get("/api/me").status_code == 401


def test_a_revoked_token_loses_its_open_event_stream(server: Server, admin: Client) -> None:
    r = admin.post("/api/tokens", json={"name": "stream-watcher", "role": "deployer", "environments": ["staging"]})
    token, token_id = r.json()["token"], r.json()["id"]
    watcher = Client(server, token=token)
    job_id = watcher.launch("staging", action="soak", release=None)
    seen: list[dict[str, Any]] = []
    try:
        with watcher.http.stream("GET", f"/api/jobs/{job_id}/events", timeout=60) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                seen.append(json.loads(line[5:]))
                if seen[-1]["type"] == "snapshot":
                    assert admin.http.delete(f"/api/tokens/{token_id}",
                                             headers={"X-CSRF-Token": admin.csrf}).status_code == 200
    finally:
        admin.post(f"/api/jobs/{job_id}/cancel")
        admin.wait(job_id)
    assert seen[-1]["type"] == "error" and "no longer allowed" in seen[-1]["detail"], seen[-3:]


def test_out_of_range_ids_and_chunked_bodies_get_a_4xx(server: Server, ci: Client, admin: Client) -> None:
    huge = "9" * 20
    for path in (f"/api/jobs/{huge}", f"/api/jobs/{huge}/events", f"/jobs/{huge}", f"/api/jobs/-{huge}"):
        r = admin.get(path)
        assert r.status_code == 404, (path, r.status_code)
    assert admin.post(f"/api/jobs/{huge}/cancel").status_code == 404
    assert admin.get("/api/jobs", params={"before": huge}).status_code == 200
    assert admin.http.delete(f"/api/tokens/{huge}", headers={"X-CSRF-Token": admin.csrf}).status_code == 404
    before = job_count(admin)

    def chunks() -> Any:
        yield b'{"environment": "fleet", "action": "soak", "extra_vars": {"pad": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}}'

    r = ci.post("/api/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"], r.text
    assert job_count(admin) == before


def test_api_docs_are_served_by_the_console_under_its_csp(server: Server) -> None:
    r = httpx.get(f"{server.url}/docs")
    assert r.status_code == 200
    assert "script-src 'self'" in r.headers["content-security-policy"]
    scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', r.text)
    assert scripts and all(s.startswith("/") and not s.startswith("//") for s in scripts), scripts
    assert not re.search(r"<script>(?!\s*</script>)", r.text)
    for path in scripts:
        assert httpx.get(f"{server.url}{path}").status_code == 200, path
