"""The one training loop and what it needs: schedules, checkpoints, logging, distributed set-up, entry points."""

# Written last, atomically, by a finished job: what "done" means to the launcher (importable without torch).
RESULT_FILE = "result.json"
