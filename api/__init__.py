"""symbiont HTTP API and dashboard (being built)."""
