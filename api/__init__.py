"""symbiont api: the HTTP API (readings, windows, alerts, incidents, statements, live streams)
and the dashboard, over everything the other packages store."""
