"""Subject builders: the one place subject names are spelled."""

import re
from dataclasses import dataclass
from typing import Annotated

from msgspec import Meta

from schemas.ids import check_id

DEFAULT_PREFIX = "llorch.v1"
# NATS's reply inbox prefix; a client with an identity gets `_INBOX.<identity>` (its replies
# only: the permissions and the orchestrator's tenancy both read the identity from it)
DEFAULT_INBOX = "_INBOX"

# A subject one can publish to (a job's stream, a reply inbox): dot-separated non-empty tokens
# with no wildcard (`*`, `>`), whitespace or control character, at most MAX_SUBJECT_CHARS.
# The orchestrator drops a generate request whose reply subject breaks it; a worker refuses an
# execute whose stream does.
MAX_SUBJECT_CHARS = 256
_TOKEN = r"[^.*>\s\x00-\x1f\x7f]+"
SUBJECT_PATTERN = rf"^{_TOKEN}(\.{_TOKEN})*\Z"
_SUBJECT = re.compile(SUBJECT_PATTERN)
PublishSubject = Annotated[str, Meta(max_length=MAX_SUBJECT_CHARS, pattern=SUBJECT_PATTERN)]


def is_publish_subject(subject: str) -> bool:
    return len(subject) <= MAX_SUBJECT_CHARS and bool(_SUBJECT.match(subject))


@dataclass(frozen=True, slots=True)
class Subjects:
    prefix: str = DEFAULT_PREFIX

    # client -> orchestrator
    @property
    def generate(self) -> str:
        return f"{self.prefix}.api.generate"

    @property
    def cancel(self) -> str:
        return f"{self.prefix}.api.cancel"

    @property
    def jobs_get(self) -> str:
        return f"{self.prefix}.api.jobs.get"

    @property
    def state(self) -> str:
        return f"{self.prefix}.api.state"

    @property
    def models(self) -> str:
        return f"{self.prefix}.api.models"

    # pool <-> orchestrator
    def heartbeat(self, pool: str) -> str:
        return f"{self.prefix}.pool.{check_id(pool, 'pool id')}.heartbeat"

    @property
    def heartbeat_all(self) -> str:
        return f"{self.prefix}.pool.*.heartbeat"

    @property
    def leader(self) -> str:
        """Where an orchestrator announces that it took the lead (`Leadership`)."""
        return f"{self.prefix}.leader"

    @property
    def snapshot_request(self) -> str:
        """Orchestrator asks every pool to heartbeat now (used at its start)."""
        return f"{self.prefix}.pools.snapshot"

    def spawn(self, pool: str) -> str:
        return f"{self.prefix}.pool.{check_id(pool, 'pool id')}.spawn"

    def stop(self, pool: str) -> str:
        return f"{self.prefix}.pool.{check_id(pool, 'pool id')}.stop"

    # worker
    def ready(self, worker: str) -> str:
        return f"{self.prefix}.worker.{check_id(worker, 'worker id')}.ready"

    @property
    def ready_all(self) -> str:
        return f"{self.prefix}.worker.*.ready"

    def execute(self, worker: str) -> str:
        return f"{self.prefix}.worker.{check_id(worker, 'worker id')}.execute"

    def worker_cancel(self, worker: str) -> str:
        return f"{self.prefix}.worker.{check_id(worker, 'worker id')}.cancel"

    def job_status(self, job: str) -> str:
        return f"{self.prefix}.job.{check_id(job, 'job id')}.status"

    @property
    def job_status_all(self) -> str:
        return f"{self.prefix}.job.*.status"

    # batch (JetStream). Every batch subject names its producer's namespace before the batch
    # id, so the server's permissions keep producers apart (docs/batch.md#namespaces).
    def batch_submit(self, producer: str, batch: str, custom_id: str | None = None) -> str:
        """One job's submit subject, or all of a batch's jobs when `custom_id` is None. The
        custom id is in the subject so that the stream keeps one message per job on a subject
        only its producer may publish to (docs/batch.md#de-duplication)."""
        tail = "*" if custom_id is None else check_id(custom_id, "custom id")
        return f"{self.prefix}.batch.submit.{_batch(producer, batch)}.{tail}"

    @property
    def batch_submit_all(self) -> str:
        return f"{self.prefix}.batch.submit.*.*.*"

    def batch_result(self, producer: str, batch: str, custom_id: str | None = None) -> str:
        """One job's result subject, or all of a batch's results when `custom_id` is None."""
        tail = ">" if custom_id is None else check_id(custom_id, "custom id")
        return f"{self.prefix}.batch.result.{_batch(producer, batch)}.{tail}"

    def batch_cancelled(self, producer: str, batch: str) -> str:
        """Durable marker (in the results stream) that a batch was cancelled."""
        return f"{self.prefix}.batch.cancelled.{_batch(producer, batch)}"

    def batch_event(self, producer: str, batch: str) -> str:
        return f"{self.prefix}.batch.event.{_batch(producer, batch)}"

    def batch_status(self, producer: str) -> str:
        return f"{self.prefix}.api.batch.{check_id(producer, 'producer')}.status"

    def batch_cancel(self, producer: str) -> str:
        return f"{self.prefix}.api.batch.{check_id(producer, 'producer')}.cancel"

    def batch_api_all(self, verb: str) -> str:
        """Every namespace's `status` or `cancel` requests (the orchestrator serves them all)."""
        return f"{self.prefix}.api.batch.*.{verb}"


def _batch(producer: str, batch: str) -> str:
    """`<producer>.<batch>`: the two tokens that name a batch in every batch subject."""
    return f"{check_id(producer, 'producer')}.{check_id(batch, 'batch id')}"
