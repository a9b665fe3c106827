"""Container health from a real prediction, not ``/ping`` (TorchServe's ping stays Healthy while a
model answers nothing; handler/watchdog.py says when): exit 0 when the model gave a verdict for
``tsclient.probe_image`` within the deadline, else 1 with the reason. Used by the image's
HEALTHCHECK and by the pods' readiness and liveness probes.

    python -m deploy.health --url http://127.0.0.1:8080 --model deepfake-detector
"""

from __future__ import annotations

import argparse
import sys

# runtime.artifacts.MODEL_NAME; deploy reaches runtime only through handler and export (tests/test_layers.py)
from handler.client import MODEL_NAME
from handler.tsclient import TorchServeClient, probe_image
from handler.watchdog import DEADLINE_S, verdict_or_reason


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="TorchServe's inference address")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds")
    args = parser.parse_args(argv)
    reason = verdict_or_reason(TorchServeClient(args.url), args.model, probe_image(), args.deadline)
    if reason:
        print(f"unhealthy: {args.model}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
