"""Finishing a collection run once every paid token's chain record is mined: the new metadata
published, a manifest written, and the collection pointed at it on chain (once).

    documents   each upgraded token's document: the original with every field kept, the new
                image, the original image, the model or pipeline, the consistency figures and
                the provenance record (record key, payment hash, transaction)
    publish     base-URI collection: one folder holding every token's document under its own
                name (untouched documents as they were), and a CAR of it; per-token collection:
                one document each
    manifest    token id -> new URI (JSON and CSV), and the folder's base URI
    chain       a Satscale collection: upgradeBatch (ERC-7160 keeps the old URI as revision 0);
                another collection: the setter the user named, when this server's signer may
                call it; otherwise nothing is sent and the manifest says what to send

Blocking (run in a thread). Safe to repeat: the same documents make the same CIDs, a
transaction is journaled (its hash, before it is sent) and its receipt awaited before anything
is sent again, and the chain itself is asked what is done before each call.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance.chain import ChainError
from provenance.collection.publish import publish_document, publish_folder, write_car
from provenance.collection.writer import CollectionWriter, NotAuthorised, Setter, TokenUpgrade
from provenance.ipfs import LocalIpfsStore
from provenance.metadata import document_bytes, upgraded_token_document

from ..inputs import atomic_write
from ..jobs import ChainStatus, Job
from ..store import JobStore
from .journal import CollectionJournal, RunRow, TokenRow

RECEIPT_WAIT = 120.0
#: token statuses whose result was paid for (and so is published)
PAID = ("paid", "published", "upgraded")


@dataclass(frozen=True)
class ChainAccess:
    """How a run writes to its collection: the writer, and what keeps other senders from this
    account out while it sends (the provenance sender, on the server's own chain)."""

    writer: CollectionWriter
    exclusive: Callable[[], AbstractContextManager[Any]]


def manifest_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    columns = ["token_id", "old_uri", "new_uri", "status", "error", "input_cid", "output_cid", "document_cid",
               "record_key", "record_tx", "update_tx"]  # fmt: skip
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key) for key in columns})
    return out.getvalue().encode()


class RunFinisher:
    def __init__(
        self,
        journal: CollectionJournal,
        store: JobStore,
        ipfs: LocalIpfsStore,
        chain_for: Callable[[RunRow], ChainAccess],
        registry: Callable[[], dict[str, Any] | None],
    ) -> None:
        """`registry()`: where records go ({"registry", "chain_id"}), once the sender is connected."""
        self.journal = journal
        self.store = store
        self.ipfs = ipfs
        self.chain_for = chain_for
        self.registry = registry
        self.receipt_wait = RECEIPT_WAIT

    def records_ready(self, run: RunRow) -> bool:
        """Every paid token's chain record is mined (or refused for good), and the sender is
        connected (the documents name its registry)."""
        if self.registry() is None:
            return False
        for token in self.journal.tokens(run.id):
            if token.status in PAID and token.job_id:
                job = self.store.get(token.job_id)
                if job is None or job.chain_status not in (ChainStatus.CONFIRMED, ChainStatus.FAILED):
                    return False
        return True

    def finish(self, run: RunRow) -> dict[str, Any]:
        if self.registry() is None:
            raise ChainUpdateDelayed("the chain sender is not connected yet")
        tokens = self.journal.tokens(run.id)
        if not any(t.status in PAID for t in tokens):  # nothing paid: nothing is published or sent
            rows = report_rows(tokens, self.store)
            atomic_write(Path(run.folder) / "report.json", json.dumps(rows, indent=2).encode())
            return {"published": 0, "chain": {"status": "nothing to send", "reason": "no token was paid for"}}
        payer = self._payers(run)
        jobs = {t.token_id: self.store.get(t.job_id) for t in tokens if t.status in PAID and t.job_id}
        upgraded = {i: job for i, job in jobs.items() if job is not None and job.chain_status is ChainStatus.CONFIRMED}
        by_id = {t.token_id: t for t in tokens}
        documents = {i: self._document(run, by_id[i], job, payer.get(i)) for i, job in upgraded.items()}
        layout = run.planned["layout"]
        folder = Path(run.folder)
        result: dict[str, Any] = {"published": len(documents)}
        if layout["kind"] == "base-uri":
            uris, published = self._publish_folder(tokens, documents, folder)
            result |= published
        else:
            uris = {}
            for token_id, document in documents.items():
                cid = publish_document(self.ipfs, document)
                uris[token_id] = (f"ipfs://{cid}", cid)
        for token_id, (uri, cid) in uris.items():
            status = by_id[token_id].status if by_id[token_id].status == "upgraded" else "published"
            self.journal.update_tokens(run.id, [token_id], new_uri=uri, document_cid=cid, status=status)
        manifest = {str(i): uri for i, (uri, _) in sorted(uris.items())}
        atomic_write(folder / "manifest.json", json.dumps({"contract": run.contract, "chain_id": run.chain_id,
                                                         "base_uri": result.get("base_uri"), "tokens": manifest},
                                                        indent=2).encode())  # fmt: skip
        if uris:
            result["chain"] = self._update_chain(run, {i: uri for i, (uri, _) in uris.items()}, upgraded, result)
        else:
            result["chain"] = {"status": "nothing to send", "reason": "no token was upgraded"}
        rows = report_rows(self.journal.tokens(run.id), self.store)
        atomic_write(folder / "report.json", json.dumps(rows, indent=2).encode())
        atomic_write(folder / "report.csv", manifest_csv(rows))
        return result

    # ------------------------------------------------------------ documents

    def _payers(self, run: RunRow) -> dict[int, str]:
        """Which settled invoice paid for each token."""
        payer: dict[int, str] = {}
        for batch in self.journal.batches(run.id):
            if batch.status == "settled":
                payer |= {token_id: batch.payment_hash for token_id in batch.token_ids}
        return payer

    def _document(self, run: RunRow, token: TokenRow, job: Job, payment_hash: str | None) -> bytes:
        original = json.loads(Path(token.metadata_path or "").read_bytes())
        registry = self.registry() or {}
        fidelity = json.loads(job.fidelity) if job.fidelity else {}
        provenance = {
            "record_key": job.payment_hash,
            "payment_hash": payment_hash,
            "registry": registry.get("registry"),
            "chain_id": registry.get("chain_id"),
            "transaction": job.chain_tx,
            "block": job.chain_block,
            "input_image": token.image_uri,
            "input_cid": job.input_cid,
            "input_sha256": job.input_sha256,
            "output_cid": job.output_cid,
            "output_sha256": job.output_sha256,
            "model": job.model,
            "pipeline": [stage.to_dict() for stage in job.stages],
            "consistency": fidelity.get("overall"),
            "job_metadata": f"ipfs://{job.metadata_cid}" if job.metadata_cid else None,
        }
        return document_bytes(upgraded_token_document(original, f"ipfs://{job.output_cid}", provenance))

    def _publish_folder(
        self, tokens: list[TokenRow], documents: dict[int, bytes], folder: Path
    ) -> tuple[dict[int, tuple[str, str]], dict[str, Any]]:
        """Every token's document under its own name; a token not upgraded keeps its document
        as it was (when the plan could read it): a new base URI moves every token."""
        files: dict[str, bytes] = {}
        missing = []
        for token in tokens:
            if token.name is None:
                missing.append(token.token_id)
            elif token.token_id in documents:
                files[token.name] = documents[token.token_id]
            elif token.metadata_path and Path(token.metadata_path).exists():
                files[token.name] = Path(token.metadata_path).read_bytes()
            else:
                missing.append(token.token_id)
        release = publish_folder(self.ipfs, files)
        write_car(self.ipfs, release.root, folder / "folder.car")
        names = {t.token_id: t.name for t in tokens}
        uris = {i: (release.base_uri + str(names[i]), release.root) for i in documents}
        published = {
            "folder_cid": release.root,
            "base_uri": release.base_uri,
            "sharded": release.sharded,
            "documents": len(files),
            "car": "folder.car",
            "missing_documents": missing,
        }
        return uris, published

    # ------------------------------------------------------------ the chain

    def _update_chain(
        self, run: RunRow, uris: dict[int, str], jobs: dict[int, Job], published: dict[str, Any]
    ) -> dict[str, Any]:
        facts = run.planned["facts"]
        setter_text = run.asked.get("setter")
        registry = (self.registry() or {}).get("registry")
        ours = facts.get("erc7160") and facts.get("provenance_registry")
        if not ours and not setter_text:
            return {"status": "manual", "reason": "not a Satscale collection and no setter named: send the "
                    "manifest's URIs (or its base URI) with the collection's own setter"}  # fmt: skip
        if ours and str(facts["provenance_registry"]).lower() != str(registry).lower():
            return {"status": "manual", "reason": f"the collection links its upgrades to the registry "
                    f"{facts['provenance_registry']}, not this server's ({registry})"}  # fmt: skip
        sent: list[str] = []
        try:
            access = self.chain_for(run)
            self._resolve_pending(run, access.writer)
            if ours:
                return self._upgrade(run, access, uris, jobs, sent)
            return self._set(run, access, Setter.parse(setter_text), uris, published, sent)
        except NotAuthorised as exc:
            return {"status": "partly sent" if sent else "not sent", "transactions": sent,
                    "reason": f"{exc}. The manifest lists the new URIs: send the rest yourself"}  # fmt: skip
        except ChainError as exc:
            raise ChainUpdateDelayed(str(exc)) from None

    def _resolve_pending(self, run: RunRow, writer: CollectionWriter) -> bool | None:
        """What became of the transaction signed last (before a crash, or just now): mined (its
        tokens are upgraded), or failed, or never to be mined (its nonce went to another). Nothing
        is signed while it may still be mined: until then this raises ChainUpdateDelayed."""
        current = self.journal.run(run.id)
        pending = json.loads(current.pending_tx) if current and current.pending_tx else None
        if pending is None:
            return None
        tx_hash = pending["tx_hash"]
        outcome = writer.receipt(tx_hash)
        if outcome is None and writer.mined_nonce() <= pending["nonce"]:
            writer.rebroadcast(pending["raw"])  # the pool may have lost it (a restarted node)
            deadline = time.monotonic() + self.receipt_wait
            while (outcome := writer.receipt(tx_hash)) is None and time.monotonic() < deadline:
                if writer.mined_nonce() > pending["nonce"]:
                    break
                time.sleep(0.2)
            if outcome is None and writer.mined_nonce() <= pending["nonce"]:
                raise ChainUpdateDelayed(f"transaction {tx_hash} is not mined yet")
        if outcome:
            self.journal.update_tokens(run.id, pending["tokens"], status="upgraded")
        self.journal.update_run(run.id, pending_tx=None)
        return bool(outcome)

    def _send(self, run: RunRow, access: ChainAccess, token_ids: list[int], send: Callable[..., str]) -> str:
        def journal(tx_hash: str, nonce: int, raw: str) -> None:
            record = {"tx_hash": tx_hash, "nonce": nonce, "raw": raw, "tokens": token_ids}
            self.journal.update_run(run.id, pending_tx=json.dumps(record))
            self.journal.update_tokens(run.id, token_ids, tx_hash=tx_hash)

        with access.exclusive():
            tx_hash = send(access.writer.next_nonce(), journal)
        if not self._resolve_pending(run, access.writer):
            raise ChainUpdateDelayed(f"transaction {tx_hash} failed on chain")
        return tx_hash

    def _upgrade(
        self, run: RunRow, access: ChainAccess, uris: dict[int, str], jobs: dict[int, Job], sent: list[str]
    ) -> dict[str, Any]:
        writer = access.writer
        wanted = [TokenUpgrade(i, uri, jobs[i].payment_hash) for i, uri in sorted(uris.items())]
        pending = writer.pending(wanted)
        waiting = {u.token_id for u in pending}
        self.journal.update_tokens(run.id, [u.token_id for u in wanted if u.token_id not in waiting], status="upgraded")
        for call in writer.calls(pending):
            ids = [u.token_id for u in call]
            sent.append(self._send(run, access, ids, lambda n, j, c=call: writer.send_upgrades(c, n, j)))
        return {"status": "sent", "method": "upgradeBatch", "transactions": sent,
                "already_done": len(wanted) - len(pending)}  # fmt: skip

    def _set(
        self,
        run: RunRow,
        access: ChainAccess,
        setter: Setter,
        uris: dict[int, str],
        published: dict[str, Any],
        sent: list[str],
    ) -> dict[str, Any]:
        writer = access.writer
        if not setter.per_token:
            base_uri = published.get("base_uri")
            if base_uri is None:
                return {"status": "manual", "reason": f"{setter.name}(string) sets a base URI, and this collection "
                        "has a URI per token: name a per-token setter such as setTokenURI(uint256,string)"}  # fmt: skip
            if published.get("missing_documents") or not run.planned.get("whole_collection"):
                return {"status": "manual", "reason": "the new folder does not hold every token's document (a "
                        "range was upgraded, or some documents could not be read): a new base URI would break "
                        "the others; set it yourself once the folder is complete"}  # fmt: skip
            if writer.setter_done(uris):  # sent before (a resumed run): the chain says so
                self.journal.update_tokens(run.id, list(uris), status="upgraded")
                return {"status": "sent", "method": setter.name, "transactions": [], "already_done": len(uris)}
            sent.append(self._send(run, access, list(uris), lambda n, j: writer.send_setter(setter, [base_uri], n, j)))
            return {"status": "sent", "method": setter.name, "transactions": sent, "already_done": 0}
        done = 0
        for token_id, uri in sorted(uris.items()):
            if writer.setter_done({token_id: uri}):
                done += 1
                self.journal.update_tokens(run.id, [token_id], status="upgraded")
            else:
                args = [token_id, uri]
                sent.append(self._send(run, access, [token_id],
                                       lambda n, j, a=args: writer.send_setter(setter, a, n, j)))  # fmt: skip
        return {"status": "sent", "method": setter.name, "transactions": sent, "already_done": done}


class ChainUpdateDelayed(Exception):
    """The collection's chain could not be written now (unreachable, not mined yet): the run
    stays in `finishing` and tries again."""


def report_rows(tokens: list[TokenRow], store: JobStore) -> list[dict[str, Any]]:
    """The report: one row per token, what a user checks (URIs, status, CIDs, transactions)."""
    rows = []
    for token in tokens:
        job = store.get(token.job_id) if token.job_id else None
        row: dict[str, Any] = {
            "token_id": token.token_id,
            "old_uri": token.old_uri,
            "new_uri": token.new_uri,
            "status": token.status,
            "error": token.error,
            "input_cid": job.input_cid if job else None,
            "output_cid": job.output_cid if job else None,
            "document_cid": token.document_cid,
            "record_key": job.payment_hash if job else None,
            "record_tx": job.chain_tx if job else None,
            "update_tx": token.tx_hash,
        }
        rows.append(row)
    return rows
