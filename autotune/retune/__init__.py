"""Re-tuning on a schedule: challenger against champion, then promotion (:mod:`.schedule`)."""
