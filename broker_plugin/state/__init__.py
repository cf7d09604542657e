"""Per-object state: the frames of every tracked object, and a cache of model tokens.

One interface (:class:`~broker_plugin.state.base.StateStore`), two implementations that pass one
contract test suite: SQLite (embedded default, one process) and PostgreSQL (several plugin instances in
one consumer group share it: Rubin's stream is not keyed by object, so an object's alerts reach any
instance).
"""
