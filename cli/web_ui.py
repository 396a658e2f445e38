"""`vlft web-ui`: the Gradio web UI (ms-swift's `swift web-ui`): chat with a model, start and watch `vlft sft`."""

from __future__ import annotations

import importlib

from vlft.cli.parsing import build_parser, parse_args
from vlft.errors import VlftError
from vlft.webui.arguments import WebUiArguments

INSTALL_HINT = 'the web UI needs Gradio: pip install "vlft[webui]"'


def run(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        build_parser(WebUiArguments, "vlft web-ui").print_help()
        return 0
    args = parse_args(WebUiArguments, argv, "vlft web-ui")
    try:
        importlib.import_module("gradio")
    except ImportError:
        raise VlftError(INSTALL_HINT) from None
    from vlft.webui.app import build_app, launch

    try:
        launch(build_app(args.model), args)
    except KeyboardInterrupt:
        pass
    return 0
