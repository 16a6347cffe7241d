"""`python -m lepton_stack.router_main`: run the development router over HTTP."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from lepton_runtime.logs import configure
from lepton_stack.router import Router
from lepton_stack.triggers import load_triggers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The development router (a Broker stand-in).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--manifests",
        type=Path,
        action="append",
        required=True,
        help="knative/ folder or files holding Broker and Trigger objects",
    )
    parser.add_argument("--broker", default=None)
    parser.add_argument(
        "--subscriber",
        action="append",
        default=[],
        help="NAME=URL: where a Trigger's subscriber ref is served locally",
    )
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args(argv)
    configure("INFO")
    subscribers = dict(item.split("=", 1) for item in args.subscriber)
    router = Router(load_triggers(args.manifests, args.broker), subscribers)

    import waitress

    server = waitress.create_server(
        router, host=args.host, port=args.port, threads=args.threads, ident="lepton-router"
    )

    def stop(*_: object) -> None:
        router.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.run()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
