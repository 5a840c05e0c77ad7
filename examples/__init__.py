"""Examples of applications built on ad-orchestrator."""
