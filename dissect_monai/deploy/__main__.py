"""``python -m dissect_monai.deploy serve --config FILE``: run the DICOM inference node until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from dissect_monai.deploy.config import load_node_config
from dissect_monai.deploy.node import InferenceNode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dissect_monai.deploy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the DICOM inference node")
    serve.add_argument("--config", required=True, help="node YAML config (see configs/deploy/node.yaml)")
    serve.add_argument("--port", type=int, default=None, help="override the DICOM port (0 = any free port)")
    serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("pynetdicom", "highdicom"):  # their INFO/DEBUG lines echo UIDs and dataset elements
        logging.getLogger(chatty).setLevel(logging.WARNING)
    logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)  # its errors name instance UIDs; node logs why
    try:
        config = load_node_config(args.config, overrides=None if args.port is None else {"port": args.port})
        node = InferenceNode(config)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    node.start()
    stopped.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
