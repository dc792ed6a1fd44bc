"""Reconciliation: slides whose worker or message was lost are sent again, within bounds."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from smearflow.db import lifecycle, repository, session_scope
from smearflow.db.models import utc_now
from smearflow.errors import TransientError
from smearflow.worker.reconcile import ReconcileLimits, RedisQueue, reconcile_slides, slide_id_of
from worker_testdata import slide_info

LIMITS = ReconcileLimits(lease_s=60, queued_grace_s=60, max_attempts=3, max_requeues=2)


class FakeBroker:
    def __init__(self, in_flight=(), down=False):
        self.in_flight = set(in_flight)
        self.down = down

    def slide_ids_in_flight(self):
        if self.down:
            raise TransientError("the broker is unavailable: connection refused")
        return self.in_flight

    def depth(self):
        return len(self.in_flight)


class Sender:
    def __init__(self, fail=False):
        self.sent, self.fail = [], fail

    def __call__(self, slide_id, done_dir, failed_dir):
        if self.fail:
            raise ConnectionError("Connection refused")
        self.sent.append((slide_id, done_dir, failed_dir))


def _queued(factory, code, age_s, **register):
    with session_scope(factory) as session:
        repository.register_slide(session, slide_info(code, f"/inbox/{code}"), **register)
        repository.get_slide(session, code).queued_at = utc_now() - timedelta(seconds=age_s)


def _running(factory, code, silent_s, attempts=1):
    _queued(factory, code, 0)
    with session_scope(factory) as session:
        slide = lifecycle.claim_slide(session, code, 9, task_id=f"task-{code}", holder="gpu1 pid 4")
        slide.attempts = attempts
        slide.heartbeat_at = utc_now() - timedelta(seconds=silent_s)


def _slide(factory, code):
    with session_scope(factory) as session:
        slide = repository.get_slide(session, code)
        return slide.status, slide.attempts, slide.requeues, slide.error


def test_a_slide_whose_worker_stopped_renewing_its_lease_is_sent_again(db_factory):
    _running(db_factory, "S-DEAD", silent_s=90)
    _running(db_factory, "S-LIVE", silent_s=10)
    send = Sender()
    report = reconcile_slides(db_factory, FakeBroker(), send, LIMITS)
    assert (report.resent, report.given_up, report.broker_checked) == (["S-DEAD"], [], True)
    assert send.sent == [("S-DEAD", None, None)]
    assert _slide(db_factory, "S-DEAD") == ("queued", 1, 0, None)
    assert _slide(db_factory, "S-LIVE")[0] == "running"
    with session_scope(db_factory) as session:
        (event,) = repository.slide_events(session, "S-DEAD")
        assert (event.kind, event.detail) == ("lease-expired", "no heartbeat from gpu1 pid 4 for over 60 s")


def test_a_lost_worker_past_max_attempts_is_given_up_and_sent_for_archiving(db_factory):
    _running(db_factory, "S-POISON", silent_s=90, attempts=3)
    send = Sender()
    report = reconcile_slides(db_factory, FakeBroker(), send, LIMITS)
    assert (report.resent, report.given_up) == ([], ["S-POISON"])
    assert [s[0] for s in send.sent] == ["S-POISON"]
    status, _, _, error = _slide(db_factory, "S-POISON")
    assert status == "failed" and "Gave up after 3 attempt(s)" in error and "gpu1 pid 4" in error


def test_a_queued_slide_without_a_message_is_sent_again_within_bounds(db_factory):
    _queued(db_factory, "S-LOST", age_s=120, done_dir="/lab/done", failed_dir="/lab/failed")
    _queued(db_factory, "S-WAITING", age_s=120)
    _queued(db_factory, "S-FRESH", age_s=5)
    broker = FakeBroker(in_flight={"S-WAITING"})
    send = Sender()
    assert reconcile_slides(db_factory, broker, send, LIMITS).resent == ["S-LOST"]
    assert send.sent == [("S-LOST", "/lab/done", "/lab/failed")]
    assert _slide(db_factory, "S-LOST") == ("queued", 0, 1, None)
    assert reconcile_slides(db_factory, broker, send, LIMITS).resent == []  # just sent: within its grace
    for requeues in (1, 2):
        with session_scope(db_factory) as session:
            repository.get_slide(session, "S-LOST").queued_at = utc_now() - timedelta(seconds=120)
        report = reconcile_slides(db_factory, broker, send, LIMITS)
    assert report.given_up == ["S-LOST"]
    status, _, requeues, error = _slide(db_factory, "S-LOST")
    assert (status, requeues) == ("failed", 2) and "its message was lost by the broker 3 time(s)" in error


def test_an_unreadable_broker_leaves_queued_slides_alone_but_expired_leases_are_handled(db_factory):
    _queued(db_factory, "S-Q", age_s=600)
    _running(db_factory, "S-R", silent_s=600)
    report = reconcile_slides(db_factory, FakeBroker(down=True), Sender(), LIMITS)
    assert (report.resent, report.broker_checked) == (["S-R"], False)
    without_broker = reconcile_slides(db_factory, None, Sender(), LIMITS)
    assert (without_broker.resent, without_broker.broker_checked) == ([], False)
    assert _slide(db_factory, "S-Q") == ("queued", 0, 0, None)


def test_a_send_that_fails_is_transient_and_the_slide_stays_queued(db_factory):
    _running(db_factory, "S-R", silent_s=600)
    with pytest.raises(TransientError, match="reconciliation could not send slide S-R"):
        reconcile_slides(db_factory, FakeBroker(), Sender(fail=True), LIMITS)
    assert _slide(db_factory, "S-R")[0] == "queued"


def test_the_database_down_is_transient(tmp_path):
    from smearflow.db import make_engine, session_factory

    factory = session_factory(make_engine(f"sqlite:///{tmp_path}/missing/x.db"))
    with pytest.raises(TransientError, match="The database is unavailable"):
        reconcile_slides(factory, FakeBroker(), Sender(), LIMITS)


def test_slide_ids_are_read_from_analysis_messages_only():
    from base64 import b64encode

    body = b64encode(json.dumps([["S-1"], {"done_dir": None}, {}]).encode()).decode()
    message = {"body": body, "headers": {"task": "smearflow.analyze_slide"}, "properties": {"body_encoding": "base64"}}
    assert slide_id_of(json.dumps(message)) == "S-1"
    by_keyword = dict(message, body=b64encode(json.dumps([[], {"slide_id": "S-2"}, {}]).encode()).decode())
    assert slide_id_of(json.dumps(by_keyword)) == "S-2"
    assert slide_id_of(json.dumps(dict(message, headers={"task": "smearflow.reconcile"}))) is None
    assert slide_id_of(b"not json") is None and slide_id_of(json.dumps({"body": "@@"})) is None


@pytest.mark.integration
def test_the_redis_queue_sees_sent_and_delivered_messages(redis_url):
    import uuid

    import redis

    from smearflow.worker.app import make_celery_app
    from smearflow.worker.enqueue import celery_sender
    from smearflow.worker.settings import WorkerSettings

    queue = f"test-{uuid.uuid4().hex[:8]}-slides"
    app = make_celery_app(WorkerSettings(broker_url=redis_url, slides_queue=queue, training_queue=queue + "-t"))
    client = redis.Redis.from_url(redis_url)
    clock = [0.0]
    view = RedisQueue(redis_url, queue, stale_unacked_s=100, clock=lambda: clock[0])
    tag = f"tag-{uuid.uuid4().hex}"
    other = f"tag-{uuid.uuid4().hex}"
    try:
        send = celery_sender(app)
        send("S-A", None, None)
        send("S-B", "/done", None)
        assert view.depth() == 2 and view.slide_ids_in_flight() == {"S-A", "S-B"}
        # A worker took S-A: it moves to the unacked hash, stamped with its delivery time.
        raw = client.rpop(queue)
        client.hset("unacked", tag, json.dumps([json.loads(raw), "", queue]))
        client.zadd("unacked_index", {tag: 1000.0})
        # Another deployment's message on the same Redis does not count.
        client.hset("unacked", other, json.dumps([json.loads(raw), "", "another-queue"]))
        client.zadd("unacked_index", {other: 1000.0})
        clock[0] = 1050.0
        assert view.depth() == 1 and view.slide_ids_in_flight() == {"S-A", "S-B"}
        clock[0] = 1200.0  # delivered long ago: its worker is gone
        assert view.slide_ids_in_flight() == {"S-B"}
        client.rpush(queue, raw)
        client.hdel("unacked", tag)
        assert RedisQueue(redis_url, "another-queue", stale_unacked_s=100, clock=lambda: 1050.0).slide_ids_in_flight() == {"S-A"}
    finally:
        client.delete(queue)
        client.hdel("unacked", tag, other)
        client.zrem("unacked_index", tag, other)
        client.close()
        app.close()
    with pytest.raises(TransientError, match="the broker is unavailable"):
        RedisQueue("redis://127.0.0.1:1/0", queue, stale_unacked_s=1).depth()
