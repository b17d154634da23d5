"""Kafka client helpers shared by `relstream ingest` (streams) and `relstream score` (scorer).

A layer of its own between the contract (``schemas``) and the services: it imports neither
``streams`` nor ``scorer``, so both can use it without depending on each other.

- :mod:`kafka_io.polling`: take what a consumer has without librdkafka's fill-the-batch wait;
- :mod:`kafka_io.retry`: capped exponential backoff for the store and the dead-letter topic;
- :mod:`kafka_io.bounded`: blocking librdkafka calls with a hard deadline, and the errors that
  mean "these clients cannot go on: rebuild them".

Dead-letter entries themselves (reasons, encoding, parsing) are part of the contract:
``schemas.dead_letter``.
"""
