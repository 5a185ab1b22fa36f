"""`satscale collection ...`: collection upgrades from the command line, as a client of a
Satscale server (which reads the chain, fetches, prices and, for a paid run, upscales)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from sr_core.errors import SatscaleError

from ..client import server_call

#: the report's columns, one row per token (the JSON report has the same keys)
REPORT_FIELDS = ("token_id", "old_uri", "new_uri", "status", "error", "input_cid", "output_cid", "metadata_cid", "tx")
DEFAULT_SERVER = "http://127.0.0.1:7860"


def _pipeline(value: str | None) -> Any:
    """A JSON file's stages, or the name of a preset (the server knows its presets)."""
    if value is None:
        return None
    path = Path(value)
    if not path.exists():
        return value
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SatscaleError(f"{value}: not a pipeline file ({exc})") from None


def plan_request(args: argparse.Namespace) -> dict[str, Any]:
    if args.pipeline and (args.model or args.scale):
        raise SatscaleError("--pipeline names every stage: leave out --model and --scale")
    body: dict[str, Any] = {"contract": args.contract, "pixel_art": args.pixel_art}
    optional = {
        "rpc_url": args.rpc,
        "tokens": args.tokens,
        "model": args.model,
        "scale": args.scale,
        "pipeline": _pipeline(args.pipeline),
        "pixel_scale": args.pixel_scale,
    }
    return body | {key: value for key, value in optional.items() if value is not None}


def report_rows(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per token: what the upgrade would do (a dry run: nothing new exists yet)."""
    rows = []
    for token in plan["token_plans"]:
        row = dict.fromkeys(REPORT_FIELDS)
        row |= {"token_id": token["token_id"], "old_uri": token["old_uri"], "error": token.get("error")}
        row["status"] = "planned" if token["status"] == "ready" else "skipped"
        row |= {k: token[k] for k in ("pipeline", "amount_sat", "pixel_art") if k in token}
        rows.append(row)
    return rows


def write_report(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The JSON report at `path` and a CSV beside it (same name, .csv)."""
    path.write_text(json.dumps(rows, indent=2) + "\n")
    beside = path.with_suffix(".csv")
    with beside.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return beside


def _stages_text(token: dict[str, Any]) -> str:
    stages = " -> ".join(f"{s['model']} x{s['scale']}" for s in token.get("pipeline", ()))
    art = token.get("pixel_art") or {}
    return stages + (f"  (pixel art: {art['reason']})" if art.get("chosen") else "")


def print_plan(plan: dict[str, Any]) -> None:
    layout = plan["layout"]
    naming = (
        f"base URI {layout['base_uri']}<id>{layout['suffix']}" if layout["kind"] == "base-uri" else "a URI per token"
    )
    print(f"{plan['name'] or 'collection'} ({plan['symbol'] or '?'}) {plan['contract']} on chain {plan['chain_id']}")
    print(f"  naming: {naming}")
    for token in plan["token_plans"]:
        if token["status"] == "ready":
            print(f"  #{token['token_id']:<6} {token['amount_sat']:>8} sat  {_stages_text(token)}")
        else:
            print(f"  #{token['token_id']:<6} skipped        {token['error']}")
    batches = len(plan["batches"])
    print(
        f"{plan['ready']} of {plan['tokens']} tokens to upgrade ({plan['pixel_art']} as pixel art), "
        f"{plan['skipped']} skipped; {plan['amount_sat']} sat in {batches} invoice{'s' * (batches != 1)}, "
        f"about {plan['seconds']:.0f} s of work"
    )


def cmd_collection_upgrade(args: argparse.Namespace) -> int:
    if not args.dry_run:
        raise SatscaleError(
            "this server release plans collection upgrades only: run with --dry-run to see what an upgrade "
            "would do and cost (paid runs come with the collection runner)"
        )
    body = server_call("POST", f"{args.server.rstrip('/')}/v1/collections/plan", json=plan_request(args), timeout=600)
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print_plan(body)
    if args.report:
        beside = write_report(Path(args.report), report_rows(body))
        print(f"report: {args.report} and {beside}")
    return 0


def add_collection_commands(commands: argparse._SubParsersAction) -> None:
    collection = commands.add_parser("collection", help="upgrade a whole NFT collection (ERC-721)")
    sub = collection.add_subparsers(dest="collection_command", required=True)
    upgrade = sub.add_parser("upgrade", help="plan (--dry-run) the upgrade of every token's image")
    upgrade.add_argument("--contract", required=True, help="the collection's ERC-721 contract address")
    upgrade.add_argument("--rpc", metavar="URL", help="the chain's JSON-RPC URL (default: the server's chain)")
    upgrade.add_argument("--tokens", metavar="RANGE", help="token ids, e.g. 1-500 or 1,5,9-12 (default: every)")
    upgrade.add_argument("--model", help="model for the tokens that are not pixel art")
    upgrade.add_argument("--scale", type=int, help="output scale (default: the model's own)")
    upgrade.add_argument("--pipeline", metavar="FILE.json|PRESET", help="stages instead of --model/--scale")
    upgrade.add_argument(
        "--pixel-art",
        choices=("auto", "on", "off"),
        default="auto",
        help="nearest-neighbour for pixel art: auto (tiny or few-colour images), on (every token), off",
    )
    upgrade.add_argument("--pixel-scale", type=int, help="pixel art's integer scale (default: towards 1024 px)")
    upgrade.add_argument("--dry-run", action="store_true", help="read and plan only: changes nothing anywhere")
    upgrade.add_argument("--report", metavar="FILE.json", help="write a per-token report (and FILE.csv beside it)")
    upgrade.add_argument("--json", action="store_true", help="print the plan as JSON")
    upgrade.add_argument("--server", default=DEFAULT_SERVER, help=f"the Satscale server (default {DEFAULT_SERVER})")
    upgrade.set_defaults(func=cmd_collection_upgrade)
