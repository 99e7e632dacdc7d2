"""Celery workers for digest: the app in workers.app, thin tasks in workers.tasks."""
