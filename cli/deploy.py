"""`vlft deploy`: serve a model (and adapters) behind an OpenAI-compatible API until interrupted."""

from __future__ import annotations

from vlft.arguments import DeployArguments
from vlft.cli.parsing import build_parser, parse_args


def run(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        build_parser(DeployArguments, "vlft deploy").print_help()
        return 0
    args = parse_args(DeployArguments, argv, "vlft deploy")
    from vlft.infer.engine import InferEngine
    from vlft.infer.server import make_server

    engine = InferEngine(args=args)
    server = make_server(engine, args.host, args.port, args.allow_local_media)
    host, port = server.server_address[:2]
    print(f"serving {engine.model_name} at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
