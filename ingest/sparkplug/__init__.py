"""Sparkplug B (Eclipse Sparkplug 3.0) in: the payload schema and the edge-node sessions."""
