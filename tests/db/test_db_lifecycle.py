"""Claims, leases, requeues, rejected folders and the operator's view, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from smearflow.db import lifecycle
from smearflow.db import repository as repo

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_claim_slide_is_bounded_by_max_attempts(db_session, make_slide_info):
    session = db_session
    repo.register_slide(session, make_slide_info())
    session.commit()
    first = lifecycle.claim_slide(session, "S-001", max_attempts=2, task_id="t1", holder="host pid 1", now=_at(0))
    session.commit()
    assert (first.status, first.attempts, first.holder, first.task_id) == ("running", 1, "host pid 1", "t1")
    # The same message delivered again (its process died): claimed again, the attempt counts.
    again = lifecycle.claim_slide(session, "S-001", max_attempts=2, task_id="t1", now=_at(1))
    session.commit()
    assert (again.status, again.attempts) == ("running", 2)
    assert lifecycle.claim_slide(session, "S-001", max_attempts=2, task_id="t1", now=_at(2)) is None
    session.commit()
    slide = repo.get_slide(session, "S-001")
    assert slide.status == "failed"
    assert "Gave up after 2 attempt(s) (max_attempts=2)" in slide.error
    assert [e.kind for e in repo.slide_events(session, "S-001")] == ["gave-up"]
    # A finished slide is not claimed; queuing it again starts afresh.
    assert lifecycle.claim_slide(session, "S-001", max_attempts=5) is None
    repo.register_slide(session, make_slide_info())
    assert lifecycle.claim_slide(session, "S-001", max_attempts=5).attempts == 1
    repo.set_slide_status(session, "S-001", "done")
    assert lifecycle.claim_slide(session, "S-001", max_attempts=5) is None


def test_a_slide_held_by_a_live_worker_is_not_claimed_until_its_lease_expires(db_session, make_slide_info):
    session = db_session
    repo.register_slide(session, make_slide_info())
    lifecycle.claim_slide(session, "S-001", 3, task_id="t1", holder="a", lease_s=60, now=_at(0))
    assert lifecycle.claim_slide(session, "S-001", 3, task_id="t2", holder="b", lease_s=60, now=_at(30)) is None
    assert lifecycle.renew_lease(session, "S-001", "t1", now=_at(50))
    assert lifecycle.claim_slide(session, "S-001", 3, task_id="t2", holder="b", lease_s=60, now=_at(100)) is None
    taken = lifecycle.claim_slide(session, "S-001", 3, task_id="t2", holder="b", lease_s=60, now=_at(111))
    assert (taken.holder, taken.task_id, taken.attempts) == ("b", "t2", 2)
    assert not lifecycle.renew_lease(session, "S-001", "t1", now=_at(112))  # the old holder learns it lost the slide
    assert not lifecycle.renew_lease(session, "S-404", "t1")


def test_claim_slide_rejects_bad_input(db_session):
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"Received: max_attempts={bad!r}"):
            lifecycle.claim_slide(db_session, "S-001", max_attempts=bad)
    with pytest.raises(ValueError, match="Received: lease_s=0"):
        lifecycle.claim_slide(db_session, "S-001", max_attempts=3, lease_s=0)
    with pytest.raises(LookupError, match="slide_code='S-404'"):
        lifecycle.claim_slide(db_session, "S-404", max_attempts=3)


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_claim_slide_locks_the_row_on_postgres(db_engine, make_slide_info):
    from smearflow.db import session_factory

    factory = session_factory(db_engine)
    with factory() as setup:
        repo.register_slide(setup, make_slide_info())
        setup.commit()
    with factory() as first, factory() as second:
        assert lifecycle.claim_slide(first, "S-001", max_attempts=3, task_id="t1") is not None  # holds the lock
        second.execute(sa.text("SET lock_timeout = '200ms'"))
        with pytest.raises(sa.exc.OperationalError, match="lock"):
            lifecycle.claim_slide(second, "S-001", max_attempts=3, task_id="t1")
        second.rollback()
        first.commit()
        assert lifecycle.claim_slide(second, "S-001", max_attempts=3, task_id="t1").attempts == 2


def test_expired_leases_and_old_queued_slides_are_found_and_requeued(db_session, make_slide_info):
    session = db_session
    for code in ("S-RUN", "S-DEAD", "S-NEW", "S-OLD"):
        repo.register_slide(session, make_slide_info(code))
    for code in ("S-NEW", "S-OLD"):
        repo.get_slide(session, code).queued_at = _at(100 if code == "S-NEW" else 0)
    lifecycle.claim_slide(session, "S-RUN", 3, task_id="a", now=_at(0))
    lifecycle.claim_slide(session, "S-DEAD", 3, task_id="b", now=_at(0))
    lifecycle.renew_lease(session, "S-RUN", "a", now=_at(90))
    session.commit()
    assert [s.slide_code for s in lifecycle.expired_leases(session, lease_s=60, now=_at(120))] == ["S-DEAD"]
    assert [s.slide_code for s in lifecycle.queued_before(session, age_s=60, now=_at(120))] == ["S-OLD"]

    dead = repo.get_slide(session, "S-DEAD")
    lifecycle.requeue_slide(session, dead, "lease-expired", "no heartbeat", now=_at(120))
    old = repo.get_slide(session, "S-OLD")
    lifecycle.requeue_slide(session, old, "requeued", "no message on the broker", now=_at(120))
    session.commit()
    assert (dead.status, dead.attempts, dead.requeues, dead.holder, dead.queued_at) == ("queued", 1, 0, None, _at(120))
    assert (old.status, old.requeues) == ("queued", 1)
    assert [e.kind for e in repo.slide_events(session, "S-DEAD")] == ["lease-expired"]


def test_giving_up_keeps_a_stored_result(db_session, make_slide_info, make_slide_result):
    session = db_session
    repo.store_slide_result(session, make_slide_result(make_slide_info("S-DONE")), None)
    repo.register_slide(session, make_slide_info("S-DONE"))  # re-analysis requested
    repo.register_slide(session, make_slide_info("S-NEW"))
    lifecycle.give_up_slide(session, repo.get_slide(session, "S-DONE"), "lost")
    lifecycle.give_up_slide(session, repo.get_slide(session, "S-NEW"), "lost")
    session.commit()
    assert repo.get_slide(session, "S-DONE").status == "done"
    assert (repo.get_slide(session, "S-NEW").status, repo.get_slide(session, "S-NEW").error) == ("failed", "lost")


def test_rejected_folders_are_recorded(db_session):
    row = lifecycle.record_rejected_folder(db_session, "/inbox/x", "empty folder", slide_code=None)
    lifecycle.set_rejection_destination(db_session, row.id, "/failed/x")
    assert (row.folder, row.reason, row.moved_to) == ("/inbox/x", "empty folder", "/failed/x")
    for bad in ({"folder": ""}, {"reason": ""}):
        arguments = {"folder": "/inbox/y", "reason": "r", **bad}
        with pytest.raises(ValueError, match="must not be empty"):
            lifecycle.record_rejected_folder(db_session, arguments["folder"], arguments["reason"])


def test_status_summary_shows_age_attempts_holder_and_staleness(db_session, make_slide_info, make_slide_result):
    session = db_session
    for code in ("S-Q", "S-LOST", "S-R", "S-STUCK"):
        repo.register_slide(session, make_slide_info(code))
        repo.get_slide(session, code).queued_at = _at(0)
    repo.store_slide_result(session, make_slide_result(make_slide_info("S-B")), None)
    repo.record_slide_failure(session, "S-C", "gone")
    lifecycle.claim_slide(session, "S-R", 3, task_id="r", holder="gpu1 pid 7", now=_at(10))
    lifecycle.claim_slide(session, "S-STUCK", 3, task_id="s", holder="gpu2 pid 8", now=_at(10))
    lifecycle.renew_lease(session, "S-R", "r", now=_at(95))
    lifecycle.record_rejected_folder(session, "/inbox/dup", "slide id S-B is already done", slide_code="S-B")
    session.commit()
    summary = lifecycle.status_summary(session, lease_s=60, in_flight={"S-Q"}, now=_at(100))
    assert summary["counts"] == {"queued": 2, "running": 2, "done": 1, "partial": 0, "failed": 1, "rejected": 1}
    rows = {row["slide_id"]: row for row in summary["slides"]}
    assert set(rows) == {"S-Q", "S-LOST", "S-R", "S-STUCK", "S-B", "S-C"}
    assert (rows["S-Q"]["age_s"], rows["S-Q"]["stale"]) == (100.0, None)
    assert rows["S-LOST"]["stale"] == "no message on the broker"
    assert (rows["S-R"]["holder"], rows["S-R"]["age_s"], rows["S-R"]["heartbeat_age_s"], rows["S-R"]["stale"]) == (
        "gpu1 pid 7", 90.0, 5.0, None
    )
    assert rows["S-STUCK"]["stale"].startswith("no heartbeat for over 60 s")
    assert rows["S-C"]["error"] == "gone" and rows["S-C"]["age_s"] is None
    (rejected,) = summary["rejected"]
    assert (rejected["folder"], rejected["slide_id"]) == ("/inbox/dup", "S-B")
    without_broker = lifecycle.status_summary(session, lease_s=60, stale_queued_s=50, now=_at(100))
    assert {r["slide_id"]: r["stale"] for r in without_broker["slides"]}["S-Q"] == "queued for 100 s"
