"""Schema-registry fallback against a real HTTP server speaking the registry's API."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import ClassVar

import pytest

from broker_plugin import exceptions as exc
from broker_plugin.config import SchemaRegistrySettings
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.schemas import RubinSchemaStore, SchemaRegistryClient, load_bundled_schema
from tests.factories import rubin_message

FUTURE_ID = 1299  # a "12.99" schema no bundled version has


class Registry(BaseHTTPRequestHandler):
    calls: ClassVar[list[str]] = []
    schema_text = ""

    def do_GET(self) -> None:
        Registry.calls.append(self.path)
        assert self.headers["Authorization"].startswith("Basic ")
        if self.path == f"/schemas/ids/{FUTURE_ID}":
            body = json.dumps({"schema": Registry.schema_text}).encode()
            self.send_response(200)
        else:
            body = b'{"error_code": 40403, "message": "Schema not found"}'
            self.send_response(404)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    # The registry serves the 11.1 schema, fully resolved, under a new id: what a newer release looks like.
    from fastavro.schema import to_parsing_canonical_form

    Registry.schema_text = to_parsing_canonical_form(load_bundled_schema("11.1").parsed)
    server = HTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_unknown_id_is_fetched_once_and_cached(registry_url: str) -> None:
    settings = SchemaRegistrySettings(url=registry_url, username="u", password="p")
    decoder = AlertDecoder(RubinSchemaStore(SchemaRegistryClient(settings)))
    raw = bytearray(rubin_message("11.1", diaSourceId=77))
    raw[1:5] = FUTURE_ID.to_bytes(4, "big")
    Registry.calls.clear()
    for _ in range(3):
        (alert,) = decoder.decode_message(bytes(raw))
        assert alert.diaSourceId == 77 and alert.schemaVersion == f"registry:{FUTURE_ID}"
    assert Registry.calls == [f"/schemas/ids/{FUTURE_ID}"]


def test_id_unknown_to_registry_is_typed_and_negatively_cached(registry_url: str) -> None:
    settings = SchemaRegistrySettings(url=registry_url, username="u", password="p")
    decoder = AlertDecoder(RubinSchemaStore(SchemaRegistryClient(settings)))
    Registry.calls.clear()
    for _ in range(3):
        with pytest.raises(exc.UnknownSchemaError):
            decoder.decode_message(b"\x00" + (4321).to_bytes(4, "big") + b"\x02")
    assert len(Registry.calls) == 1


def test_unreachable_registry_is_typed() -> None:
    settings = SchemaRegistrySettings(url="http://127.0.0.1:9", timeout_s=0.5)
    decoder = AlertDecoder(RubinSchemaStore(SchemaRegistryClient(settings)))
    with pytest.raises(exc.SchemaRegistryError):
        decoder.decode_message(b"\x00" + (4321).to_bytes(4, "big") + b"\x02")


# --- a registry that is slow, down or hostile cannot stall the consumer ------------------------------


class Scripted(BaseHTTPRequestHandler):
    """A registry whose every answer is ``server.answer`` (status, body) after ``server.delay`` seconds."""

    def do_GET(self) -> None:
        server = self.server
        server.calls.append(self.path)  # type: ignore[attr-defined]
        time.sleep(server.delay)  # type: ignore[attr-defined]
        status, body = server.answer  # type: ignore[attr-defined]
        if status == "drip":  # headers one byte at a time, each well within a socket timeout
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}":
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
            return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.daemon_threads = True
    server.calls, server.delay, server.answer = [], 0.0, (404, b'{"error_code": 40403}')  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def registry_store(server: ThreadingHTTPServer, **settings: object) -> RubinSchemaStore:
    url = f"http://127.0.0.1:{server.server_port}"
    return RubinSchemaStore(SchemaRegistryClient(SchemaRegistrySettings(url=url, **settings)))


def message_with_id(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + b"\x02"


def timed_outcomes(decoder: AlertDecoder, ids: range) -> tuple[float, list[str]]:
    start = time.perf_counter()
    outcomes = []
    for schema_id in ids:
        try:
            decoder.decode_message(message_with_id(schema_id))
            outcomes.append("decoded")
        except exc.AlertDecodeError as error:
            outcomes.append(error.reason)
    return time.perf_counter() - start, outcomes


def test_registry_answering_404_after_4_s_cannot_stall_20_lookups(scripted: ThreadingHTTPServer) -> None:
    """Defaults: the first lookup is cut at the 3 s budget, the registry backs off, the rest fail fast."""
    scripted.delay = 4.0  # type: ignore[attr-defined]
    seconds, outcomes = timed_outcomes(AlertDecoder(registry_store(scripted)), range(5000, 5020))
    assert seconds < 3.6  # was 86 s: 20 x (4 s + the answer), nothing cached
    assert outcomes == ["schema_registry_unavailable"] * 20
    assert len(scripted.calls) == 1  # type: ignore[attr-defined]


def test_lookup_budget_bounds_many_slow_but_successful_answers(scripted: ThreadingHTTPServer) -> None:
    scripted.delay = 0.3  # type: ignore[attr-defined]
    decoder = AlertDecoder(registry_store(scripted, lookup_budget_s=1.0, lookup_window_s=60.0))
    seconds, outcomes = timed_outcomes(decoder, range(6000, 6020))
    assert seconds < 1.6
    calls = len(scripted.calls)  # type: ignore[attr-defined]
    assert 3 <= calls <= 4  # 0.3 s each until the 1 s budget is gone (the last one cut short)
    assert outcomes[: calls - 1] == ["unknown_schema"] * (calls - 1)
    assert set(outcomes[calls:]) == {"schema_registry_unavailable"}


def test_unknown_id_is_cached_negatively_until_it_expires(scripted: ThreadingHTTPServer) -> None:
    decoder = AlertDecoder(registry_store(scripted, negative_cache_s=0.3))
    _, outcomes = timed_outcomes(decoder, range(7000, 7001))
    _, again = timed_outcomes(decoder, range(7000, 7001))
    assert outcomes == again == ["unknown_schema"] and len(scripted.calls) == 1  # type: ignore[attr-defined]
    time.sleep(0.35)
    timed_outcomes(decoder, range(7000, 7001))
    assert len(scripted.calls) == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "answer",
    [
        (503, b"busy"),
        (500, b""),
        (401, b"who"),
        (200, b"<html>not json</html>"),
        (200, b'{"id": 1}'),
        ("drip", b""),
    ],
)
def test_registry_failure_backs_off_then_asks_again(answer: tuple, scripted: ThreadingHTTPServer) -> None:
    scripted.answer = answer  # type: ignore[attr-defined]
    decoder = AlertDecoder(registry_store(scripted, backoff_s=0.5, timeout_s=1.0))
    seconds, outcomes = timed_outcomes(decoder, range(8000, 8010))
    assert outcomes == ["schema_registry_unavailable"] * 10
    assert len(scripted.calls) == 1 and seconds < 1.5  # type: ignore[attr-defined]
    time.sleep(0.55)
    timed_outcomes(decoder, range(8100, 8101))
    assert len(scripted.calls) == 2  # type: ignore[attr-defined]


def test_oversized_registry_answer_is_refused(scripted: ThreadingHTTPServer) -> None:
    scripted.answer = (200, b'{"schema": "' + b" " * 20_000 + b'"}')  # type: ignore[attr-defined]
    decoder = AlertDecoder(registry_store(scripted, max_response_bytes=10_000))
    with pytest.raises(exc.SchemaRegistryError, match="exceeds 10000 bytes"):
        decoder.decode_message(message_with_id(9000))


@pytest.mark.parametrize(
    ("schema", "error"),
    [
        (
            {"type": "record", "name": "n", "fields": [{"name": "next", "type": ["null", "n"]}]},
            exc.ResourceLimitError,
        ),
        ({"type": "record", "name": "e", "fields": []}, exc.ResourceLimitError),
        ({"type": "array", "items": "long"}, exc.UnsupportedAlertError),
        ({"type": "nonsense"}, exc.MalformedAvroError),
    ],
)
def test_registry_schema_that_makes_a_bomb_is_refused_and_cached(
    schema: dict, error: type, scripted: ThreadingHTTPServer
) -> None:
    scripted.answer = (200, json.dumps({"schema": json.dumps(schema)}).encode())  # type: ignore[attr-defined]
    decoder = AlertDecoder(registry_store(scripted))
    for _ in range(3):
        with pytest.raises(error):
            decoder.decode_message(message_with_id(9100))
    assert len(scripted.calls) == 1  # type: ignore[attr-defined]


def test_refused_connection_fails_fast_and_backs_off() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = SchemaRegistrySettings(url=f"http://127.0.0.1:{port}")
    client = SchemaRegistryClient(settings)
    decoder = AlertDecoder(RubinSchemaStore(client))
    seconds, outcomes = timed_outcomes(decoder, range(9200, 9220))
    assert outcomes == ["schema_registry_unavailable"] * 20 and seconds < 1.0
