"""The loop: the tuner façade, workers, the loop's parts and callbacks, liveness, warm start
and the confirmation of picks."""
