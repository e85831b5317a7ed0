"""symbiont notify: the transactional outbox and every channel it delivers through — webhooks,
Alertmanager, MQTT and mail."""
