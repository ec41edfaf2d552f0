"""The job file: what it means (:mod:`.spec`), the parameters it may name (:mod:`.declared`),
this machine's and the job's restriction of the space (:mod:`.machine`), the portfolio
(:mod:`.portfolio`), the job ``autotune optimize`` derives (:mod:`.optimize`) and ``autotune validate``
(:mod:`.check`)."""
