"""Offline model building for the ConvEntion plugin: simulated survey, training, evaluation, export.

``train`` may import :mod:`broker_plugin` (the stamp resampler, records, alert serialisation); the
service never imports ``train``. Run it as ``python -m broker_plugin_train <stage> --config FILE``.
"""
