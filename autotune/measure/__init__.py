"""Measuring one configuration: the isolated harness (:mod:`.harness`: statistics, contention,
locks, hardware), the workloads it is handed (:mod:`.workloads`: forward pass, generation, a user's
objective), the runtimes that run a model (:mod:`.runtimes`) and the transforms that change it
(:mod:`.transforms`)."""
