"""Model inference: the nets, exact incremental inference, the artifact format and the predictor.

Importing the package registers every net (``nets`` and ``baselines``) with :func:`create_net`.
"""

from broker_plugin.inference.baselines import CnnRnn, CnnRnnConfig
from broker_plugin.inference.nets import ConvEntion, ConvEntionConfig, create_net, list_nets, register_net

__all__ = [
    "CnnRnn",
    "CnnRnnConfig",
    "ConvEntion",
    "ConvEntionConfig",
    "create_net",
    "list_nets",
    "register_net",
]
