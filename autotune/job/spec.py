"""The job spec: YAML in, an immutable validated :class:`Job` out.

Parsing and validation only.  Every error names the file, the line and the field path, says what
was expected and what was found (:class:`autotune.errors.SpecError`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autotune.agents import AGENTS, DEFAULT_AGENT
from autotune.core.constraints import Constraint, ConstraintSyntaxError, parse_constraint
from autotune.core.cron import ScheduleError, parse_schedule
from autotune.core.metrics import (
    FORWARD,
    Direction,
    MetricInfo,
    generation_vocabulary,
    vocabulary,
    workload_metrics,
)
from autotune.core.pareto import parse_rule
from autotune.core.space import (
    RULE_KEYS,
    DeclaredParam,
    SearchSpace,
    check_declared,
    describe,
    merge_overrides,
    parse_space,
    preset_path,
)
from autotune.core.yamlsrc import Located, dotted, load_located
from autotune.errors import SpecError
from autotune.job.declared import declared_generation_parameters, declared_parameters
from autotune.job.portfolio import check_entries, job_portfolio, parse_portfolio
from autotune.measure.runtimes import entry_points

REF_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
FIDELITY_METRICS = ("top1_agreement", "cosine", "mse")
BUILTIN_QUALITY = ("accuracy", *FIDELITY_METRICS)
#: Hugging Face encoder tasks (``model: {huggingface: ..., task: ...}``) and their default
#: fidelity metric against the unmodified model
ENCODER_TASKS = {"feature-extraction": "cosine", "text-classification": "top1_agreement"}
GENERATION_QUALITY = "token_agreement"  # text-generation jobs: greedy tokens vs the unmodified model
TASKS = ("text-generation", *ENCODER_TASKS)


_NUMBERS = (int, float, int | None, float | None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        """``warmup: false`` is a mistake, not 0 (pydantic's lax mode would take it)."""
        if isinstance(v, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and field.annotation in _NUMBERS:
                raise ValueError(f"expected a number, found {str(v).lower()} (a boolean)")
        return v


def _check_ref(v: str | None) -> str | None:
    if v is not None and not REF_PATTERN.match(v):
        raise ValueError(
            f"expected 'package.module:function', found {v!r}"
        )
    return v


class ModelSpec(_Strict):
    """Either a torch model factory (``module:function`` → (module, example_inputs)) or an ONNX
    file; or, for ``task: text-generation``, a Hugging Face model folder / cached id
    (``huggingface:``) or a factory returning one; or a Hugging Face encoder (``huggingface:``
    with ``task: feature-extraction | text-classification``) run on ``evaluation.texts``."""

    factory: str | None = None
    onnx: str | None = None
    huggingface: str | None = None
    task: Literal["text-generation", "feature-extraction", "text-classification"] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    #: extra dynamic axes for the ONNX export, per input: {input_0: {1: sequence}}
    dynamic_axes: dict[str, dict[int, str]] = Field(default_factory=dict)

    _ref = field_validator("factory")(_check_ref)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if sum(x is not None for x in (self.factory, self.onnx, self.huggingface)) != 1:
            raise ValueError("give exactly one of 'factory' (module:function), 'onnx' (a file) "
                             "or 'huggingface' (a model folder or cached id, with task: "
                             "text-generation)")
        if self.huggingface is not None and self.task is None:
            raise ValueError("a 'huggingface' model needs a 'task': text-generation, "
                             "feature-extraction or text-classification")
        if self.task in ENCODER_TASKS and self.huggingface is None:
            raise ValueError(f"task '{self.task}' needs a 'huggingface' model (a folder saved with "
                             "save_pretrained, or a cached model id)")
        if self.onnx is not None and self.task is not None:
            raise ValueError("task 'text-generation' needs a 'huggingface' model or a 'factory' "
                             "returning its folder, not an ONNX file")
        return self

    @property
    def is_generation(self) -> bool:
        return self.task == "text-generation"

    @property
    def is_encoder(self) -> bool:
        """A Hugging Face encoder: tokenized ``evaluation.texts`` in, named tensors out."""
        return self.task in ENCODER_TASKS


class EvaluationSpec(_Strict):
    """How quality is judged: a dataset and a metric, or fidelity to the unmodified model."""

    dataset: str | None = None
    metric: str = "accuracy"
    higher_is_better: bool | None = None
    max_samples: int = Field(default=1024, ge=1)
    calibration_samples: int = Field(default=128, ge=1)
    #: module:function(outputs, targets) -> scalar torch loss, for gradient-aware pruning
    #: (default: cross-entropy for 'accuracy' jobs)
    loss: str | None = None
    #: Hugging Face encoder jobs: the texts tokenized as evaluation (and calibration) inputs, a
    #: list or a UTF-8 file with one text per line (relative to the job file)
    texts: str | list[str] | None = None
    sequence_length: int = Field(default=128, ge=1)
    #: 'max_length' pads every text to sequence_length; 'longest' to the longest text
    padding: Literal["max_length", "longest"] = "max_length"

    _ref = field_validator("dataset", "loss")(_check_ref)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in (*BUILTIN_QUALITY, GENERATION_QUALITY) and not REF_PATTERN.match(v):
            plugins = entry_points("autotune.metrics")  # installed metric plugins
            if v in plugins:
                return v
            raise ValueError(
                f"expected one of {', '.join([*BUILTIN_QUALITY, *plugins])} or 'module:function', "
                f"found {v!r}"
            )
        return v

    @property
    def is_fidelity(self) -> bool:
        return self.metric in FIDELITY_METRICS

    @property
    def quality_name(self) -> str:
        return self.metric.rsplit(":", 1)[-1]

    @property
    def quality_higher_is_better(self) -> bool:
        if self.higher_is_better is not None:
            return self.higher_is_better
        return self.metric != "mse"

    @model_validator(mode="after")
    def _needs_data(self) -> EvaluationSpec:
        if isinstance(self.texts, list) and not self.texts:
            raise ValueError("'texts' is empty: give at least one text (or a file path)")
        if self.texts is not None and self.dataset is not None:
            raise ValueError("give either 'texts' (Hugging Face encoder jobs) or 'dataset', "
                             "not both")
        if self.dataset is None and not self.is_fidelity and self.metric != GENERATION_QUALITY:
            raise ValueError(
                f"metric '{self.metric}' needs a 'dataset' (module:function returning "
                f"(inputs, targets)); or use a fidelity metric ({', '.join(FIDELITY_METRICS)})"
            )
        return self


class ObjectiveSpec(_Strict):
    metric: str
    direction: Direction | None = None


class WarmStartFromSpec(_Strict):
    """Seed a job from an earlier study: its best feasible (Pareto) trials are replayed into the
    agent and their configurations queued for re-measurement on this machine."""

    storage: str  # an Optuna storage URL, or a path to a study.db (relative to the job file)
    study: str
    top_k: int = Field(default=5, ge=1)

    _storage = field_validator("storage")(
        classmethod(lambda cls, v: _check_storage_url(v) if "://" in v else v))


class AgentSpec(_Strict):
    name: str = Field(default_factory=lambda: _default_agent())
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)  # numpy/Optuna seed range
    options: dict[str, Any] = Field(default_factory=dict)
    warm_start: list[dict[str, Any]] = Field(default_factory=list)
    warm_start_from: WarmStartFromSpec | None = None


def _default_agent() -> str:
    return DEFAULT_AGENT


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")


def parse_duration(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, int | float) and not isinstance(v, bool):
        seconds = float(v)
    else:
        m = _DURATION.match(str(v)) if isinstance(v, str) else None
        if not m:
            raise ValueError(
                f"expected seconds or a duration like '90s', '10m', '2h', found {v!r}")
        seconds = float(m[1]) * {"s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expected a positive duration (seconds, or like '90s', '10m', '2h'), "
                         f"found {v!r}")
    return seconds


def _check_storage_url(v: str | None) -> str | None:
    """An Optuna (SQLAlchemy) database URL: ``sqlite:///path/study.db``,
    ``postgresql://user@host/db``, ..."""
    if v is None:
        return v
    from sqlalchemy.engine import make_url

    try:
        make_url(v).get_dialect()
    except Exception:
        raise ValueError(
            f"expected a database URL such as 'sqlite:///runs/study.db' or "
            f"'postgresql://user@host/db', found {v!r}") from None
    return v


_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _check_tracking_uri(v: str | None) -> str | None:
    """An MLflow tracking URI: ``http(s)://host[:port]``, ``file:/path``, a database URL
    (``sqlite:///mlflow.db``, ``postgresql://...``) or ``databricks``."""
    if v is None:
        return v
    from urllib.parse import urlsplit

    expected = ("expected an MLflow tracking URI such as 'http://127.0.0.1:5000', "
                "'sqlite:///runs/mlflow.db' or 'file:./mlruns'")
    try:
        parts = urlsplit(v)
    except ValueError:
        raise ValueError(f"{expected}, found {v!r}") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname or any(c.isspace() for c in v):
            raise ValueError(f"{expected}; the URL has no host name, found {v!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"{expected}; the port is not a number, found {v!r}") from None
        return v
    if scheme == "file" or scheme.startswith("databricks") or scheme == "uc":
        return v
    if v == "databricks":
        return v
    if scheme.split("+")[0] in _DB_SCHEMES:
        return _check_storage_url(v)
    raise ValueError(f"{expected}, found {v!r}")


class BudgetSpec(_Strict):
    max_trials: int = Field(default=20, ge=1)
    timeout: float | None = None  # seconds of tuning (not counting the baseline)

    _dur = field_validator("timeout", mode="before")(classmethod(lambda cls, v: parse_duration(v)))


class MeasurementSpec(_Strict):
    warmup: int = Field(default=5, ge=0)
    min_repeats: int = Field(default=20, ge=1)
    max_repeats: int = Field(default=1000, ge=1)
    target_ci: float = Field(default=0.03, gt=0, lt=1)
    max_time_s: float = Field(default=2.0, gt=0)
    trial_timeout_s: float = Field(default=300.0, gt=0)
    memory_limit_mb: int | None = Field(default=None, ge=64)
    price_per_hour: float | None = Field(default=None, gt=0)
    # contention (autotune.measure.harness.contention): other processes' share of the measured cores
    # above which a measurement is contended, and how long to wait for quiet cores first
    contention_threshold_pct: float = Field(default=25.0, gt=0, le=100)
    contention_wait_s: float = Field(default=2.0, ge=0)
    # a contended measurement is re-measured beside the baseline; it first waits this long for
    # quiet cores, else it is ranked by its interleaved ratio to the baseline (autotune.tuning.confirm)
    quiet_wait_s: float = Field(default=30.0, ge=0)


class TrackingSpec(_Strict):
    uri: str | None = None
    experiment: str | None = None
    enabled: bool = True

    _uri = field_validator("uri")(classmethod(lambda cls, v: _check_tracking_uri(v)))


class ReportSpec(_Strict):
    """What ``autotune report`` highlights: selection rules (see :func:`autotune.core.pareto.parse_rule`)
    and, optionally, the hypervolume reference point (one value per objective)."""

    rules: list[str] = Field(default_factory=list)
    reference: dict[str, float] | None = None

    @field_validator("rules")
    @classmethod
    def _rules(cls, v: list[str]) -> list[str]:
        for text in v:
            try:
                parse_rule(text)
            except SpecError as exc:  # as ValueError, so the error keeps the file and line
                raise ValueError(exc.reason.rstrip(".")) from None
        return v


class RetuneSpec(_Strict):
    """Policy of scheduled re-tuning (``autotune schedule`` / ``autotune retune``)."""

    drift_threshold: float = Field(default=0.1, gt=0)  # relative change of an objective
    budget: int = Field(default=10, ge=1)  # trials of one re-tune
    margin: float = Field(default=0.02, ge=0)  # a challenger must win by more than this (relative)
    warm_start: int = Field(default=3, ge=0)  # best earlier configurations re-measured first
    alias: str = Field(default="champion", pattern=r"^[A-Za-z0-9][\w.-]*$")
    rounds: int = Field(default=5, ge=1)  # side-by-side rounds champion vs challenger


# ---------------------------------------------------------------- text-generation workload
class PromptWindowsSpec(_Strict):
    """Prompts cut from a text: ``count`` windows of ``min_tokens``..``max_tokens`` words
    (uniform, seeded) from a text file or ``module:function`` returning a string."""

    text: str
    count: int = Field(default=32, ge=1)
    min_tokens: int = Field(default=4, ge=1)
    max_tokens: int = Field(default=32, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _order(self) -> PromptWindowsSpec:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is above max_tokens "
                             f"({self.max_tokens})")
        return self


class LengthRangeSpec(_Strict):
    """Per-request output lengths, uniform in [min, max] (seeded)."""

    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self) -> LengthRangeSpec:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class SLOSpec(_Strict):
    """Service-level objectives of a generation workload: a request meets them when its time to
    first token and its time per output token are within these limits (genai-perf's goodput);
    ``autotune goodput`` searches the highest arrival rate whose p95s stay within them."""

    ttft_ms: float = Field(default=200.0, gt=0)
    tpot_ms: float = Field(default=50.0, gt=0)


class GenerationWorkloadSpec(_Strict):
    """What one measurement of a text-generation job serves.

    ``prompts``: a list of strings, a text file (one prompt per line, relative to the job file),
    ``module:function`` returning a list of strings, or windows cut from a text
    (:class:`PromptWindowsSpec`).  ``requests`` requests are served (prompts reused in order), by
    ``concurrency`` clients that each send the next request ``turnaround_ms`` after the previous
    one finished (their first requests spread over one turnaround), or (``request_rate``,
    requests/s) arriving as a Poisson process.  ``held_out``: text for the
    perplexity check (a file or ``module:function`` returning a string; default: the prompts).
    ``slo``: the limits ``goodput_rps`` counts requests against (default TTFT 200 ms, TPOT 50 ms).
    """

    prompts: list[str] | str | PromptWindowsSpec
    max_new_tokens: int | LengthRangeSpec = 32
    concurrency: int = Field(default=1, ge=1)
    request_rate: float | None = Field(default=None, gt=0)
    #: a closed-loop client's time from one request's end to the engine's receiving its next
    #: (HTTP, JSON, tokenization): 10 ms, the median of the p50s profiled through `autotune
    #: serve` and the openai client (experiments/profile_genserve.py: 13.0, 10.0, 8.2 ms)
    turnaround_ms: float = Field(default=10.0, ge=0)
    requests: int | None = Field(default=None, ge=1)  # default: one per prompt
    held_out: str | None = None
    seed: int = 0
    slo: SLOSpec = Field(default_factory=SLOSpec)

    @field_validator("prompts", "max_new_tokens", mode="before")
    @classmethod
    def _mapping_form(cls, v: Any, info: Any) -> Any:
        """A mapping is the structured form; validate it as such (one clear error, not one per
        member of the union)."""
        if not isinstance(v, Mapping):
            if info.field_name == "max_new_tokens" and isinstance(v, int) \
                    and not isinstance(v, bool) and v < 1:
                raise ValueError(f"expected an integer >= 1 (tokens generated per request), "
                                 f"found {v}")
            return v
        model = PromptWindowsSpec if info.field_name == "prompts" else LengthRangeSpec
        try:
            return model.model_validate(v)
        except ValidationError as err:
            e = err.errors()[0]
            where = ".".join(map(str, e["loc"]))
            msg = e["msg"].removeprefix("Value error, ")
            allowed = ", ".join(model.model_fields)
            raise ValueError(f"{where + ': ' if where else ''}{msg} (keys: {allowed})") from None

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or not all(isinstance(p, str) and p.strip() for p in v)):
            raise ValueError("expected a non-empty list of non-empty prompt strings")
        return v

    @model_validator(mode="after")
    def _one_arrival_process(self) -> GenerationWorkloadSpec:
        closed = {"concurrency", "turnaround_ms"} & self.model_fields_set
        if self.request_rate is not None and closed:
            raise ValueError(
                f"give either '{sorted(closed)[0]}' (a closed loop: 'concurrency' clients, each "
                "sending its next request 'turnaround_ms' after the previous one was served) or "
                "'request_rate' (open loop: Poisson arrivals at that many requests/s), not both")
        return self

    @property
    def max_output_tokens(self) -> int:
        m = self.max_new_tokens
        return m if isinstance(m, int) else m.max


def _check_schedule(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        parse_schedule(str(v))
    except ScheduleError as exc:
        raise ValueError(str(exc)) from None
    return str(v)


class Job(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$")
    description: str = ""
    model: ModelSpec | None = None
    evaluation: EvaluationSpec | None = None
    objective: str | None = None  # module:function(config) -> {metric: value}; replaces model
    baseline: dict[str, Any] | None = None  # for custom objectives: the configuration to compare to
    search_space: dict[str, Any]
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    constraints: list[str] = Field(default_factory=list)
    agent: AgentSpec = Field(default_factory=AgentSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    measurement: MeasurementSpec = Field(default_factory=MeasurementSpec)
    storage: str | None = None
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    output_dir: str | None = None
    schedule: str | None = None  # cron expression or interval ('6h') for re-tuning
    retune: RetuneSpec = Field(default_factory=RetuneSpec)
    workload: GenerationWorkloadSpec | None = None  # text-generation jobs (model.task)
    # Filled by the loader, not by users:
    source: str = Field(default="<memory>", exclude=True)
    base_dir: str = Field(default=".", exclude=True)

    _objective_ref = field_validator("objective")(_check_ref)
    _storage = field_validator("storage")(classmethod(lambda cls, v: _check_storage_url(v)))

    @model_validator(mode="before")
    @classmethod
    def _generation_defaults(cls, data: Any) -> Any:
        """A text-generation job's quality is greedy-token agreement unless it says otherwise."""
        if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping) \
                and data["model"].get("task") == "text-generation" and "evaluation" not in data:
            return {**data, "evaluation": {"metric": GENERATION_QUALITY}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _encoder_defaults(cls, data: Any) -> Any:
        """A Hugging Face encoder job's quality defaults to its task's fidelity metric."""
        if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping) \
                and data["model"].get("task") in ENCODER_TASKS \
                and isinstance(data.get("evaluation"), Mapping) \
                and "metric" not in data["evaluation"]:
            metric = ENCODER_TASKS[data["model"]["task"]]
            return {**data, "evaluation": {**data["evaluation"], "metric": metric}}
        return data

    @model_validator(mode="after")
    def _encoder_texts(self) -> Job:
        ev, model = self.evaluation, self.model
        if ev is not None and ev.texts is not None and (model is None or not model.is_encoder):
            raise ValueError("'evaluation.texts' is for Hugging Face encoder jobs (model: "
                             "{huggingface: ..., task: feature-extraction | "
                             "text-classification}); other models take a 'dataset'")
        if model is not None and model.is_encoder and ev is not None \
                and ev.texts is None and ev.dataset is None:
            raise ValueError(f"a '{model.task}' job needs 'evaluation.texts' (a list of texts or "
                             "a file with one per line) to tokenize as inputs")
        return self

    @model_validator(mode="after")
    def _generation_workload(self) -> Job:
        if self.is_generation and self.workload is None:
            raise ValueError("a text-generation job needs a 'workload' (prompts, max_new_tokens, "
                             "concurrency)")
        if self.workload is not None and not self.is_generation:
            raise ValueError("'workload' describes a text-generation job; add 'task: "
                             "text-generation' to 'model' or remove 'workload'")
        if self.evaluation is not None and self.evaluation.metric == GENERATION_QUALITY \
                and not self.is_generation:
            raise ValueError("metric 'token_agreement' is for text-generation jobs")
        return self

    @property
    def is_generation(self) -> bool:
        """The model generates text (``model.task: text-generation``): measured by
        :mod:`autotune.measure.workloads.generation`."""
        return self.model is not None and self.model.is_generation

    @model_validator(mode="after")
    def _model_or_objective(self) -> Job:
        if (self.model is None) == (self.objective is None):
            raise ValueError(
                "give exactly one of 'model' (with 'evaluation') or 'objective' (module:function)"
            )
        if self.model is not None and self.evaluation is None:
            raise ValueError("a job with a 'model' needs an 'evaluation'")
        if self.objective is not None and self.evaluation is not None:
            raise ValueError("'evaluation' belongs to a 'model'; a custom 'objective' measures itself")
        return self

    @property
    def is_custom(self) -> bool:
        """The job measures with a user callable (``objective:``) instead of a model."""
        return self.objective is not None

    @field_validator("objectives", mode="before")
    @classmethod
    def _objective_shorthand(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"metric": o} if isinstance(o, str) else o for o in v]
        return v

    _schedule = field_validator("schedule", mode="before")(
        classmethod(lambda cls, v: _check_schedule(v)))

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_shorthand(cls, v: Any) -> Any:
        return {"uri": v} if isinstance(v, str) else v

    # ---------------------------------------------------------------- derived views
    @property
    def out_dir(self) -> Path:
        p = Path(self.output_dir) if self.output_dir else Path("runs") / self.name
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{(self.out_dir / 'mlflow.db').resolve()}"

    @property
    def metric_vocabulary(self) -> dict[str, MetricInfo]:
        """Known metric names; for a custom objective the built-in names (any other name is
        allowed too: the vocabulary is open and checked against the first result)."""
        ev = self.evaluation
        if ev is None:
            return workload_metrics(FORWARD)
        if self.is_generation:
            return generation_vocabulary(ev.quality_name, ev.quality_higher_is_better)
        return vocabulary(ev.quality_name, ev.quality_higher_is_better)

    @property
    def objective_pairs(self) -> list[tuple[str, Direction]]:
        vocab = self.metric_vocabulary
        return [(o.metric, o.direction or vocab[o.metric].direction) for o in self.objectives]

    @property
    def required_metrics(self) -> list[str]:
        """Metric names a custom objective's result must contain (objectives, then constraints)."""
        names = [o.metric for o in self.objectives]
        names += [c.metric for c in self.parsed_constraints if c.metric not in names]
        return names

    @property
    def parsed_constraints(self) -> list[Constraint]:
        return [parse_constraint(c) for c in self.constraints]

    @property
    def space(self) -> SearchSpace:
        return _build_space(self.search_space, Path(self.base_dir))


def _build_space(raw: Mapping[str, Any], base_dir: Path,
                 declared: Mapping[str, DeclaredParam] | None = None) -> SearchSpace:
    """The job's space: a preset with its overrides applied, or inline ``parameters:``.

    With ``declared`` (model jobs), every parameter and rule value is checked against the
    parameters the harness declares.  Errors in a preset file carry that file and line; errors
    caused by the job file carry its field path (``search_space.overrides.<name>...``), for the
    caller to locate.
    """
    if "preset" in raw:
        unknown = sorted(map(str, set(raw) - {"preset", "overrides"}))
        if unknown:
            raise SpecError(
                f"unknown key '{unknown[0]}' next to 'preset'.",
                path=f"search_space.{unknown[0]}",
                hint="With a preset, change parameters under 'overrides:' (null removes one).",
            )
        path = preset_path(raw["preset"], [base_dir, base_dir / "search_spaces"])
        located = load_located(path)
        if not isinstance(located.data, Mapping):
            raise SpecError("a preset must be a mapping with 'parameters'.", file=str(path),
                            line=1)
        unknown = sorted(map(str, set(located.data) - {"parameters", "description", "portfolio"}))
        if unknown:
            k = unknown[0]
            raise SpecError(
                f"unknown key '{k}'.", file=str(path), line=located.line_of((k,)), path=k
            )
        try:
            preset = parse_space(located.data, name=path.stem, where="parameters")
            if declared is not None:
                check_declared(preset, declared, where="parameters")
        except SpecError as exc:  # errors inside the preset file itself
            p = exc.path or ""
            raise SpecError(exc.reason, file=str(path), line=located.line_of(_split_path(p)),
                            path=p, hint=exc.hint) from None
        overrides = raw.get("overrides")
        merged = merge_overrides(located.data, overrides)
        try:
            space = parse_space(merged, name=path.stem)
            if declared is not None:
                check_declared(space, declared)
        except SpecError as exc:
            raise _override_error(exc, overrides or {}, path, located) from None
        return space
    unknown = sorted(map(str, set(raw) - {"parameters", "portfolio"}))  # autotune.job.portfolio
    if unknown:
        k = unknown[0]
        raise SpecError(
            f"unknown key '{k}'.",
            path=f"search_space.{k}",
            hint="Use 'parameters:' for an inline space or 'preset:' (+ 'overrides:').",
        )
    space = parse_space(raw)
    if declared is not None:
        check_declared(space, declared)
    return space


def _override_error(exc: SpecError, overrides: Mapping[str, Any], preset: Path,
                    located: Located) -> SpecError:
    """An error in the merged space, moved to where it comes from: a value the override gives
    (``search_space.overrides.<name>...``), or a preset part that the overrides broke."""
    prefix = "search_space.parameters."
    full = exc.path or ""
    if not full.startswith(prefix):
        return SpecError(exc.reason, path="search_space.overrides", hint=exc.hint)
    m = re.match(r"^([^.\[]+)(.*)$", full.removeprefix(prefix))
    name, rest = (m[1], m[2]) if m else (full.removeprefix(prefix), "")
    given = overrides.get(name) if isinstance(overrides, Mapping) else None
    key = re.match(r"^\.([^.\[]+)", rest)
    first = key[1] if key else None
    if isinstance(given, list):  # a list override is the parameter's choices
        if first in (None, "choices"):
            rest = rest.removeprefix(".choices")
            return SpecError(exc.reason, path=f"search_space.overrides.{name}{rest}",
                             hint=exc.hint)
    elif isinstance(given, Mapping) and (first is None or first in given):
        return SpecError(exc.reason, path=f"search_space.overrides.{name}{rest}", hint=exc.hint)
    where = f"{preset}, line {located.line_of(('parameters', name, *_split_path(rest)))}"
    if given is not None and first in RULE_KEYS:
        return SpecError(
            f"the preset's '{name}{rest}' ({where}), kept by the override of '{name}', does not "
            f"hold after the overrides: {exc.reason}",
            path=f"search_space.overrides.{name}",
            hint=f"Give '{name}' its own '{first}:' in the override ('{first}: null' drops the "
                 "preset's), or keep the parameters and values it refers to.",
        )
    return SpecError(
        f"the preset's parameter '{name}' ({where}) does not hold after the overrides: "
        f"{exc.reason}",
        path="search_space.overrides",
        hint=f"Override '{name}' too (its own 'when:', or null to remove it), or keep the "
             "parameters and values it refers to.",
    )


# -------------------------------------------------------------------- loading
_TOP_KEYS = tuple(Job.model_fields)
_USER_KEYS = tuple(k for k in _TOP_KEYS if k not in ("source", "base_dir"))


def _describe(value: Any) -> str:
    return describe(value)


_FIELD_HINTS = {
    "agent.seed": "A seed is an integer from 0 to 4294967295; leave it out for a random one.",
    "name": "A name is letters, digits, '_', '.' or '-', starting with a letter or digit.",
}


def _pydantic_to_spec_error(err: ValidationError, doc: Located) -> SpecError:
    e = err.errors()[0]
    loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and (
        x.startswith("function-") or x == "[key]")))
    path = dotted(loc)
    kind = e["type"]
    line = doc.line_of(loc)
    if kind == "extra_forbidden":
        parent = loc[:-1]
        model = Job
        for part in parent:
            field = model.model_fields.get(str(part)) if isinstance(part, str) else None
            ann = getattr(field, "annotation", None)
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None  # type: ignore[assignment]
            if model is None:
                break
        allowed = [k for k in (model.model_fields if model else {}) if k not in ("source", "base_dir")]
        import difflib

        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"Did you mean '{close[0]}'? " if close else ""
        hint += f"Allowed here: {', '.join(allowed)}." if allowed else ""
        return SpecError(f"unknown key '{loc[-1]}'.", file=doc.file, line=line, path=path,
                         hint=hint or None)
    if kind == "missing":
        return SpecError("this required field is missing.", file=doc.file,
                         line=doc.line_of(loc[:-1]), path=path,
                         hint=f"Add '{loc[-1]}:' here (README: 'A job file').")
    msg = e["msg"].removeprefix("Value error, ")
    if msg.startswith("Input should be "):
        rest = msg.removeprefix("Input should be ")
        msg = "expected " + ("a number " if rest.startswith(("greater", "less")) else "") + rest
    if msg.startswith("String should match pattern "):
        msg = "expected text matching the pattern " + msg.removeprefix(
            "String should match pattern ")
    if "[key]" in e["loc"]:
        msg = f"a key here: {msg}"
    text = f"{msg}; found {_describe(e['input'])}." if "input" in e and kind != "value_error" \
        else f"{msg}."
    return SpecError(text, file=doc.file, line=line, path=path, hint=_FIELD_HINTS.get(path))


def job_from_located(doc: Located) -> Job:
    """Validate a parsed job file.  Every :class:`SpecError` it raises names a file and a line
    (the line of the field, or of its nearest enclosing one that the file has)."""
    try:
        return _job_from_located(doc)
    except SpecError as exc:
        if exc.file and exc.line:
            raise
        file = exc.file or doc.file
        line = exc.line
        if line is None:
            located = doc if file == doc.file else None
            line = (located.line_of(_split_path(exc.path)) if located and exc.path else None) \
                or (doc.lines.get(()) if located else None) or 1
        raise SpecError(exc.reason, file=file, line=line, path=exc.path, hint=exc.hint) from None


def _job_from_located(doc: Located) -> Job:
    if not isinstance(doc.data, Mapping):
        raise SpecError("a job file must be a YAML mapping (name:, model:, ...); found "
                        f"{_describe(doc.data) if doc.data is not None else 'an empty file'}.",
                        file=doc.file, line=doc.lines.get((), 1))
    data = dict(doc.data)
    for k in data:
        if not isinstance(k, str):
            raise SpecError(
                f"unknown key {_describe(k)}.", file=doc.file, line=doc.line_of((k,)),
                path="null" if k is None else str(k).lower() if isinstance(k, bool) else str(k),
                hint="YAML reads yes/no/on/off/true/false as booleans and digits as numbers; "
                     f"the keys of a job file are: {', '.join(_USER_KEYS)}.")
    for k in ("source", "base_dir"):
        if k in data:
            raise SpecError(f"unknown key '{k}'.", file=doc.file, line=doc.line_of((k,)), path=k)
    base_dir = str(Path(doc.file).resolve().parent) if doc.file != "<memory>" else "."
    if ("model" in data) == ("objective" in data):
        both = "model" in data
        raise SpecError(
            ("give only one of" if both else "this required field is missing: give one of")
            + " 'model' (with 'evaluation') or 'objective' (module:function taking the "
            "configuration and returning a dict of metrics).",
            file=doc.file, line=doc.line_of(("objective",)) if both else None,
            path="objective" if both else "model",
        )
    model = data.get("model")
    if isinstance(model, Mapping) and model.get("task") is not None \
            and model.get("task") not in TASKS:
        raise SpecError(f"unknown task {_describe(model['task'])}.", file=doc.file,
                        line=doc.line_of(("model", "task")), path="model.task",
                        hint=f"Known tasks: {', '.join(TASKS)} (leave 'task' out for a torch "
                             "factory or an ONNX file).")
    gen = isinstance(model, Mapping) and model.get("task") == "text-generation"
    if "model" in data and "evaluation" not in data and not gen:
        raise SpecError("this required field is missing.", file=doc.file, path="evaluation",
                        hint="A job with a 'model' says how to judge quality under 'evaluation:'.")
    if "objective" in data and "evaluation" in data:
        raise SpecError(
            "'evaluation' belongs to a 'model'; a custom 'objective' returns its own metrics.",
            file=doc.file, line=doc.line_of(("evaluation",)), path="evaluation",
            hint="Remove 'evaluation:' (name the returned metrics in objectives/constraints).",
        )
    try:
        job = Job.model_validate({**data, "source": doc.file, "base_dir": base_dir})
    except ValidationError as err:
        raise _pydantic_to_spec_error(err, doc) from None
    _check_semantics(job, doc)
    return job


def _check_semantics(job: Job, doc: Located) -> None:
    """Checks that need more than one field: metric names, the space, constraints."""
    vocab = job.metric_vocabulary
    known = ", ".join(sorted(vocab))

    def unknown_metric(name: str, loc: tuple[str | int, ...]) -> SpecError:
        import difflib

        close = difflib.get_close_matches(name, list(vocab), n=1)
        hint = f"Did you mean '{close[0]}'? " if close else ""
        return SpecError(f"unknown metric '{name}'.", file=doc.file, line=doc.line_of(loc),
                         path=dotted(loc), hint=f"{hint}Known metrics: {known}.")

    for i, o in enumerate(job.objectives):
        if job.is_custom:
            if o.metric not in vocab and o.direction is None:
                loc = ("objectives", i)
                raise SpecError(
                    f"'{o.metric}' is not a built-in metric, so its direction is unknown.",
                    file=doc.file, line=doc.line_of(loc), path=dotted(loc),
                    hint=f"Write {{metric: {o.metric}, direction: minimize}} (or maximize).",
                )
        elif o.metric not in vocab:
            raise unknown_metric(o.metric, ("objectives", i))
    seen = [o.metric for o in job.objectives]
    if len(set(seen)) != len(seen):
        raise SpecError("an objective is listed twice.", file=doc.file,
                        line=doc.line_of(("objectives",)), path="objectives")
    for i, text in enumerate(job.constraints):
        try:
            c = parse_constraint(text)
        except ConstraintSyntaxError as exc:
            raise SpecError(str(exc), file=doc.file, line=doc.line_of(("constraints", i)),
                            path=f"constraints[{i}]") from None
        if c.metric not in vocab and not job.is_custom:
            raise unknown_metric(c.metric, ("constraints", i))
        if c.relative and job.is_custom and job.baseline is None:
            raise SpecError(
                f"the constraint '{c.text}' is relative to the baseline, but a custom objective "
                "has no baseline unless the job gives one.", file=doc.file,
                line=doc.line_of(("constraints", i)), path=f"constraints[{i}]",
                hint="Add 'baseline: {<configuration>}' or use an absolute bound.",
            )
    reference = job.report.reference
    if reference is not None:
        names = [o.metric for o in job.objectives]
        extra = [k for k in reference if k not in names]
        missing = [n for n in names if n not in reference]
        if extra or missing:
            loc = ("report", "reference", extra[0]) if extra else ("report", "reference")
            raise SpecError(
                f"'{extra[0]}' is not an objective of this job." if extra else
                f"no value for the objective(s) {', '.join(missing)}.",
                file=doc.file, line=doc.line_of(loc), path=dotted(loc),
                hint=f"The reference point has one value per objective: {', '.join(names)}.")
    m = job.measurement
    if m.max_repeats < m.min_repeats:
        key = "max_repeats" if "max_repeats" in (doc.data.get("measurement") or {}) \
            else "min_repeats"
        raise SpecError(
            f"max_repeats ({m.max_repeats}) is below min_repeats ({m.min_repeats}).",
            file=doc.file, line=doc.line_of(("measurement", key)), path=f"measurement.{key}",
            hint="Give max_repeats >= min_repeats (the measurement stops between the two).")
    try:
        declared = None if job.is_custom else (
            declared_generation_parameters() if job.is_generation else declared_parameters())
        space = _build_space(job.search_space, Path(job.base_dir), declared)
    except SpecError as exc:
        if exc.file:  # already located (inside a preset file)
            raise
        loc = tuple(_split_path(exc.path or "search_space"))
        raise SpecError(exc.reason, file=doc.file, line=doc.line_of(loc), path=exc.path,
                        hint=exc.hint) from None
    _check_portfolio(job, space, declared, doc)
    if job.baseline is not None:
        if not job.is_custom:
            raise SpecError("'baseline' is only for custom objectives; a model's baseline is the "
                            "unmodified model, measured first.", file=doc.file,
                            line=doc.line_of(("baseline",)), path="baseline")
        problems = space.validate(job.baseline)
        if problems:
            raise SpecError(f"the baseline configuration is not in the space: {problems[0]}.",
                            file=doc.file, line=doc.line_of(("baseline",)), path="baseline")
    for i, cfg in enumerate(job.agent.warm_start):
        problems = space.validate(cfg)
        if problems:
            loc = ("agent", "warm_start", i)
            raise SpecError(f"warm-start configuration is not in the space: {problems[0]}.",
                            file=doc.file, line=doc.line_of(loc), path=dotted(loc))
    if job.agent.name not in AGENTS and job.agent.name not in entry_points("autotune.agents"):
        raise SpecError(f"unknown agent '{job.agent.name}'.", file=doc.file,
                        line=doc.line_of(("agent", "name")), path="agent.name",
                        hint=f"Available agents: {', '.join(sorted(AGENTS))}.")


def _check_portfolio(job: Job, space: SearchSpace,
                     declared: Mapping[str, DeclaredParam] | None, doc: Located) -> None:
    """The portfolio entries (:mod:`autotune.job.portfolio`) are checked like the space's values,
    each error located at its entry: in the job file for an inline portfolio (where an entry that
    fits no configuration of the space is an error), in the preset file for a preset's."""
    raw = job.search_space
    if "preset" in raw:
        path = preset_path(raw["preset"], [Path(job.base_dir), Path(job.base_dir) / "search_spaces"])
        entries = job_portfolio(raw, Path(job.base_dir))  # located in the preset file
        try:
            check_entries(entries, space, declared, own=False)
        except SpecError as exc:
            located = load_located(path)
            raise SpecError(exc.reason, file=str(path), path=exc.path, hint=exc.hint,
                            line=located.line_of(_split_path(exc.path or "portfolio"))) from None
        return
    where = "search_space.portfolio"
    try:
        entries = parse_portfolio(raw.get("portfolio"), where=where)
        check_entries(entries, space, declared, where, own=not job.is_custom)
    except SpecError as exc:
        raise SpecError(exc.reason, file=doc.file, path=exc.path, hint=exc.hint,
                        line=doc.line_of(_split_path(exc.path or where))) from None


def _split_path(path: str) -> list[str | int]:
    out: list[str | int] = []
    for part in path.split("."):
        m = re.match(r"^([^\[]*)((?:\[\d+\])*)$", part)
        if not m:
            out.append(part)
            continue
        if m[1]:
            out.append(m[1])
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m[2])]
    return out


def load_job(path: str | Path) -> Job:
    """Read and validate a job file; raises :class:`SpecError` on any problem."""
    return job_from_located(load_located(path))


def dump_job(job: Job) -> dict[str, Any]:
    """The job as plain data (for MLflow params/artifacts and reports)."""
    return job.model_dump(mode="json", exclude={"source", "base_dir"})


Runtime = Literal["torch", "onnxruntime"]
