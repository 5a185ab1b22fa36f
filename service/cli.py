"""The `satscale` command line: upscale files and folders, list models, serve the app."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provenance.content_credentials import Credentials, read_credentials
from sr_core import kinds
from sr_core.device import Precision
from sr_core.engines import spell_scales
from sr_core.errors import ParameterError, SatscaleError
from sr_core.fidelity import Fidelity, figure_text
from sr_core.imageio import (
    FORMAT_EXTENSIONS,
    OUTPUT_EXTENSIONS,
    ImageLimits,
    OutputOptions,
    output_format,
    sniff_format,
)
from sr_core.metadata import MetadataPolicy, MetadataRule, StageParameters
from sr_core.pipeline import PipelineResult, Stage, check_face_stages, run_pipeline
from sr_core.registry import ModelRegistry
from sr_core.upscale import UpscaleOptions
from sr_core.weights import weights_dir

from .client import server_call
from .collections.cli import add_collection_commands
from .credentials import software
from .engines import DEFAULT_MODEL
from .stages import StageOptions, check_stage_model, face_stage, parse_pipeline, parse_then


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in OUTPUT_EXTENSIONS and not p.name.startswith(".")
    )


def plan_jobs(inputs: Sequence[Path], output: Path | None, scale: int, fmt: str | None) -> list[Job]:
    """Map inputs (files or folders) to output paths.

    One input file and an -o that is not a folder: write exactly there. Otherwise
    -o is a folder (folder inputs keep their sub-folders) or, without -o, outputs
    go beside their inputs as NAME_xSCALE.EXT.
    """
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise SatscaleError(f"no such file or folder: {', '.join(missing)}")

    def name_for(path: Path) -> str:
        extension = FORMAT_EXTENSIONS[output_format(path, fmt)] if fmt else path.suffix
        return f"{path.stem}_x{scale}{extension}"

    single_file = len(inputs) == 1 and inputs[0].is_file()
    if single_file and output is not None and not output.is_dir() and output.suffix:
        return [Job(inputs[0], output)]
    jobs = []
    for item in inputs:
        files = [(f, f.relative_to(item).parent) for f in _images_in(item)] if item.is_dir() else [(item, Path())]
        for source, sub in files:
            folder = (output / sub) if output is not None else source.parent
            jobs.append(Job(source, folder / name_for(source)))
    if not jobs:
        raise SatscaleError("no images found in the given folders (PNG, JPEG, WebP, TIFF)")
    return jobs


def _progress_bar(total_files: int, position: int, name: str):
    """A bar over all stages of one file (in per cent of the work)."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=f"[{position}/{total_files}] {name}", unit="%", leave=False, file=sys.stderr)

    def update(fraction: float) -> None:
        bar.n = round(fraction * 100, 1)
        bar.refresh()

    return bar, update


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per engine setting name, for every kind that takes it (declared by the kinds)."""
    group = parser.add_argument_group("engine settings (each applies to the kinds that name it)")
    for name, takers in kinds.settings_by_name().items():
        first = takers[0][1]
        uses = "; ".join(f"{kind.title}: {option.help}" for kind, option in takers)
        if first.type is bool:
            group.add_argument(_flag(name), dest=f"engine_{name}", action="store_true", default=None, help=uses)
        else:
            group.add_argument(_flag(name), dest=f"engine_{name}", metavar=name.upper(), help=uses)


def engine_settings(args: argparse.Namespace, used: Sequence[kinds.EngineKind]) -> dict[str, dict]:
    """The engine flags given, for the kinds of the chosen models (each checks its values); a
    flag none of them takes is refused rather than silently ignored."""
    given = {
        name: getattr(args, f"engine_{name}")
        for name in kinds.settings_by_name()
        if getattr(args, f"engine_{name}", None) is not None
    }
    taken = {option.name for kind in used for option in kind.settings}
    stray = sorted(set(given) - taken)
    if stray:
        flags = ", ".join(_flag(name) for name in stray)
        models = " + ".join(kind.title for kind in used)
        raise ParameterError(f"{flags}: not a setting of {args.model or DEFAULT_MODEL} ({models})")
    chosen: dict[str, dict] = {}
    for kind in used:
        names = {option.name for option in kind.settings}
        mine = {name: value for name, value in given.items() if name in names}
        if mine:
            chosen[kind.id] = mine
    return chosen


def _stages_sent(args: argparse.Namespace) -> tuple[StageOptions, ...]:
    if args.pipeline:
        if args.then or args.model:
            raise ParameterError("--pipeline names every stage: leave out -m and --then")
        path = Path(args.pipeline)
        if not path.exists():
            offered = ModelRegistry().presets()
            preset = next((p for p in offered if p.id == args.pipeline), None)
            if preset is None:
                named = ", ".join(p.id for p in offered) or "none"
                raise SatscaleError(
                    f"{args.pipeline}: no such file, and no preset of that name (presets here: {named})"
                )
            return parse_pipeline(preset.pipeline(args.scale))
        if args.scale is not None:
            raise ParameterError("a --pipeline file names each stage's scale: leave out -s")
        try:
            text = path.read_text()
        except OSError as exc:
            raise SatscaleError(f"{args.pipeline}: {exc.strerror or exc}") from None
        return parse_pipeline(text)
    first = StageOptions(args.model or DEFAULT_MODEL, args.scale, args.tile, args.precision)
    return (first, *(parse_then(spec) for spec in args.then or ()))


def _sent_with_faces(args: argparse.Namespace) -> tuple[StageOptions, ...]:
    """The stages, with --face's stage appended (it runs on the final image of the others)."""
    sent = _stages_sent(args)
    if args.face_weight is not None and not args.face:
        raise ParameterError("--face-weight goes with --face MODEL")
    return (*sent, face_stage(args.face, args.face_weight)) if args.face else sent


def _stages(args: argparse.Namespace) -> list[Stage]:
    """The command's stages, each checked by its engine's description before any file is read."""
    sent = _sent_with_faces(args)
    probe = ModelRegistry()
    used = list({entry.kind: kinds.kind(entry.kind) for entry in (probe.get(s.model) for s in sent)}.values())
    registry = ModelRegistry(settings=engine_settings(args, used))
    stages = []
    for index, stage in enumerate(sent, start=1):
        named = f"{stage.model}" if len(sent) == 1 else f"stage {index} ({stage.model})"
        try:
            engine = registry.load_engine(stage.model, device=args.device, precision=stage.precision or "auto")
            check_stage_model(stage, engine.info)
            scale = engine.info.resolve_scale(stage.scale)
            chosen = engine.info.parse_options(stage.options)
        except ParameterError as exc:
            raise ParameterError(f"{named}: {exc}") from None
        tile = stage.tile if stage.tile is not None else (args.tile if index == 1 else None)
        stages.append(Stage(engine, UpscaleOptions(scale=scale, tile=tile, batch=args.batch, engine_options=chosen)))
    check_face_stages([stage.engine.info for stage in stages])
    return stages


def _faces_text(result: PipelineResult) -> str:
    """What the face stages did, for the line printed per image."""
    parts = []
    for stage in result.stages:
        if "faces_restored" in stage.outcome:
            restored, left = len(stage.outcome["faces_restored"]), stage.outcome["faces_left_alone_count"]
            parts.append(f", {restored} face{'s' * (restored != 1)} restored")
            parts.append(f", {left} left alone" if left else "")
    return "".join(parts)


def _figure(fidelity: Fidelity | None) -> str:
    return "" if fidelity is None else f", {figure_text(fidelity.to_dict())} against the input"


#: --metadata: what a local output keeps of its input's metadata (sr_core.metadata)
CLI_METADATA = {
    "keep": (MetadataPolicy.KEEP, False),
    "no-location": (MetadataPolicy.AUTO, True),  # as a published job's output: no GPS
    "strip": (MetadataPolicy.STRIP, False),
}


def cli_metadata_rule(choice: str, names: Sequence[str], stages: Sequence[Stage]) -> MetadataRule:
    policy, public = CLI_METADATA[choice]
    described = [
        StageParameters(
            str(name),
            stage.options.scale or stage.engine.info.native_scale,
            stage.engine.info.weights_sha256,
            dict(stage.options.engine_options or {}),
        )
        for name, stage in zip(names, stages, strict=True)
    ]
    return MetadataRule.writing(policy, public, software()[0], described)


def cmd_upscale(args: argparse.Namespace) -> int:
    stages = _stages(args)
    scale = 1
    for stage in stages:
        scale *= stage.options.scale or stage.engine.info.native_scale
    jobs = plan_jobs([Path(p) for p in args.inputs], Path(args.output) if args.output else None, scale, args.format)
    output_options = OutputOptions(format=args.format, quality=args.quality, lossless=args.lossless)
    limits = ImageLimits(max_pixels=int(args.max_megapixels * 1_000_000))
    names = [sent.model for sent in _sent_with_faces(args)]
    metadata = cli_metadata_rule(args.metadata, names, stages)
    failures = skipped = 0
    for position, job in enumerate(jobs, start=1):
        if job.target.exists() and not args.overwrite:
            skipped += 1
            print(f"skip {job.target} (exists; --overwrite to redo)", file=sys.stderr)
            continue
        bar, update = _progress_bar(len(jobs), position, job.source.name)
        try:
            result = run_pipeline(
                stages,
                job.source,
                job.target,
                output_options,
                limits,
                update,
                keep=args.keep_intermediates,
                fidelity=not args.no_fidelity,
                metadata=metadata,
            )
        except SatscaleError as exc:
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        except Exception as exc:  # one bad file (or an out-of-memory) must not stop the batch
            failures += 1
            print(f"error: {job.source}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        finally:
            bar.close()
        passes = f"{len(result.stages)} stages, " if len(result.stages) > 1 else ""
        print(
            f"{job.source} -> {job.target} ({result.input.width}x{result.input.height} -> "
            f"{result.width}x{result.height}, {passes}{result.seconds:.1f} s{_faces_text(result)}"
            f"{_figure(result.fidelity)})"
        )
    done = len(jobs) - failures - skipped
    named = args.model or DEFAULT_MODEL
    if len(stages) > 1:
        named = " then ".join(f"{s.engine.info.architecture} x{s.options.scale}" for s in stages)
    first = stages[0].engine.info
    print(
        f"{done} upscaled, {skipped} skipped, {failures} failed with {named} "
        f"x{scale} ({first.precision.value} on {first.device})",
        file=sys.stderr,
    )
    return 1 if failures else 0


def cmd_models_check(args: argparse.Namespace) -> int:
    """Tell whether checkpoint files make a complete model, naming what is missing."""
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SatscaleError(f"no such file or folder: {', '.join(missing)}")
    kind = kinds.detect(paths)
    if kind is None:
        print("error: no engine kind recognises these files", file=sys.stderr)
        return 1
    report = kind.check(paths)
    print("files: " + ", ".join(str(p) for p in paths))
    print(f"{report.title}: " + report.summary)
    if report.complete and report.place:
        print(f"put them in {weights_dir()}/{report.place} to use them as a model")
    return 0 if report.complete else 1


def cmd_models(args: argparse.Namespace) -> int:
    if getattr(args, "models_command", None) == "check":
        return cmd_models_check(args)
    if args.presets:
        offered = [preset.describe() for preset in ModelRegistry().presets()]
        if args.json:
            print(json.dumps(offered, indent=2))
            return 0
        for preset in offered:
            scales = spell_scales(preset["scales"], ",")
            print(f"{preset['id']:<22} {scales:<10} {preset['description']}")
        if not offered:
            print("no presets: their models are not here (see satscale models)")
        return 0
    rows = [description.to_dict() for description in ModelRegistry().describe_all()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<28} BROKEN  {row['error']}")
            continue
        scales = spell_scales(row["scales"], ",")
        print(
            f"{row['name']:<28} {row['architecture']:<8} {scales:<10} {row['parameters'] / 1e6:6.2f}M  "
            f"{row['source']:<7} sha256:{row['weights_sha256'][:12]}  {row['description']}"
        )
    return 1 if any("error" in row for row in rows) else 0


def cmd_compare(args: argparse.Namespace) -> int:
    """PSNR and SSIM of two images (the larger one area-averaged down to the smaller one's size)."""
    from sr_core.fidelity import compare_files

    for path in (args.a, args.b):
        if not Path(path).is_file():
            raise SatscaleError(f"no such file: {path}")
    result = compare_files(Path(args.a), Path(args.b))
    if args.json:
        print(json.dumps(result.to_dict() | {"width": result.width, "height": result.height}))
        return 0
    shown = "identical" if result.to_dict()["psnr_db"] is None else f"{result.psnr:.2f} dB"
    print(f"PSNR {shown}  SSIM {result.ssim:.4f}  (compared at {result.width}x{result.height})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app import main as serve

    if args.role == "worker":
        return cmd_worker(argparse.Namespace(queue=None, concurrency=None))
    given = (("host", args.host), ("port", args.port), ("role", args.role))
    serve(**{key: value for key, value in given if value is not None})
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app import worker_main

    given = (("worker_queue", args.queue), ("worker_concurrency", args.concurrency))
    worker_main(**{key: value for key, value in given if value is not None})
    return 0


def cmd_dev_pay(args: argparse.Namespace) -> int:
    """Pay with the simulated wallet of a running server's dev node (no real money)."""
    import httpx

    url = args.server.rstrip("/") + "/v1/dev/pay"
    try:
        response = httpx.post(
            url,
            json={"payment_request": args.invoice, "wait": args.wait, "timeout": args.timeout},
            timeout=args.timeout + 10,
        )
    except httpx.HTTPError as exc:
        raise SatscaleError(f"cannot reach {url}: {exc}") from None
    if response.status_code == 404:
        raise SatscaleError(f"{args.server} has no dev wallet: its Lightning backend is not the simulated one")
    body = response.json()
    if response.status_code != 200:
        raise SatscaleError(body.get("detail", response.text))
    print(f"paid (simulated, not real money): {body['state']}, payment hash {body['payment_hash']}")
    if body.get("preimage"):
        print(f"preimage {body['preimage']}")
    return 0


def print_credentials(found: Credentials) -> None:
    """A file's Content Credentials as `verify` prints them."""
    if not found.present:
        print("  no Content Credentials in this file")
        return
    signer = found.signer
    if found.intact:
        trust = "a trusted authority" if found.state == "trusted" else "not an authority you listed as trusted"
        print(f"  Content Credentials intact: signed by {signer.get('common_name')} ({signer.get('issuer')}; {trust})")
    else:
        print("  Content Credentials DO NOT VALIDATE: the file changed after it was signed, or the manifest is damaged")
        for code, text in found.failures:
            print(f"    {code}: {text}")
    steps = [
        str(a["action"]).removeprefix("c2pa.")
        + (f" by {a['model']} (weights {a['weights_sha256']})" if a.get("model") else "")
        for a in found.actions
    ]
    print(f"  actions  {' -> '.join(steps)}")
    if found.ingredient:
        print(f"  parent   {found.ingredient.get('title')} sha256 {found.ingredient.get('sha256')}")
    if found.record:
        record = found.record
        print(f"  claims   the record of payment {record.get('payment_hash')}, input {record.get('input_cid')}")
        print(f"           registry {record.get('registry')} on chain {record.get('chain_id')}")


def cmd_verify(args: argparse.Namespace) -> int:
    """Ask a Satscale server for an image's chain of custody; a local file is hashed here, and its
    Content Credentials are read and validated here."""
    import hashlib

    target = Path(args.image)
    local: Credentials | None = None
    if target.is_file():
        data = target.read_bytes()
        query = hashlib.sha256(data).hexdigest()
        anchors = [Path(anchor).read_bytes() for anchor in args.trust_anchor or ()]
        local = read_credentials(data, sniff_format(data[:16]) or "", anchors)
        if not args.json:
            print(f"{target}: sha256 {query}")
            print_credentials(local)
    else:
        query = args.image
    sys.stdout.flush()  # what the file says comes first, even when the server knows no record
    body = server_call("GET", f"{args.server.rstrip('/')}/v1/provenance/{query}", timeout=120)
    if local is not None and local.present:
        body["file_credentials"] = local.to_dict()
        body["verified"] = body["verified"] and local.intact
    if args.json:
        print(json.dumps(body, indent=2))
        return 0 if body["verified"] else 1
    print(("VERIFIED" if body["verified"] else "NOT VERIFIED") + f": image sha256 {body['sha256']}")
    for record in body["records"]:
        custody, chain = record["custody"], record["chain"]
        if record.get("withheld"):
            print(f"\nthis image is the {record['role']} of a job whose owner did not publish it")
        else:
            print(f"\nthis image is the {record['role']} of the job paid with {record['payment_hash']}")
        tx = f", tx {chain['tx']} (block {chain['block']})" if chain.get("tx") else ""
        print(f"  chain    {chain['chain_id']}, registry {chain['registry']}{tx}")
        print(f"  input    {custody['input']['cid']}  sha256 {custody['input']['sha256']}")
        print(f"  model    {custody['model']['id']}  weights sha256 {custody['model']['weights_sha256']}")
        for number, stage in enumerate(custody["model"].get("stages", ()), start=1):
            options = ", ".join(f"{k}={v}" for k, v in stage.items() if k not in ("model", "scale"))
            print(f"  stage {number}  {stage['model']} x{stage['scale']}" + (f" ({options})" if options else ""))
        output = custody["output"]
        shown = f"{output['cid']}  sha256 {output['sha256']}" if "cid" in output else "not published"
        print(f"  output   {shown}")
        for check in record["checks"]:
            print(f"  [{'ok' if check['ok'] else 'MISMATCH'}] {check['name']}: {check['detail']}")
    if body.get("not_checked"):
        print(f"\n({body['not_checked']} older records were not checked)")
    return 0 if body["verified"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="satscale", description="Self-hosted AI image upscaling.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("upscale", help="upscale image files or folders")
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (PNG, JPEG, WebP, TIFF)")
    up.add_argument("-o", "--output", help="output file (one input) or folder; default: beside each input")
    up.add_argument("-m", "--model", help=f"model name (default {DEFAULT_MODEL})")
    up.add_argument("-s", "--scale", type=int, help="output scale (default: the model's own)")
    up.add_argument("-t", "--tile", type=int, help="tile size in input pixels (default: from memory)")
    up.add_argument("--batch", type=int, help="tiles per forward pass (default: from memory)")
    up.add_argument("-p", "--precision", default="auto", choices=[p.value for p in Precision])
    up.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    up.add_argument("-f", "--format", choices=["png", "jpeg", "jpg", "webp", "tiff", "tif"], help="output format")
    up.add_argument("-q", "--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    up.add_argument("--lossless", action="store_true", help="lossless WebP")
    up.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    up.add_argument(
        "--metadata",
        choices=list(CLI_METADATA),
        default="keep",
        help="keep the input's EXIF (default), drop its location (GPS), or strip EXIF and XMP; all but strip "
        "write the upscale's parameters as XMP (the ICC profile always stays)",
    )
    up.add_argument("--max-megapixels", type=float, default=64.0, help="refuse larger inputs (default 64)")
    up.add_argument(
        "--then",
        action="append",
        metavar="MODEL[:SCALE[:KEY=VALUE,...]]",
        help="run another stage on the result (repeatable), e.g. --then realesrgan-x4plus:2; a model's own "
        "options as KEY=VALUE pairs, e.g. --then MODEL:1:steps=20,seed=3 ('satscale models --json' lists them)",
    )
    up.add_argument(
        "--pipeline",
        metavar="FILE.json|PRESET",
        help='stages as JSON ([{"model": "...", "scale": 2}, ...]) or a preset (satscale models --presets; '
        "-s picks its total scale)",
    )
    up.add_argument(
        "--face",
        metavar="MODEL",
        help="restore faces with this face model after the other stages (satscale models lists them)",
    )
    up.add_argument(
        "--face-weight",
        type=float,
        metavar="W",
        help="how much of each face as it was to keep: 0 fully restored, 1 unchanged (default 0.5)",
    )
    up.add_argument("--keep-intermediates", action="store_true", help="keep each stage's image (NAME.stageN.tif)")
    up.add_argument("--no-fidelity", action="store_true", help="skip the PSNR/SSIM consistency figure")
    add_engine_flags(up)
    up.set_defaults(func=cmd_upscale)

    models = commands.add_parser("models", help="list the available models")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.add_argument("--presets", action="store_true", help="list the pipeline presets these models allow")
    models.set_defaults(func=cmd_models)
    models_commands = models.add_subparsers(dest="models_command")
    check = models_commands.add_parser(
        "check", help="tell whether checkpoint files (or a folder) make a complete model, and what is missing"
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint files or folders")
    check.set_defaults(func=cmd_models)

    dev = commands.add_parser("dev", help="simulated Lightning wallet of the dev backend (not real money)")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    dev_pay = dev_commands.add_parser("pay", help="pay an invoice of a running server's dev node")
    dev_pay.add_argument("invoice", help="the BOLT11 payment request (lnbcrt...)")
    dev_pay.add_argument("--server", default="http://127.0.0.1:7860", help="the Satscale server")
    dev_pay.add_argument("--wait", action="store_true", help="wait for settlement and print the preimage")
    dev_pay.add_argument("--timeout", type=float, default=300.0)
    dev_pay.set_defaults(func=cmd_dev_pay)

    verify = commands.add_parser("verify", help="check an image's provenance record (chain of custody)")
    verify.add_argument("image", metavar="IMAGE_OR_CID", help="an image file, its sha256, or a CID")
    verify.add_argument("--server", default="http://127.0.0.1:7860", help="the Satscale server")
    verify.add_argument("--json", action="store_true", help="the full report as JSON")
    verify.add_argument(
        "--trust-anchor",
        action="append",
        metavar="CA.pem",
        help="a CA certificate whose Content Credentials signers count as trusted (repeatable)",
    )
    verify.set_defaults(func=cmd_verify)

    compare = commands.add_parser("compare", help="PSNR and SSIM of two images, e.g. two models' outputs")
    compare.add_argument("a", metavar="IMAGE_A")
    compare.add_argument("b", metavar="IMAGE_B", help="same size, or the larger one is downscaled to the other's")
    compare.add_argument("--json", action="store_true", help="machine-readable output")
    compare.set_defaults(func=cmd_compare)

    add_collection_commands(commands)

    serve = commands.add_parser("serve", help="run the web app and API")
    serve.add_argument("--host", help="default: SATSCALE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: SATSCALE_PORT or 7860")
    serve.add_argument(
        "--role",
        choices=("all", "api", "worker"),
        help="all (default): serve and run jobs; api: serve, workers run the jobs; worker: `satscale worker` "
        "(api and worker need SATSCALE_STORE_URL)",
    )
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser(
        "worker", help="run jobs for a cluster's API nodes (needs SATSCALE_STORE_URL, a PostgreSQL database)"
    )
    worker.add_argument("--queue", help="this worker's pool, e.g. gpu (default: SATSCALE_WORKER_QUEUE or gpu)")
    worker.add_argument("--concurrency", type=int, help="jobs run at once (default: SATSCALE_WORKER_CONCURRENCY or 1)")
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SatscaleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
