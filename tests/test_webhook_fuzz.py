"""Generated bodies and headers at every endpoint of the live receiver (a fixed budget of
requests): never a 5xx except the documented 503, the receiver stays up, and nothing that is
not authenticated starts a workflow (Temporal is asked)."""

from __future__ import annotations

import asyncio
import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starter.alerts import SOURCES
from tests.receiver import receiver, runs_of, signed_headers, started  # noqa: F401 - receiver is a fixture
from tests.unit.test_alerts import golden

EXAMPLES = 500  # the fixed budget: a few seconds, under 30 s on a loaded 2-core machine
GOLDENS = {"alertmanager": "alertmanager_firing.json", "grafana": "grafana_firing.json",
           "sentry": "sentry_metric_alert.json", "datadog": "datadog.json", "pagerduty": "pagerduty_triggered.json",
           "generic": None}
ENDPOINTS = [f"/alerts/{s}" for s in SOURCES]
PATHS = ENDPOINTS + ["/healthz", "/metrics", "/flags/shop/PROCESSING", "/alerts/nagios", "/"]
HEADER_NAMES = ["Content-Type", "Authorization", "Sentry-Hook-Signature", "Sentry-Hook-Timestamp",
                "Sentry-Hook-Resource", "Request-ID", "X-PagerDuty-Signature", "X-Webhook-Secret", "Content-Encoding"]

# printable ASCII without surrounding blanks: what HTTP/1.1 lets a client send (h11 refuses the rest)
printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
header_values = st.one_of(printable, st.sampled_from([
    "application/json", "application/json; charset=utf-8", "text/plain", "Bearer am-token-wrong", "Bearer",
    "Basic Z3JhZmFuYTp3cm9uZw==", "Basic !!!", "v1=00", "v1=", "1e999", "-1", "9" * 30, "metric_alert", "gzip"]))
# any text, lone surrogates included (JSON escapes them as \udxxx)
hostile_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=20)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    hostile_text, st.sampled_from(["NaN", "Infinity", "1e999", "\ud800", "50%", "shop"]))
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(hostile_text, inner, max_size=4)),
                         max_leaves=25)


def paths_in(document, prefix=()):
    if isinstance(document, dict):
        for key, value in document.items():
            yield prefix + (key,)
            yield from paths_in(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield prefix + (index,)
            yield from paths_in(value, prefix + (index,))


@st.composite
def mutated_golden(draw):
    """A vendor's documented payload with one field replaced by something hostile."""
    document = json.loads(golden(GOLDENS[draw(st.sampled_from([s for s in SOURCES if GOLDENS[s]]))]))
    path = draw(st.sampled_from(list(paths_in(document))))
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = draw(documents)
    return json.dumps(document).encode()


bodies = st.one_of(
    st.binary(max_size=200),
    documents.map(lambda d: json.dumps(d).encode()),
    mutated_golden(),
    st.integers(900, 4000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.sampled_from([golden(name) for name in GOLDENS.values() if name]),  # genuine, but never authenticated
)


@st.composite
def requests(draw):
    path = draw(st.sampled_from(ENDPOINTS * 4 + PATHS))  # mostly the alert endpoints, mostly POST
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE"]))
    body = draw(bodies)
    headers = draw(st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=5))
    authenticated = path in ENDPOINTS and draw(st.booleans())
    if authenticated:
        # through the whole pipeline, but routed nowhere: only alerts of service=shop map to a service
        body = body.replace(b"shop", b"shoq")
        headers = {**headers, **signed_headers(path.rsplit("/", 1)[1], body)}
    return method, path, headers, body, authenticated


async def test_generated_requests_never_5xx_and_unauthenticated_start_nothing(receiver, client):
    hook = receiver()
    answered: dict[int, int] = {}
    async with hook.http() as http:
        base = str(http.base_url)

        def fuzz() -> None:  # in a thread: the receiver keeps serving on the test's event loop
            with httpx.Client(base_url=base, timeout=30) as sync:
                @settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(requests())
                def one(request) -> None:
                    method, path, headers, body, authenticated = request
                    answer = sync.request(method, path, headers=headers, content=body)
                    answered[answer.status_code] = answered.get(answer.status_code, 0) + 1
                    assert answer.status_code < 500 or (
                        answer.status_code == 503 and answer.json()["reason"].endswith("retry")), (
                        request, answer.status_code, answer.text)
                    if not authenticated and path in ENDPOINTS and method == "POST":
                        assert answer.status_code in (401, 413), (request, answer.status_code, answer.text)

                one()

        await asyncio.to_thread(fuzz)
        assert sum(answered.values()) >= EXAMPLES and 202 in answered, answered
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        metrics = (await http.get("/metrics")).text
        assert 'reason="internal"' not in metrics
        assert not await started(client, hook.service) and await runs_of(client, hook.service) == 0
        # still up and still working: a genuine, authenticated alert is acted on
        raw = golden("alertmanager_firing.json").replace(b"10:00:00.000Z", b"12:00:00.000Z")  # not one fuzzed
        answer = await http.post("/alerts/alertmanager", content=raw, headers=signed_headers("alertmanager", raw))
        assert answer.status_code == 202 and answer.json()["alerts"][0]["started"], answer.text
    await client.get_workflow_handle(hook.workflow_id).terminate("test over")
