"""The local stack: real Kafka (KRaft), Redis and Triton as supervised processes on loopback."""
from .components import ComponentSettings, triton_environment
from .local import ALL_COMPONENTS, PORT_KEYS, LocalStack
from .ports import PortInUseError, free_port
from .process import StackError
from .smoke import SMOKE_MODEL_NAME, install_smoke_model

__all__ = ["ALL_COMPONENTS", "PORT_KEYS", "ComponentSettings", "LocalStack", "PortInUseError",
           "SMOKE_MODEL_NAME", "StackError", "free_port", "install_smoke_model",
           "triton_environment"]
