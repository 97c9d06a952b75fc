"""The one training loop and what it needs: schedules, checkpoints, logging, distributed set-up, entry points."""
