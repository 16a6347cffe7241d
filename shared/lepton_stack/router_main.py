"""`python -m lepton_stack.router_main`: run the development router over HTTP."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from lepton_runtime.events.auth import EventAuthenticator, FileKeys
from lepton_runtime.logs import configure
from lepton_stack.jobs import JobRunner, job_templates
from lepton_stack.oidc import JWKS_FILE, LocalIssuer, TokenCache
from lepton_stack.router import Router
from lepton_stack.triggers import read_manifests, triggers_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The development router (a Broker stand-in).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--manifests",
        type=Path,
        action="append",
        required=True,
        help="a kustomize target (built as `kubectl kustomize` would), or folders and files "
        "holding Broker, Trigger and JobSink objects",
    )
    parser.add_argument("--broker", default=None)
    parser.add_argument(
        "--subscriber",
        action="append",
        default=[],
        help="NAME=URL: where a Trigger's subscriber ref is served locally",
    )
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--jobs-dir", type=Path, help="where JobSink Jobs keep their event files")
    parser.add_argument("--logs-dir", type=Path, help="where JobSink Jobs write their logs")
    parser.add_argument("--job-env", type=Path, help="JSON file: the environment of Job pods")
    parser.add_argument("--issuer-dir", type=Path, help="sign deliveries with this local issuer")
    parser.add_argument(
        "--ingress-audience",
        help="accept only events carrying the issuer's token for this audience (the Broker's)",
    )
    args = parser.parse_args(argv)
    configure("INFO")
    subscribers = dict(item.split("=", 1) for item in args.subscriber)
    build = read_manifests(args.manifests)
    jobs = None
    templates = job_templates(build)
    if templates:
        jobs = JobRunner(
            templates,
            args.jobs_dir or Path("jobs"),
            args.logs_dir or Path("logs"),
            json.loads(args.job_env.read_text()) if args.job_env else {},
            sink=f"http://{args.host}:{args.port}/",
        )
    sign, jwks, ingress = None, None, None
    if args.issuer_dir:
        issuer = LocalIssuer.load(args.issuer_dir)
        sign, jwks = TokenCache(issuer), issuer.jwks()
        if args.ingress_audience:
            keys = FileKeys(args.issuer_dir / JWKS_FILE)
            ingress = EventAuthenticator(issuer.issuer, args.ingress_audience, keys)
    router = Router(
        triggers_of(build, args.broker),
        subscribers,
        jobs=jobs,
        sign=sign,
        jwks=jwks,
        ingress_auth=ingress,
    )
    router.check_addresses()

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
