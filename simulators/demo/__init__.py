"""`make demo` (`python -m simulators.demo`): the product working on a simulated plant.

Mosquitto, the daemon and Prometheus start on free loopback ports; the plant simulator
publishes six machines at many times real time (event time in the payloads), with a fault
schedule after the daemon's learning period. A live view (or, without a terminal, log
lines) follows each machine; at the end an episode report says which faults were alerted
on, how late, and which alerts were false. See `simulators/DEMO-section.md`.
"""
