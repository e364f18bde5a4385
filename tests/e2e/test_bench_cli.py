"""`tunesmith bench serve`'s refusals, before any load: nothing to load, a started server that needs an option, an
endpoint that is not there (test_deploy_cli.py loads a real `tunesmith deploy` with it)."""

import socket

import pytest
from e2e_cli import run_main

from tunesmith.errors import TunesmithError
from tunesmith.serve.loadtest import endpoint_model


def test_nothing_to_load_and_a_speculating_server_without_its_option_are_refused():
    nothing = run_main("bench", "serve", check=False)
    assert nothing.returncode == 2 and "url: name an endpoint to load (--url" in nothing.stderr
    spec = run_main("bench", "serve", "--servers", "tunesmith-spec", check=False)
    assert spec.returncode == 2 and "speculative: tunesmith-spec" in spec.stderr
    unknown = run_main("bench", "serve", "--servers", "tgi", check=False)
    assert unknown.returncode == 2 and "servers" in unknown.stderr


def test_an_endpoint_that_is_not_there_is_named_at_once():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TunesmithError, match=rf"url: http://127.0.0.1:{port}: cannot connect .*is the server running"):
        endpoint_model(f"http://127.0.0.1:{port}", None)
