"""Tenancy in the core: a caller sees and acts on only its own jobs (operators on all), and
another identity's job answers exactly as an unknown id does."""

from dataclasses import replace

import msgspec

from llorch_orch.core import Core
from llorch_orch.core import events as ev
from llorch_orch.core.report import cluster_state
from llorch_orch.core.tenancy import ANYONE, Caller, Tenancy, inbox_identity
from schemas import CancelReply, Error
from schemas.codes import ErrorCode

from .factory import T0, cancel, cancels, heartbeat, make_core, status, submit, winfo

A, B = Caller("UA"), Caller("UB")
OPERATOR = Caller("UOP", operator=True)


def submit_as(owner: str | None, job_id: str) -> ev.Submit:
    return replace(submit(job_id), owner=owner)


def two_tenants() -> Core:
    """A's a1 and B's b1 run (workers wa, wb); A's a2, B's b2 and an ownerless n1 wait."""
    core = make_core()
    core.handle(heartbeat(workers=[winfo("wa"), winfo("wb")]))
    for owner, job_id in (("UA", "a1"), ("UB", "b1"), ("UA", "a2"), ("UB", "b2"), (None, "n1")):
        core.handle(submit_as(owner, job_id))
    return core


def job_ids(core: Core, caller: Caller) -> tuple[list[str], list[str]]:
    state = cluster_state(core, T0, caller)
    return [j.job_id for j in state.queue], [j.job_id for j in state.running]


def test_the_owner_is_the_inbox_token_of_the_reply_subject() -> None:
    assert inbox_identity("_INBOX.UKEY.abc.1") == "UKEY"
    assert inbox_identity("_INBOX.alice.x") == "alice"
    for subject in ("_INBOX.UKEY", "_INBOX", "_INBOX..x", "reply.UKEY.x", "_INBOXX.UKEY.x", ""):
        assert inbox_identity(subject) is None, subject


def test_callers_are_read_from_the_reply_subject_only_when_tenancy_is_on() -> None:
    assert Tenancy().caller("_INBOX.UA.x") == ANYONE  # an open server: everybody sees all
    on = Tenancy(on=True, operators=frozenset({"UOP"}))
    assert on.caller("_INBOX.UA.x") == Caller("UA")
    assert on.caller("_INBOX.UOP.x") == Caller("UOP", operator=True)
    assert on.caller("elsewhere") == Caller(None)


def test_tenancy_is_on_when_the_orchestrators_own_inbox_is_an_identitys() -> None:
    assert Tenancy.of("_INBOX.UORCH", ["UOP"]) == Tenancy(on=True, operators=frozenset({"UOP"}))
    assert not Tenancy.of("_INBOX").on  # no credentials, a token, a creds file: no identities


def test_state_shows_a_caller_its_own_jobs_and_every_pool() -> None:
    core = two_tenants()
    assert job_ids(core, A) == (["a2"], ["a1"])
    assert job_ids(core, B) == (["b2"], ["b1"])
    everything = (["a2", "b2", "n1"], ["a1", "b1"])
    assert job_ids(core, OPERATOR) == everything
    assert job_ids(core, ANYONE) == everything
    assert job_ids(core, Caller(None)) == ([], [])  # no identity: owns nothing, not even n1
    state = cluster_state(core, T0, B)
    assert [w.worker_id for w in state.pools[0].workers] == ["wa", "wb"]  # all workers shown
    assert [j.position for j in state.queue] == [2]  # its place among all waiting jobs


def test_the_queue_limit_counts_only_the_callers_jobs() -> None:
    core = two_tenants()
    for n in range(3):
        core.handle(submit_as("UA", f"a{n + 3}"))
    assert [j.job_id for j in core.queued_infos(limit=2, caller=B)] == ["b2"]
    assert [j.job_id for j in core.queued_infos(limit=2, caller=A)] == ["a2", "a3"]


def test_another_tenants_job_is_as_unknown_as_a_bad_id() -> None:
    core = two_tenants()
    unknown_info = core.job_info("zz", B)
    unknown_cancel, _ = cancel(core, T0, "zz", B)
    for job_id in ("a1", "a2"):  # running and queued
        assert core.job_info(job_id, B) is unknown_info is None
        reply, out = cancel(core, T0, job_id, B)
        assert reply == msgspec.structs.replace(unknown_cancel, message=f"no job {job_id}")
        assert isinstance(reply, Error) and reply.code == ErrorCode.NOT_FOUND
        assert out == []  # no cancel sent, nothing emitted
    # untouched, and still visible to their owner
    assert (core.job_info("a1", A).state, core.job_info("a2", A).state) == ("running", "queued")
    assert "a2" in core.queue
    nobody = cancel(core, T0, "n1", Caller(None))[0]  # no identity acts on no job, ownerless too
    assert isinstance(nobody, Error) and nobody.code == ErrorCode.NOT_FOUND and "n1" in core.queue


def test_a_caller_cancels_its_own_and_an_operator_anyones() -> None:
    core = two_tenants()
    reply, out = cancel(core, T0, "a1", A)
    assert reply == CancelReply(job_id="a1", outcome="cancelled")
    assert [(c.worker_id, c.job_id) for c in cancels(out)] == [("wa", "a1")]
    reply, out = cancel(core, T0, "b1", OPERATOR)
    assert reply.outcome == "cancelled"  # type: ignore[union-attr]
    assert [(c.worker_id, c.job_id) for c in cancels(out)] == [("wb", "b1")]


def test_finished_jobs_stay_their_owners() -> None:
    core = two_tenants()
    core.handle(status("a1", "wa", "finished", seq=3))
    info = core.job_info("a1", A)
    assert info is not None and info.state == "finished"
    assert core.job_info("a1", B) is None
    assert cancel(core, T0, "a1", A)[0] == CancelReply(job_id="a1", outcome="already_finished")
    reply = cancel(core, T0, "a1", B)[0]
    assert isinstance(reply, Error) and reply.code == ErrorCode.NOT_FOUND
    assert core.job_info("a1", OPERATOR) == info  # an operator sees anyone's
