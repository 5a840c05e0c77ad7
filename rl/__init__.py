"""Learning: DQN networks and trainer, environments from logs, off-policy evaluation."""
