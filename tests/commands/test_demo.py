import io

from broker_plugin.commands.demo import generate_messages, run_demo
from broker_plugin.config import Settings


def test_demo_decodes_every_generated_alert_and_types_every_broken_one(settings: Settings) -> None:
    out = io.StringIO()
    assert run_demo(settings, out) == 0
    text = out.getvalue()
    assert "ok                   300" in text
    assert "point source on the frame centre: 300 of 300" in text
    for reason in ("wrong_magic_byte", "unknown_schema", "truncated"):
        assert reason in text


def test_generated_messages_are_seeded() -> None:
    assert generate_messages(3, seed=5) == generate_messages(3, seed=5)
