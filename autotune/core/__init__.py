"""The shared vocabulary every stage may import: metrics (one declaration per metric), constraints,
the search space, Pareto maths, located YAML, cron schedules, atomic files, ``module:function`` references."""
