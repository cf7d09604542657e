"""Per-object state: the frames of every tracked object, and a cache of model tokens.

One interface (:class:`~broker_plugin.state.base.StateStore`), two implementations that pass one
contract test suite: SQLite (embedded default, one process) and PostgreSQL (several plugin instances in
one consumer group share it: Rubin's stream is not keyed by object, so an object's alerts reach any
instance).
"""

from broker_plugin.state.base import AddResult, StateStore, object_key
from broker_plugin.state.factory import open_state_store
from broker_plugin.state.sqlite import SqliteStateStore

# PostgresStateStore is not re-exported: importing it needs psycopg (broker_plugin.state.postgres).
__all__ = ["AddResult", "SqliteStateStore", "StateStore", "object_key", "open_state_store"]
