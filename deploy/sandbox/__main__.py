"""`python -m deploy.sandbox --config sandbox.json --host 127.0.0.1 --port 8090`."""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

from aiohttp import web

from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig

logger = logging.getLogger("deploy.sandbox")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.sandbox", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the sandbox JSON config")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    config = SandboxConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
    if config.url is None:
        config.url = f"http://{args.host}:{args.port}"
    web.run_app(
        init_app(config),
        host=args.host,
        port=args.port,
        access_log=None,
        print=functools.partial(logger.info, "%s"),
    )


if __name__ == "__main__":
    main()
