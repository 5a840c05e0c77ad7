"""ad-orchestrator: a multi-agent ad decision service on Celery."""
