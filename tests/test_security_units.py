"""Pure pieces of the security layer: the access table, token buckets, the
callback (SSRF) policy and its resolver, key format, startup refusals, upload
sniffing, and signatures checked against the Standard Webhooks reference code."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import time
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web

from services.api.access_policy import Open, decide
from services.api.app import create_app
from services.api.auth import AUTHENTICATOR, Authenticator, auth_middleware
from services.api.http import error_middleware
from services.api.rate_limit import RATE_LIMITS, RateLimits, TokenBuckets
from services.api.upload_intake import clean_filename, sniff
from shared.errors import RateLimited
from shared.security.api_key_store import KeyRecord
from shared.security.api_keys import (
    Scope,
    generate_key,
    parse_duration,
    parse_key,
    parse_scopes,
    secret_matches,
)
from shared.security.callback_policy import (
    CallbackPolicy,
    CallbackRefused,
    GuardedResolver,
    address_problem,
)
from shared.security.startup_checks import problems
from shared.settings import Settings
from shared.webhooks import WebhookVerificationError, sign, verify
from tests.support.callback_receiver import CallbackReceiver
from tests.support.environment import free_port

pytestmark = pytest.mark.fast  # no broker, database or child process (make test-fast)

# --- the access table -----------------------------------------------------------------------


def test_every_mounted_route_has_an_access_rule_and_unknown_api_routes_have_none() -> None:
    app = create_app(Settings())
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        assert decide(route.method, path).rule is not None, f"{route.method} {path} has no access rule"
    assert decide("GET", "/api/v1/anything-new").rule is None
    assert decide("PUT", "/api/v1/tasks").rule is None


@pytest.mark.parametrize(("method", "path", "access", "kb"), [
    ("GET", "/health/ready", Open.PUBLIC, None),
    ("HEAD", "/health", Open.PUBLIC, None),
    ("GET", "/metrics", Open.METRICS, None),
    ("GET", "/api/v1/stats/workers", Scope.ADMIN, None),
    ("GET", "/api/v1/stats/queues", Scope.ADMIN, None),
    ("POST", "/api/v1/dlq/replay", Scope.ADMIN, None),
    ("POST", "/api/v1/kbs/kb_9/search", Scope.TASKS_READ, "kb_9"),
    ("DELETE", "/api/v1/kbs/kb_9/documents/doc_1", Scope.TASKS_WRITE, "kb_9"),
    ("DELETE", "/api/v1/tasks/abc", Scope.TASKS_WRITE, None),
])
def test_routes_other_modules_add_are_covered_by_pattern(method: str, path: str, access: object, kb: str | None) -> None:
    decision = decide(method, path)
    assert decision.rule is not None and decision.rule.access == access and decision.tenant_kb == kb


class _FakeStore:
    def __init__(self, records: dict[str, KeyRecord]) -> None:
        self.records = records

    async def verify(self, token: str) -> KeyRecord | None:
        return self.records.get(token)

    async def touch(self, key_id: str) -> None:
        return None


def _record(key_id: str, scopes: tuple[str, ...], kbs: tuple[str, ...] | None) -> KeyRecord:
    return KeyRecord(key_id, key_id, scopes, kbs, datetime.now(UTC), None, None, None)


async def test_the_middleware_enforces_tenant_path_parameters_and_default_deny() -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[error_middleware, auth_middleware()])
    store = _FakeStore({"a": _record("a", ("tasks:read", "tasks:write"), ("kb_a",)),
                        "ops": _record("ops", ("admin",), None)})
    app[AUTHENTICATOR] = Authenticator(store, required=True, cache_seconds=0, metrics_token=None)  # type: ignore[arg-type]
    app[RATE_LIMITS] = RateLimits(TokenBuckets(0, 1), TokenBuckets(0, 1))
    app.router.add_post("/api/v1/kbs/{kb_id}/search", ok)
    app.router.add_get("/api/v1/stats/workers", ok)
    app.router.add_get("/api/v1/unmapped", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"

    async def status(method: str, path: str, key: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, http.request(
            method, base + path, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            body = await response.json()
            return response.status, body.get("error", {}).get("code", "")

    try:
        assert await status("POST", "/api/v1/kbs/kb_a/search", "a") == (200, "")
        assert await status("POST", "/api/v1/kbs/kb_b/search", "a") == (404, "not_found")
        assert await status("GET", "/api/v1/stats/workers", "a") == (403, "forbidden")
        assert await status("GET", "/api/v1/stats/workers", "ops") == (200, "")
        assert await status("GET", "/api/v1/unmapped", "ops") == (403, "forbidden")  # no rule: denied
        assert await status("GET", "/api/v1/nothing", "ops") == (404, "not_found")
        assert await status("GET", "/api/v1/nothing", "bogus") == (401, "unauthorized")
    finally:
        await runner.cleanup()


# --- token buckets --------------------------------------------------------------------------


def test_a_bucket_grants_its_burst_then_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBuckets(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take("k") for _ in range(4)] == [0, 0, 0, 0.5]
    now[0] = 0.5
    assert bucket.take("k") == 0 and bucket.take("k") == pytest.approx(0.5)
    assert bucket.take("other") == 0, "buckets are per key"
    now[0] = 100
    assert [bucket.take("k") for _ in range(3)] == [0, 0, 0], "never more than the burst"


async def test_concurrent_requests_share_one_bucket_exactly() -> None:
    limits = RateLimits(TokenBuckets(rate=0.001, burst=10), TokenBuckets(0, 1))

    async def one() -> bool:
        await asyncio.sleep(0)
        try:
            limits.charge_caller("key:1")
            return True
        except RateLimited as exc:
            assert exc.retry_after_seconds >= 1
            return False

    results = await asyncio.gather(*(one() for _ in range(100)))
    assert sum(results) == 10


def test_a_kb_charge_is_all_or_nothing() -> None:
    limits = RateLimits(TokenBuckets(0, 1), TokenBuckets(rate=0.001, burst=5))
    limits.charge_kbs({"a": 3})
    with pytest.raises(RateLimited, match="'a'"):
        limits.charge_kbs({"b": 2, "a": 3})
    limits.charge_kbs({"b": 5})  # b got its tokens back when a was refused


# --- the callback policy (SSRF) ---------------------------------------------------------------

REFUSED = [
    "127.0.0.1", "127.8.9.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.100.100.200",
    "0.0.0.0", "224.0.0.251", "255.255.255.255", "::1", "::", "fe80::1", "fd00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None
    with pytest.raises(CallbackRefused, match="callbacks go to public addresses"):
        CallbackPolicy.build([]).check_address("host", address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://example.com/x", "only http and https"),
    ("http://user:pass@example.com/x", "credentials"),
    ("https://example.com:8443/x", "port 8443"),
    ("http://127.0.0.1/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.0.0.5/hook", "private"),
    ("http:///nohost", "no host"),
])
def test_urls_refused_without_dns(url: str, reason: str) -> None:
    with pytest.raises(CallbackRefused, match=reason):
        CallbackPolicy.build([]).check_url(url)


def test_allowed_hosts_exempt_names_literals_and_ranges_from_the_address_and_port_rules() -> None:
    policy = CallbackPolicy.build(["kb-service", "127.0.0.1", "10.20.0.0/16"], [8443])
    assert policy.check_url("http://kb-service:8000/hook").vouched
    assert policy.check_url("http://127.0.0.1:9999/hook").vouched
    policy.check_address("kb-service", "10.1.1.1")
    policy.check_address("anything", "10.20.3.4")
    policy.check_url("https://example.com:8443/x")
    with pytest.raises(CallbackRefused):
        policy.check_address("evil.example", "10.21.0.1")


async def test_a_hostname_resolving_to_loopback_is_refused_at_submit_time() -> None:
    with pytest.raises(CallbackRefused, match="localhost .*loopback"):
        await CallbackPolicy.build([]).check_resolved("http://localhost/hook")
    with pytest.raises(CallbackRefused, match="loopback"):  # 2130706433 is 127.0.0.1 to getaddrinfo
        await CallbackPolicy.build([]).check_resolved("http://2130706433/hook")
    await CallbackPolicy.build([]).check_resolved("http://no-such-host.invalid/hook")  # unknown now: the sender checks


class _Resolver:
    """Answers a scripted list of addresses per call: a DNS rebinding attacker."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:  # type: ignore[type-arg]
        address = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


async def test_the_sender_connects_to_the_address_it_checked_and_refuses_a_rebound_one() -> None:
    receiver = CallbackReceiver()
    await receiver.start()
    policy = CallbackPolicy.build(["127.0.0.0/8"])  # loopback allowed by range, not by name
    try:
        # The checked answer (127.0.0.1) is the one connected to; a second lookup would get 10.0.0.1.
        rebinding = _Resolver("127.0.0.1", "10.0.0.1")
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, rebinding), use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector) as http, http.post(
            f"http://rebind.test:{receiver.port}/hook", data=b"{}"
        ) as response:
            assert response.status == 200
        assert rebinding.calls == 1 and len(receiver.for_path("hook")) == 1

        # Resolving to a refused address fails before any connection is attempted.
        private = _Resolver("10.0.0.1")
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, private), use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector) as http:
            with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
                await http.post(f"http://rebind.test:{receiver.port}/other", data=b"{}")
        assert isinstance(caught.value.os_error, CallbackRefused)
        assert receiver.for_path("other") == []
    finally:
        await receiver.stop()


# --- keys, scopes, durations --------------------------------------------------------------------


def test_keys_parse_and_match_only_their_own_hash() -> None:
    key = generate_key()
    key_id, secret = parse_key(key.token)  # type: ignore[misc]
    assert key_id == key.key_id and secret_matches(secret, key.secret_sha256)
    assert not secret_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), key.secret_sha256)
    assert parse_key("tmk_short") is None and parse_key(key.token + "x") is None
    assert parse_scopes("tasks:read, admin") == {Scope.TASKS_READ, Scope.ADMIN}
    with pytest.raises(ValueError, match="unknown scope"):
        parse_scopes("tasks:read,root")
    assert parse_duration("90d").days == 90 and parse_duration("12h").seconds == 12 * 3600
    with pytest.raises(ValueError):
        parse_duration("soon")


# --- what production refuses --------------------------------------------------------------------


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_production_refuses_insecure_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, ENVIRONMENT="production", AUTH_REQUIRED="false",
                         AMQP_URL="amqp://guest:guest@rabbit/", METRICS_TOKEN="short",
                         CALLBACK_SECRET="weak whsec_" + base64.b64encode(b"x" * 8).decode(),
                         CALLBACK_ALLOWED_HOSTS="0.0.0.0/0")
    refused = " | ".join(problems(settings, "api")[0] + problems(settings, "dispatcher")[0])
    for expected in ("AUTH_REQUIRED=false", "guest", "METRICS_TOKEN", "CALLBACK_SECRET #1", "CALLBACK_SECRET #2",
                     "every address"):
        assert expected in refused


def test_production_defaults_need_keys_signing_and_accept_a_good_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, ENVIRONMENT="production", AMQP_URL="amqps://api:s3cret@rabbit/taskmgr")
    assert settings.auth_required is True
    assert settings.callbacks.effective_allowed_hosts(settings.service.environment) == []
    refused, _ = problems(settings, "dispatcher")
    assert refused == ["CALLBACK_SECRET is not set: callbacks would be unsigned (set one or more whsec_ secrets)"]
    monkeypatch.setenv("CALLBACK_SECRET", "whsec_" + base64.b64encode(b"k" * 32).decode())
    assert problems(Settings(), "dispatcher")[0] == [] and problems(Settings(), "api")[0] == []


def test_development_without_auth_refuses_to_listen_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(_settings(monkeypatch), "api") == ([], [])
    refused, _ = problems(_settings(monkeypatch, BIND_HOST="0.0.0.0"), "api")
    assert "loopback only" in refused[0]
    assert problems(_settings(monkeypatch, BIND_HOST="0.0.0.0", AUTH_REQUIRED="true"), "api")[0] == []


# --- uploads -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "expected"), [
    (b"%PDF-1.7\n...", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "image/png"),
    ("知识库任务管理。".encode(), "text/plain"),
    ("知识库".encode("gb18030"), "text/plain"),
    (b"\x00\x01\x02\xff\xfe", "application/octet-stream"),
])
def test_the_content_type_comes_from_the_bytes(head: bytes, expected: str) -> None:
    assert sniff(head) == expected


@pytest.mark.parametrize(("name", "clean"), [
    ("../../etc/passwd", "passwd"), ("C:\\Users\\x\\doc.pdf", "doc.pdf"), ("a\x00b\nc.txt", "a_b_c.txt"),
    ("..", None), ("", None), ("报告.docx", "报告.docx"),
])
def test_a_client_file_name_is_metadata_never_a_path(name: str, clean: str | None) -> None:
    assert clean_filename(name) == clean


# --- signatures ------------------------------------------------------------------------------------


def test_our_signatures_verify_with_the_standard_webhooks_reference_library() -> None:
    from standardwebhooks.webhooks import Webhook

    old = "whsec_" + base64.b64encode(b"o" * 32).decode()
    new = "whsec_" + base64.b64encode(b"n" * 32).decode()
    body = b'{"task_id":"t1","status":"completed"}'
    headers = sign([old, new], "msg_t1_1", body)
    for secret in (old, new):  # rotation: either secret verifies while both sign
        Webhook(secret).verify(body, headers)
        verify([secret], headers, body)
    # And the reference library's signature verifies with ours.
    reference = Webhook(new).sign("msg_x", datetime.now(UTC), body.decode())
    verify([new], {"webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())),
                   "webhook-signature": reference}, body)
    with pytest.raises(WebhookVerificationError):
        verify(["whsec_" + base64.b64encode(b"z" * 32).decode()], headers, body)


@pytest.mark.parametrize("skew", [-3600, 3600])
def test_a_stale_or_future_timestamp_is_rejected(skew: int) -> None:
    headers = sign(["s" * 32], "msg_1", b"{}", timestamp=int(time.time()) + skew)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(["s" * 32], headers, b"{}")
