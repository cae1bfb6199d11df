"""Documents, assets and media: each action puts its events on the stream once, valid for their contracts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from domain import assets, documents, media  # importing registers their tables before the engine fixture runs
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant

COVERED = {
    "DOCUMENT_UPLOADED", "DOCUMENT_DELETED", "DOCUMENT_ASSOCIATED", "DOCUMENT_DETACHED", "DOCUMENT_GENERATED",
    "USER_MENTIONED_IN_DOCUMENT", "ASSET_CREATED", "ASSET_UPDATED", "ASSET_ASSIGNED", "ASSET_UNASSIGNED",
    "ASSET_WARRANTY_EXPIRING", "FILE_UPLOADED", "MEDIA_PROCESSING_SUCCEEDED", "MEDIA_PROCESSING_FAILED",
}  # fmt: skip
TENANT = str(uuid.uuid4())  # USER_MENTIONED_IN_DOCUMENT is a legacy payload: uuid tenant
OTHER = str(uuid.uuid4())
USER, MENTIONED, CLIENT, CLIENT2 = (str(uuid.uuid4()) for _ in range(4))
TICKET = str(uuid.uuid4())


def one(emitted: list[tuple[str, uuid.UUID]], event_type: str) -> uuid.UUID:
    """The id of the single ``event_type`` event among an action's emitted events."""
    ids = [eid for et, eid in emitted if et == event_type]
    assert len(ids) == 1, (event_type, emitted)
    return ids[0]


def count_events(db_url: str) -> int:
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT count(*) FROM outbox_events").fetchone()
        assert row is not None
        return int(row[0])


def test_documents(act, published):
    did, ev = act(TENANT, documents.upload_document, file_name="msa.pdf", content_type="application/pdf",
                  size_bytes=48213, user=USER)  # fmt: skip
    p = published.expect_once("DOCUMENT_UPLOADED", ev[0][1])["payload"]
    assert (p["documentId"], p["fileName"], p["contentType"], p["sizeBytes"], p["uploadedByUserId"]) == (
        did, "msa.pdf", "application/pdf", 48213, USER)  # fmt: skip
    assert p["storageKey"] == f"tenants/{TENANT}/documents/{did}/msa.pdf"

    _, ev = act(TENANT, documents.associate_document, did, "ticket", TICKET, user=USER)
    p = published.expect_once("DOCUMENT_ASSOCIATED", ev[0][1])["payload"]
    assert (p["documentId"], p["entityType"], p["entityId"], p["associatedByUserId"]) == (did, "ticket", TICKET, USER)
    act(TENANT, documents.associate_document, did, "client", CLIENT, user=USER)
    with pytest.raises(InvalidInput, match="already linked"):
        act(TENANT, documents.associate_document, did, "client", CLIENT, user=USER)
    _, ev = act(TENANT, documents.detach_document, did, "ticket", TICKET, reason="wrong ticket", user=USER)
    p = published.expect_once("DOCUMENT_DETACHED", ev[0][1])["payload"]
    assert (p["documentId"], p["entityType"], p["entityId"], p["reason"], p["detachedByUserId"]) == (
        did, "ticket", TICKET, "wrong ticket", USER)  # fmt: skip
    with pytest.raises(NotFound):
        act(TENANT, documents.detach_document, did, "ticket", TICKET, user=USER)

    # deleting detaches what is left, then deletes
    _, ev = act(TENANT, documents.delete_document, did, reason="superseded", user=USER)
    assert [et for et, _ in ev] == ["DOCUMENT_DETACHED", "DOCUMENT_DELETED"]
    p = published.expect_once("DOCUMENT_DETACHED", ev[0][1])["payload"]
    assert (p["entityType"], p["entityId"], p["reason"]) == ("client", CLIENT, "document deleted")
    p = published.expect_once("DOCUMENT_DELETED", ev[1][1])["payload"]
    assert (p["documentId"], p["reason"], p["deletedByUserId"]) == (did, "superseded", USER)
    with pytest.raises(NotFound):
        act(TENANT, documents.associate_document, did, "client", CLIENT, user=USER)

    invoice = str(uuid.uuid4())
    gid, ev = act(TENANT, documents.generate_document, source_type="invoice", source_id=invoice,
                  file_name="INV-1042.pdf", size_bytes=20480)  # fmt: skip
    got = published.expect_once("DOCUMENT_GENERATED", ev[0][1])
    p = got["payload"]
    assert (p["documentId"], p["sourceType"], p["sourceId"], p["fileName"]) == (gid, "invoice", invoice, "INV-1042.pdf")
    assert p["actorType"] == "SYSTEM" and "generatedByUserId" not in p

    # an in-app text document that @-mentions someone
    mention = f"@[Maria](user:{MENTIONED})"
    tid, ev = act(TENANT, documents.create_text_document, name="Runbook", content="Backups run nightly.", user=USER)
    assert [et for et, _ in ev] == ["DOCUMENT_UPLOADED"]  # no mention yet
    p = published.expect_once("DOCUMENT_UPLOADED", ev[0][1])["payload"]
    assert (p["fileName"], p["contentType"], p["sizeBytes"]) == ("Runbook.md", "text/markdown", 20)
    new = f"Backups run nightly. {mention} please check the offsite copy."
    _, ev = act(TENANT, documents.edit_text_document, tid, new, user=USER)
    p = published.expect_once("USER_MENTIONED_IN_DOCUMENT", one(ev, "USER_MENTIONED_IN_DOCUMENT"))["payload"]
    assert (p["documentId"], p["documentName"], p["userId"], p["content"], p["isUpdate"]) == (
        tid, "Runbook", USER, new, True)  # fmt: skip
    assert (p["oldContent"], p["newContent"]) == ("Backups run nightly.", new)
    _, ev = act(TENANT, documents.edit_text_document, tid, new + " Thanks!", user=USER)
    assert ev == []  # the same person again: no new mention


def test_assets(act, published):
    end = datetime(2026, 12, 31, tzinfo=UTC)
    aid, ev = act(TENANT, assets.create_asset, name="FW-01", asset_type="firewall", serial_number="SN-77",
                  client_id=CLIENT, warranty_end=end, attributes={"os": {"name": "FortiOS", "version": "7.2"}},
                  user=USER)  # fmt: skip
    p = published.expect_once("ASSET_CREATED", ev[0][1])["payload"]
    assert (p["assetId"], p["clientId"], p["assetType"], p["serialNumber"], p["createdByUserId"]) == (
        aid, CLIENT, "firewall", "SN-77", USER)  # fmt: skip

    _, ev = act(TENANT, assets.update_asset, aid, attributes={"os": {"name": "FortiOS", "version": "7.4"}},
                client_id=CLIENT2, user=USER)  # fmt: skip
    p = published.expect_once("ASSET_UPDATED", ev[0][1])["payload"]
    assert p["assetId"] == aid and p["updatedByUserId"] == USER
    assert p["updatedFields"] == ["attributes.os.version", "client_id"]
    assert p["changes"] == {"attributes.os.version": {"previous": "7.2", "new": "7.4"},
                            "client_id": {"previous": CLIENT, "new": CLIENT2}}  # fmt: skip

    _, ev = act(TENANT, assets.assign_asset, aid, "client", CLIENT2, user=USER)
    p = published.expect_once("ASSET_ASSIGNED", ev[0][1])["payload"]
    assert (p["assetId"], p["newOwnerType"], p["newOwnerId"]) == (aid, "client", CLIENT2)
    assert "previousOwnerId" not in p
    _, ev = act(TENANT, assets.assign_asset, aid, "ticket", TICKET, user=USER)
    p = published.expect_once("ASSET_ASSIGNED", ev[0][1])["payload"]
    assert (p["previousOwnerType"], p["previousOwnerId"], p["newOwnerType"], p["newOwnerId"]) == (
        "client", CLIENT2, "ticket", TICKET)  # fmt: skip
    _, ev = act(TENANT, assets.unassign_asset, aid, reason="returned to stock", user=USER)
    p = published.expect_once("ASSET_UNASSIGNED", ev[0][1])["payload"]
    assert (p["assetId"], p["previousOwnerType"], p["previousOwnerId"], p["reason"]) == (
        aid, "ticket", TICKET, "returned to stock")  # fmt: skip
    with pytest.raises(InvalidTransition):
        act(TENANT, assets.unassign_asset, aid, user=USER)

    # the warranty sweep reports an end date once, and again only after it changed
    far, _ = act(TENANT, assets.create_asset, name="Laptop", warranty_end=end + timedelta(days=300), user=USER)
    as_of = end - timedelta(days=12, hours=6)
    reported, ev = act(TENANT, assets.check_warranties, as_of=as_of)
    assert reported == [aid]
    got = published.expect_once("ASSET_WARRANTY_EXPIRING", ev[0][1])
    p = got["payload"]
    assert (p["assetId"], p["expiresAt"], p["daysUntilExpiry"], p["clientId"]) == (
        aid, "2026-12-31T00:00:00.000Z", 12, CLIENT2)  # fmt: skip
    assert p["actorType"] == "SYSTEM"
    assert act(TENANT, assets.check_warranties, as_of=as_of + timedelta(days=1)) == ([], [])
    assert act(OTHER, assets.check_warranties, as_of=as_of) == ([], [])  # another tenant's sweep sees nothing
    act(TENANT, assets.update_asset, aid, warranty_end=end + timedelta(days=5), user=USER)
    reported, ev = act(TENANT, assets.check_warranties, as_of=as_of)
    assert reported == [aid] and far not in reported
    assert published.expect_once("ASSET_WARRANTY_EXPIRING", ev[0][1])["payload"]["daysUntilExpiry"] == 17


def test_media_processing(act, published):
    fid, ev = act(TENANT, media.upload_file, file_name="site.jpg", content_type="image/jpeg", size_bytes=734003,
                  user=USER)  # fmt: skip
    got = published.expect_once("FILE_UPLOADED", ev[0][1])
    p = got["payload"]
    assert (p["fileId"], p["fileName"], p["contentType"], p["sizeBytes"], p["uploadedByUserId"]) == (
        fid, "site.jpg", "image/jpeg", 734003, USER)  # fmt: skip
    assert p["storageKey"] == f"tenants/{TENANT}/files/{fid}/site.jpg" and got["entry"]["to_state"] == "pending"

    def flaky(_f):
        raise media.ProcessingFailed("storage_timeout", "object store timed out", retryable=True)

    status, ev = act(TENANT, media.process_file, fid, processor=flaky)
    assert status == "failed"
    got = published.expect_once("MEDIA_PROCESSING_FAILED", ev[0][1])
    p = got["payload"]
    assert (p["fileId"], p["errorCode"], p["errorMessage"], p["retryable"]) == (
        fid, "storage_timeout", "object store timed out", True)  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("pending", "failed")

    status, ev = act(TENANT, media.process_file, fid)  # the retry succeeds
    assert status == "succeeded"
    got = published.expect_once("MEDIA_PROCESSING_SUCCEEDED", ev[0][1])
    p = got["payload"]
    assert p["fileId"] == fid and [o["kind"] for o in p["outputs"]] == ["thumbnail", "preview"]
    assert isinstance(p["durationMs"], int) and (got["entry"]["from_state"], got["entry"]["to_state"]) == (
        "failed", "succeeded")  # fmt: skip
    with pytest.raises(InvalidTransition):
        act(TENANT, media.process_file, fid)

    zid, _ = act(TENANT, media.upload_file, file_name="logs.zip", content_type="application/zip", size_bytes=10)
    status, ev = act(TENANT, media.process_file, zid)
    p = published.expect_once("MEDIA_PROCESSING_FAILED", ev[0][1])["payload"]
    assert (status, p["errorCode"], p["retryable"]) == ("failed", "unsupported_type", False)
    with pytest.raises(InvalidTransition):  # not retryable
        act(TENANT, media.process_file, zid)


def test_bad_input_emits_nothing(act, published, db_url):
    did, _ = act(TENANT, documents.upload_document, file_name="a.pdf", content_type="application/pdf", size_bytes=1)
    aid, _ = act(TENANT, assets.create_asset, name="A")
    fid, _ = act(TENANT, media.upload_file, file_name="b.png", content_type="image/png", size_bytes=1)
    bad = [
        (NotFound, TENANT, documents.delete_document, (str(uuid.uuid4()),), {}),
        (WrongTenant, OTHER, documents.associate_document, (did, "ticket", TICKET), {}),
        (InvalidInput, TENANT, documents.associate_document, (did, "spaceship", TICKET), {}),
        (InvalidInput, TENANT, documents.edit_text_document, (did, "text"), {}),  # an uploaded file
        (InvalidInput, TENANT, documents.upload_document, (),
         {"file_name": "x.pdf", "content_type": "pdf", "size_bytes": 1}),
        (NotFound, TENANT, assets.assign_asset, ("nope", "client", CLIENT), {}),
        (WrongTenant, OTHER, assets.update_asset, (aid,), {"name": "B"}),
        (InvalidTransition, TENANT, assets.unassign_asset, (aid,), {}),
        (InvalidInput, TENANT, assets.update_asset, (aid,), {"colour": "red"}),
        (WrongTenant, OTHER, media.process_file, (fid,), {}),
        (InvalidInput, TENANT, media.upload_file, (), {"file_name": "c.png", "content_type": "image/png",
                                                       "size_bytes": -1}),
    ]  # fmt: skip
    for err, tenant, fn, args, kw in bad:
        with pytest.raises(err):
            act(tenant, fn, *args, **kw, user=USER)
    with pytest.raises(InvalidInput, match="uuid"):  # the mention event is a legacy payload
        act("acme", documents.create_text_document, name="n", content=f"hi @[M](user:{MENTIONED})", user=USER)
    with pytest.raises(InvalidInput, match="acting user"):
        act(TENANT, documents.create_text_document, name="n", content=f"hi @[M](user:{MENTIONED})")
    assert count_events(db_url) == 3
