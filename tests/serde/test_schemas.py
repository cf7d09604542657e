"""Schema-registry fallback against a real HTTP server speaking the registry's API."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
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
