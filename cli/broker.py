"""Mosquitto as symbiont needs it: persistence on, and queues that never drop QoS 1 messages.

Mosquitto's defaults drop QoS 1 messages for a slow or offline subscriber beyond 1000 queued
messages while still acknowledging the publisher; every configuration symbiont ships or starts
lifts those limits (``max_queued_messages``) so a backlog waits in the broker instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def broker_settings(*, queued_messages: int = 0, queued_bytes: int = 0) -> list[str]:
    """Settings for any broker symbiont's readings pass through (0 = unlimited)."""
    return [
        "persistence true",
        "autosave_interval 10",
        f"max_queued_messages {queued_messages}",
        f"max_queued_bytes {queued_bytes}",
        # Unacknowledged messages towards an MQTT 3.1.1 subscriber (MQTT 5 subscribers set
        # their own Receive Maximum): ingest over 3.1.1 holds at most this many, as over
        # MQTT 5 its SYMBIONT_INGEST_QUEUE_MESSAGES (default 10000).
        "max_inflight_messages 10000",
        "message_size_limit 0",
    ]


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalMosquitto:
    """A Mosquitto of our own on 127.0.0.1, its state kept in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError(
                "no MQTT broker configured and mosquitto is not installed: "
                "`apt-get install mosquitto`, or set SYMBIONT_MQTT_URL"
            )
        self.binary = binary
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence_location {self.directory}/",
            f"log_dest file {self.directory}/mosquitto.log",
            *broker_settings(),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto` and cannot write here
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited; see {self.directory}/mosquitto.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} in {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
