"""Simulators that feed aemon over MQTT: a plant with injected faults, CSV replay, the demo."""
