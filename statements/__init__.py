"""symbiont statements: each partner's monthly billing — computation, issuing, revisions and
rendering (JSON, CSV, PDF)."""
