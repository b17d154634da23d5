"""`make demo` (:mod:`relstream.demo.stages`, :mod:`~relstream.demo.bringup`) and the tools the end-to-end
tests share with it: :mod:`~relstream.demo.tools` (services, commands, the model in Triton),
:mod:`~relstream.demo.events` (Kafka), :mod:`~relstream.demo.reference` (the offline side of parity),
:mod:`~relstream.demo.report`."""
