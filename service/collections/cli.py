"""`satscale collection ...`: collection upgrades from the command line, as a client of a
Satscale server (which reads the chain, fetches, prices and, for a paid run, upscales).

    upgrade --dry-run   the plan: layout, tokens, pixel-art decisions, price; changes nothing
    upgrade             a paid run: shows each batch's invoice for the payer's wallet (or pays it
                        from a dev server's simulated wallet with --pay-dev), a progress bar, and
                        the report when the run is done
    status ID           where a run stands (--wait: until it is done)
"""

from __future__ import annotations

import argparse
import csv
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from sr_core.errors import SatscaleError

from ..client import server_call

#: the report's columns, one row per token (the JSON report has the same keys)
REPORT_FIELDS = ("token_id", "old_uri", "new_uri", "status", "error", "input_cid", "output_cid", "document_cid",
                 "record_key", "record_tx", "update_tx")  # fmt: skip
POLL_SECONDS = 1.0
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
    server = args.server.rstrip("/")
    if args.dry_run:
        body = server_call("POST", f"{server}/v1/collections/plan", json=plan_request(args), timeout=600)
        if args.json:
            print(json.dumps(body, indent=2))
        else:
            print_plan(body)
        if args.report:
            beside = write_report(Path(args.report), report_rows(body))
            print(f"report: {args.report} and {beside}")
        return 0
    request = plan_request(args) | ({"setter": args.setter} if args.setter else {})
    if not args.yes:
        plan = server_call("POST", f"{server}/v1/collections/plan", json=plan_request(args), timeout=600)
        print_plan(plan)
        if not _confirm(f"Upgrade {plan['ready']} tokens for {plan['amount_sat']} sat?"):
            print("nothing was started or charged")
            return 1
    key = "cli-" + secrets.token_hex(16)  # a retried request after a dropped connection is the same run
    run = server_call("POST", f"{server}/v1/collections", json=request, headers={"Idempotency-Key": key},
                      timeout=600, accept=(200, 202, 402))  # fmt: skip
    print(f"run {run['id']}: {run['progress']['tokens']} tokens, {run['amount_sat']} sat "
          f"(`satscale collection status {run['id']}` shows it from anywhere)")  # fmt: skip
    return _follow(server, run, args)


def cmd_collection_status(args: argparse.Namespace) -> int:
    server = args.server.rstrip("/")
    run = _status(server, args.run_id)
    if args.wait:
        return _follow(server, run, args)
    _summary(run, args)
    return 0


def _status(server: str, run_id: str) -> dict[str, Any]:
    return server_call("GET", f"{server}/v1/collections/{run_id}", timeout=60, accept=(200, 202, 402))


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise SatscaleError("not a terminal: pass --yes to start the run without asking")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _follow(server: str, run: dict[str, Any], args: argparse.Namespace) -> int:
    """Show each invoice as it comes (or pay it from the dev wallet), and progress, until done."""
    from tqdm import tqdm

    shown: set[str] = set()
    bar = tqdm(total=run["progress"]["tokens"], unit="token", disable=args.json or not sys.stderr.isatty())
    while run["state"] != "done":
        invoice = run.get("invoice")
        if invoice and invoice["payment_request"] not in shown:
            shown.add(invoice["payment_request"])
            what = "the results of" if invoice["kind"] == "release" else "the work of"
            tqdm.write(f"invoice for {what} batch {invoice['batch']}: {invoice['amount_sat']} sat")
            if getattr(args, "pay_dev", False):
                server_call("POST", f"{server}/v1/dev/pay", json={"payment_request": invoice["payment_request"]})
                tqdm.write("  paid from the server's simulated wallet (not real money)")
            else:
                tqdm.write(f"  {invoice['payment_request']}")
        bar.n = run["progress"]["finished"]
        bar.refresh()
        time.sleep(POLL_SECONDS)
        run = _status(server, run["id"])
    bar.n = run["progress"]["finished"]
    bar.close()
    _summary(run, args)
    return 0 if all(t["status"] != "failed" for t in run["tokens"]) else 3


def _summary(run: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        counts: dict[str, int] = {}
        for token in run["tokens"]:
            counts[token["status"]] = counts.get(token["status"], 0) + 1
        print(f"run {run['id']}: {run['state']}; " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for token in run["tokens"]:
            if token.get("error"):
                print(f"  #{token['token_id']:<6} {token['status']}: {token['error']}")
        chain = (run.get("result") or {}).get("chain")
        if chain:
            print(f"chain: {chain['status']}" + (f" ({chain['reason']})" if chain.get("reason") else ""))
        if run.get("error"):
            print(f"note: {run['error']}")
    if getattr(args, "report", None):
        beside = write_report(Path(args.report), run["tokens"])
        print(f"report: {args.report} and {beside}")


def add_collection_commands(commands: argparse._SubParsersAction) -> None:
    collection = commands.add_parser("collection", help="upgrade a whole NFT collection (ERC-721)")
    sub = collection.add_subparsers(dest="collection_command", required=True)
    upgrade = sub.add_parser("upgrade", help="upgrade every token's image (or plan it: --dry-run)")
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
    upgrade.add_argument(
        "--setter", help="another collection's setter to send the new URIs with: setBaseURI(string) or similar"
    )
    upgrade.add_argument("--yes", action="store_true", help="start the paid run without asking")
    upgrade.add_argument("--pay-dev", action="store_true", help="pay from a dev server's simulated wallet")
    upgrade.add_argument("--server", default=DEFAULT_SERVER, help=f"the Satscale server (default {DEFAULT_SERVER})")
    upgrade.set_defaults(func=cmd_collection_upgrade)
    status = sub.add_parser("status", help="where a collection run stands")
    status.add_argument("run_id", metavar="ID")
    status.add_argument("--wait", action="store_true", help="follow the run until it is done")
    status.add_argument("--pay-dev", action="store_true", help="with --wait: pay from the simulated wallet")
    status.add_argument("--report", metavar="FILE.json", help="write the per-token report (and FILE.csv)")
    status.add_argument("--json", action="store_true", help="print the run as JSON")
    status.add_argument("--server", default=DEFAULT_SERVER, help=f"the Satscale server (default {DEFAULT_SERVER})")
    status.set_defaults(func=cmd_collection_status)
