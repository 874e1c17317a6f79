"""The wire: the MQTT client that reads the plant and writes alerts, and the HTTP server."""
