"""The tools people run around symbiont: the ``symbiont`` command line, the demo, the simulator
and the broker configuration; nothing in symbiont imports them."""
