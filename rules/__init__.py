"""symbiont rules: window quantities, reconciliation, alerts and statements (being built)."""
