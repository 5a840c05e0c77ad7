"""The four agents, one module each: a batch-working class and its thin Celery task."""
