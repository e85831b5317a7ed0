"""symbiont core: what every other package needs — settings, the network model, units, time
windows, database access."""
