"""HTML and text of the web app, made from what a caller may see (views.JobView): nothing here
reads a job, so nothing here can show more than the caller's grant allows."""

from __future__ import annotations

import html
from typing import Any

import qrcode

from sr_core.fidelity import figure_text

from ..jobs import JobState
from ..verify import Report
from ..views import JobView

STATE_TEXT = {
    JobState.AWAITING_PAYMENT: "Waiting for payment",
    JobState.PAYMENT_HELD: "Paid (held) — queued",
    JobState.PROCESSING: "Upscaling",
    JobState.SUCCEEDED: "Done",
    JobState.FAILED: "Failed — the payment was returned",
    JobState.EXPIRED: "Invoice expired unpaid",
}

PUBLISH_INFO = (
    "Published: the input, the output and the metadata are pinned on this server's public IPFS gateway "
    "and anyone who holds the input can find the upscale (what NFT collections want). Not published: "
    "only their hashes go on chain, and the files stay with this browser."
)


def model_note(listing: dict[str, Any] | None) -> str:
    """What a model is for and what it does to faces, from its own listing row (GET /v1/models):
    the engine describes itself, nothing here knows models by name."""
    if listing is None:
        return "Your checkpoint from weights/."
    if listing.get("error"):
        return f"Cannot be used: {listing['error']}"
    parts = [listing.get("note") or listing.get("description", "")]
    if listing.get("price_class") == "diffusion":
        parts.append("Slow, and priced higher per megapixel.")
    return " ".join(p for p in parts if p)


def passes_text(stages: list[tuple[str, int]]) -> str:
    """The chosen passes and the total scale, as the page shows them above the price."""
    if len(stages) < 2:
        return ""
    total = 1
    for _model, scale in stages:
        total *= scale
    listed = " → ".join(f"{html.escape(model)} x{scale}" for model, scale in stages)
    return f"{len(stages)} passes: {listed} · **x{total} in all**"


def units_text(stages: Any) -> str:
    """Stages priced per thing found (faces), as the quote shows them: how many, at what rate."""
    parts = []
    for stage in stages:
        if stage.unit != "megapixel" and stage.units is not None:
            each = stage.rate_msat_per_megapixel / 1000
            plural = "s" if stage.units != 1 else ""
            parts.append(f"up to {stage.units} {stage.unit}{plural} restored ({each:g} sats each)")
    return " · ".join(parts)


def face_note(upscalers: list[dict[str, Any]], face: dict[str, Any] | None) -> str:
    """Whether restoring faces makes sense after these upscalers (each one's description says
    what it does to faces), and the face model's licence notice if it has one."""
    parts = []
    does = {row.get("faces") for row in upscalers}
    repaints = [row.get("name", "") for row in upscalers if row.get("faces") == "repaints"]
    if repaints:
        parts.append(f"⚠ Not with {', '.join(repaints)}: it paints faces in drawing style, and restoring them would "
                     "paste photographic faces into a drawing (the server refuses it).")  # fmt: skip
    elif does == {"keeps"}:
        which = "this model: it keeps" if len(upscalers) == 1 else "these models: they keep"
        parts.append(f"Suits {which} faces as they are, and the faces found are then restored.")
    else:
        parts.append("Faces the detector finds are restored after the upscale; the rest of the image is kept.")
    if face and face.get("licence"):
        parts.append(f"**Licence:** {face['licence']}")
    return " ".join(parts)


def megapixels(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def qr(payment_request: str) -> Any:
    # upper case fits the QR alphanumeric mode: a denser, more readable code
    return qrcode.make(f"LIGHTNING:{payment_request.upper()}", border=2).get_image()


def warning(text: str) -> str:
    return f'<span class="satscale-warning">{html.escape(text)}</span>'


def progress_html(job: JobView) -> str:
    if job.status is JobState.PROCESSING:
        percent = round(100 * (job.progress or 0.0))
        label = f"Upscaling · {percent} %"
    elif job.status is JobState.SUCCEEDED:
        percent, label = 100, "Done"
    else:
        percent, label = 0, STATE_TEXT[job.status]
    return (
        f'<div class="satscale-progress" data-state="{job.status.value}">'
        f'<progress value="{percent}" max="100"></progress><span>{html.escape(label)}</span></div>'
    )


def status_text(job: JobView) -> str:
    text = f"**{STATE_TEXT[job.status]}** · `{job.job_id}` · {job.amount_msat // 1000} sats"
    if job.error:
        text += f"\n\n{html.escape(job.error)}"
    return text


def download_html(link: str, intermediates: list[tuple[int, str, str]] | None = None) -> str:
    """The result's link, and each intermediate image's (a multi-stage job)."""
    parts = [f'<a class="satscale-download" href="{html.escape(link)}" download>Download full resolution</a>']
    for stage, model, url in intermediates or ():
        parts.append(
            f'<a class="satscale-intermediate" data-stage="{stage}" href="{html.escape(url)}" download>'
            f"after pass {stage} ({html.escape(model)}, TIFF)</a>"
        )
    return " · ".join(parts)


def fidelity_html(job: JobView) -> str:
    """How faithful the output is to the input: PSNR and SSIM of the output area-averaged back
    to the input's size (hallucinated text and faces lower them), per pass and overall."""
    figures = job.fidelity
    if not figures or not figures.get("overall"):
        return ""

    stages = figures.get("stages") or []
    rows = [("Whole job", figure_text(figures["overall"]) + (_faces(stages[0]) if len(stages) == 1 else ""))]
    if len(stages) > 1:
        rows += [(f"Pass {s['stage']} ({html.escape(s['model'])})", figure_text(s) + _faces(s)) for s in stages]
    items = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    return (
        '<dl class="satscale-fidelity" data-heading="Consistency with the input" title="the output scaled back '
        f"down to the input's size, compared with the input: higher is more faithful\">{items}</dl>"
    )


def _faces(stage: dict[str, Any]) -> str:
    """What a face stage did, after its figure: faces restored, and the others with why."""
    if "faces_restored" not in stage:
        return ""
    restored, listed = len(stage["faces_restored"]), stage.get("faces_left_alone") or []
    left = stage.get("faces_left_alone_count", len(listed))
    text = f" · {restored} face{'s' * (restored != 1)} restored"
    if left:
        reasons = "; ".join(dict.fromkeys(html.escape(str(face.get("reason", ""))) for face in listed))
        text += f" · {left} left alone ({reasons})"
    return text


def provenance_html(job: JobView, chain: dict | None) -> str:
    """Input/output CIDs (with gateway links when published), hashes, payment, chain record."""
    p = job.provenance
    if p is None:
        return ""
    rows: list[tuple[str, str]] = [
        ("Published", "yes, on the public IPFS gateway" if p.published else "no: only the hashes are on chain")
    ]
    hashes = {"Input": job.input.sha256 if job.input else None, "Output": job.output.sha256 if job.output else None}
    for label, cid in (("Input", p.input_cid), ("Output", p.output_cid), ("Metadata", p.metadata_cid)):
        if cid and p.published:
            rows.append((f"{label} CID", f'<a href="/ipfs/{cid}" target="_blank" data-cid="{cid}">{cid}</a>'))
        elif cid:
            rows.append((f"{label} CID", f'<code data-cid="{cid}">{cid}</code>'))
        if hashes.get(label):
            rows.append((f"{label} sha256", f"<code>{hashes[label]}</code>"))
    if job.payment:
        rows.append(("Payment hash", f"<code>{job.payment.payment_hash}</code>"))
    tx = f" <code data-tx>{p.chain_tx}</code>" if p.chain_tx else ""
    rows.append(("Chain record", f'<span data-chain-status="{p.chain_status}">{p.chain_status}</span>{tx}'))
    if chain:
        rows.append(("Registry", f"<code>{chain.get('registry')}</code> on chain {chain.get('chain_id')}"))
    if p.chain_error:
        rows.append(("Chain note", html.escape(p.chain_error)))
    items = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<dl class="satscale-provenance">{items}</dl>' + credentials_html(job) + fidelity_html(job)


STATE_NOTE = {
    "trusted": "intact; the signer chains to an authority this server trusts",
    "valid": "intact; the signer is not an authority validators know (this server's own certificate)",
    "invalid": "does not validate",
}


def credentials_html(job: JobView) -> str:
    """The Content Credentials (C2PA) inside the output: who signed, what was done, from what."""
    found = job.content_credentials
    if not found:
        return ""
    e = html.escape
    signer = found.get("signer") or {}
    state = str(found.get("state"))
    rows = [
        ("Signed by", f"{e(str(signer.get('common_name')))}, issued by {e(str(signer.get('issuer')))}"),
        ("Validation", f'<span data-credentials-state="{e(state)}">{e(STATE_NOTE.get(state, state))}</span>'),
    ]
    steps = []
    for action in found.get("actions") or []:
        name = e(str(action.get("action", "")).removeprefix("c2pa."))
        if action.get("model"):
            weights = str(action.get("weights_sha256") or "")[:12]
            name += f" by <code>{e(str(action['model']))}</code> (weights {e(weights)}…)"
        steps.append(f'<span data-action="{e(str(action.get("action")))}">{name}</span>')
    rows.append(("Actions", " → ".join(steps)))
    ingredient = found.get("ingredient")
    if ingredient:
        own = "with its own Content Credentials" if ingredient.get("has_credentials") else "no credentials of its own"
        rows.append(
            (
                "Ingredient",
                f"{e(str(ingredient.get('title')))} (parent), sha256 <code data-ingredient>"
                f"{e(str(ingredient.get('sha256')))}</code>, {own}",
            )
        )
    items = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<dl class="satscale-credentials" data-heading="Content Credentials (C2PA) in the file">{items}</dl>'


def verification_text(report: Report) -> str:
    data = report.to_dict()
    lines = ["**Verified** ✓" if data["verified"] else "**Not verified** ✗"]
    for record in data["records"]:
        for check in record["checks"]:
            mark = "✓" if check["ok"] else "✗"
            lines.append(f"- {mark} **{check['name']}**: {html.escape(check['detail'])}")
    return "\n".join(lines)


def jobs_table(rows: list[tuple[JobView, str]]) -> str:
    if not rows:
        return "No jobs in this browser yet."
    cells = "".join(
        f"<tr><td><code>{job.job_id}</code></td><td>{html.escape(STATE_TEXT[job.status])}</td>"
        f"<td>{html.escape(job.model)} x{job.scale}</td><td>{created}</td></tr>"
        for job, created in rows
    )
    return f'<table class="satscale-jobs"><tbody>{cells}</tbody></table>'


CSS = """
.satscale-progress { display: flex; align-items: center; gap: .75rem; }
.satscale-progress progress { flex: 1; height: 1.1rem; accent-color: var(--color-accent); }
.satscale-warning { color: var(--error-text-color, #c0392b); }
.satscale-dev { font-size: .85rem; color: var(--body-text-color-subdued); }
#dev-pay { border: 2px dashed var(--color-accent); }
.satscale-download { display: inline-block; padding: .55rem 1rem; border-radius: var(--button-large-radius, 8px);
  background: var(--button-secondary-background-fill); color: var(--button-secondary-text-color);
  border: 1px solid var(--button-secondary-border-color); text-decoration: none; font-weight: 600; }
.satscale-provenance, .satscale-fidelity, .satscale-credentials {
  display: grid; grid-template-columns: max-content 1fr; gap: .3rem .9rem; margin: 0;
}
.satscale-provenance dt, .satscale-fidelity dt, .satscale-credentials dt { font-weight: 600; }
.satscale-provenance dd, .satscale-fidelity dd, .satscale-credentials dd { margin: 0; overflow-wrap: anywhere; }
.satscale-fidelity, .satscale-credentials { margin-top: .8rem; }
.satscale-fidelity::before, .satscale-credentials::before {
  content: attr(data-heading); grid-column: 1 / -1; font-weight: 600;
}
.satscale-jobs { width: 100%; } .satscale-jobs td { padding: .2rem .5rem; overflow-wrap: anywhere; }
"""
