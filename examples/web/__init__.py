"""A FastAPI web backend that asks ad-orchestrator for decisions within `tmax`."""
