"""relstream: real-time relational scoring (Kafka -> Redis windows -> Triton)."""

__version__ = "0.1.0"
