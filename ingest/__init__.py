"""symbiont ingest: MQTT readings → PostgreSQL, acknowledged only after commit."""
