"""`vlft deploy`: serve a model (and adapters) behind an OpenAI-compatible API until interrupted."""

from __future__ import annotations

from vlft.cli.parsing import build_parser, parse_args


def run(argv: list[str]) -> int:
    from vlft.arguments import DeployArguments

    if "-h" in argv or "--help" in argv:
        build_parser(DeployArguments, "vlft deploy").print_help()
        return 0
    args = parse_args(DeployArguments, argv, "vlft deploy")
    import vlft.infer.engine
    import vlft.infer.server
    from vlft.infer.server_media import check_media_root

    from vlft.cli.infer import write_merged

    limits = vlft.infer.server.ServerLimits.from_args(args)
    check_media_root(limits.request.media.root)  # before the model loads
    write_merged(args)
    engine = vlft.infer.engine.InferEngine(args=args)
    if args.served_model_name:
        engine.model_name = args.served_model_name  # the base model's id in /v1/models and in answers
    server = vlft.infer.server.make_server(engine, args.host, args.port, limits, api_key=args.api_key)
    host, port = server.server_address[:2]
    root = limits.request.media.root
    adapters = getattr(engine, "adapter_names", [])
    details = ["API key required" if args.api_key else "no API key",  # never the key itself
               f"adapters {', '.join(adapters)}" if adapters else "no named adapters",
               f"local media from {root.resolve()}" if root else "no local media",
               "remote media from public addresses" if args.allow_remote_media else "no remote media",
               f"batches of up to {args.max_batch_size}"]
    print(f"serving {engine.model_name} at http://{host}:{port}/v1 ({', '.join(details)}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
