"""What the trainer, the worker and the API share. Never imports Flask, Celery or torch."""
