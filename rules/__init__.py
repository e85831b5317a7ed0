"""symbiont rules: window quantities, reconciliation of exchanges and networks, and the alert
rules with their lifecycle and incidents; the ``symbiont rules`` service."""
