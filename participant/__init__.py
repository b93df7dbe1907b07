"""The participant: local training of the soft prompt with the PLM frozen, and the daemon around it."""
