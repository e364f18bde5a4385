"""tunesmith deploy on a port another server holds: refused at once, naming the port, before any model loads (it
used to load the weights, print "serving at ...", and only then fail to bind)."""

import socket

import pytest

from tunesmith.config import DeployConfig
from tunesmith.errors import ConfigError
from tunesmith.serve import app


def test_a_port_in_use_is_refused_before_the_weights_load(monkeypatch):
    loads = []
    monkeypatch.setattr("tunesmith.infer.load_engine", lambda *a, **k: loads.append(a))
    with socket.socket() as other:  # another server on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            app.run(DeployConfig(port=port))
    assert loads == []


def test_the_socket_is_bound_before_serving_and_closed_after(monkeypatch):
    seen = []
    monkeypatch.setattr(app, "serve", lambda cfg, sock: seen.append((sock.getsockname()[1], sock.fileno())))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.run(DeployConfig(port=port))
    assert seen[0][0] == port and seen[0][1] >= 0
    with socket.socket() as again:  # released once run() returned
        again.bind(("127.0.0.1", port))
