"""`gateway demo-traffic`: synthetic customers sent to a running demo, and what really happened.

Each request carries one synthetic customer (`X-User-Id: customer-N`, sticky), and the outcomes
file gets the customer's true churn label keyed by the answer's `x-request-id`, so that
`gateway report --outcomes FILE --metric accuracy` judges champion against challenger on the
labels their predictions are about.
"""

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TextIO

EXIT_OK, EXIT_FAILED = 0, 1
SEED = 20_261_130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `gateway demo-traffic`."""
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the demo gateway")
    parser.add_argument("--requests", type=int, default=2_000, help="customers to send (2000)")
    parser.add_argument(
        "--outcomes",
        type=Path,
        default=Path("gateway-demo/outcomes.csv"),
        help="where the true labels go (default gateway-demo/outcomes.csv)",
    )


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Send the customers, write their outcomes; a one-line error when the gateway is not there."""
    import httpx

    from gateway.commands.demo import FEATURES, synthetic_customers

    frame, labels = synthetic_customers(args.requests, SEED)
    args.outcomes.parent.mkdir(parents=True, exist_ok=True)
    served: dict[str, int] = {}
    try:
        with (
            httpx.Client(base_url=args.url, timeout=30) as client,
            args.outcomes.open("w", newline="") as file,
        ):
            writer = csv.writer(file)
            writer.writerow(["request_id", "outcome"])
            for index, row in enumerate(frame.itertuples(index=False)):
                body = {"dataframe_split": {"columns": list(FEATURES), "data": [list(row)]}}
                response = client.post(
                    "/invocations",
                    content=json.dumps(body, default=_plain),
                    headers={
                        "content-type": "application/json",
                        "x-user-id": f"customer-{index}",
                    },
                )
                response.raise_for_status()
                variant = response.headers["x-gateway-variant"]
                served[variant] = served.get(variant, 0) + 1
                writer.writerow([response.headers["x-request-id"], int(labels[index])])
    except httpx.HTTPError as exc:
        print(f"error: the gateway at {args.url} did not answer: {exc}", file=err)
        return EXIT_FAILED
    shares = ", ".join(f"{name} {count}" for name, count in sorted(served.items()))
    print(f"sent {args.requests} customers ({shares}); outcomes in {args.outcomes}", file=out)
    return EXIT_OK


def _plain(value: object) -> object:
    """numpy scalars as plain JSON numbers."""
    item = getattr(value, "item", None)
    if item is None:
        raise TypeError(f"not JSON: {type(value).__name__}")
    return item()
