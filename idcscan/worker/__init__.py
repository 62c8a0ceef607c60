"""The scoring worker: Celery app and tasks, the tiling and scoring pipeline, outputs."""
