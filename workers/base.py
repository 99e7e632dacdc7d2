"""The base class of digest's tasks: a cap on redeliveries after a lost worker."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject

log = logging.getLogger(__name__)


def count_redelivery(client: Any, task_id: str, retries: int, ttl: int) -> int:
    """Count one more return of this run of the task; returns the count so far."""
    key = f"digest:redelivered:{task_id}:{retries}"
    with client.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, ttl)
        count, _ = pipe.execute()
    return int(count)


class DigestTask(Task):
    """Celery puts a task whose worker died back in the queue (task_reject_on_worker_lost)
    with no limit, so a task that kills its worker, out of memory say, would loop for
    ever. Past `max_redeliveries` returns the message is dropped instead: the database
    still has its work, and the sweep re-queues the deliveries it held."""

    max_redeliveries = 3

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        info = self.request.delivery_info or {}
        if not info.get("redelivered"):
            return
        ttl = 2 * int(self.app.conf.get("visibility_timeout") or 3600)
        seen = count_redelivery(self.backend.client, task_id, self.request.retries or 0, ttl)
        if seen > self.max_redeliveries:
            log.error(
                "%s[%s] came back %d times after its worker was lost; dropping it",
                self.name,
                task_id,
                seen,
            )
            raise Reject(f"redelivered {seen} times", requeue=False)
