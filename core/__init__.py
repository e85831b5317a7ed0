"""symbiont's shared domain: settings, the network model, units, time windows, database."""
