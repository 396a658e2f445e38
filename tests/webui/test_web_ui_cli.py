"""`vlft web-ui`'s flags (ms-swift's names too), and its message when Gradio is not installed."""

from __future__ import annotations

import sys

import pytest

from vlft.cli.main import main
from vlft.cli.parsing import parse_args
from vlft.webui.arguments import WebUiArguments


def test_ms_swift_flag_names_set_host_and_port():
    args = parse_args(WebUiArguments, ["--server_name", "0.0.0.0", "--server_port", "7000", "--share", "false",
                                       "--lang", "en"], "vlft web-ui")
    assert (args.host, args.port, args.share, args.lang) == ("0.0.0.0", 7000, False, "en")
    assert (parse_args(WebUiArguments, ["--host", "::1", "--port", "0"], "vlft web-ui").host) == "::1"


def test_bad_flags_are_reported_together(capsys):
    assert main(["web-ui", "--lang", "zh", "--port", "70000", "--sharee", "true"]) == 2
    err = capsys.readouterr().err
    assert "--lang zh: the web UI is written in en only" in err
    assert "--port must be in 0..65535" in err
    assert "did you mean --share?" in err


def test_without_gradio_it_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["web-ui"]) == 2
    assert 'pip install "vlft[webui]"' in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_the_flags(flag, capsys):
    assert main(["web-ui", flag]) == 0
    out = capsys.readouterr().out
    assert "--server_port" in out and "--lang" in out
