"""The request: one typed, validated, serialisable description of every task a front end runs.

Each task is a pydantic model with `extra="forbid"` (an unknown or misplaced field is an error, never
ignored); `Request` is their union, told apart by `task`. Its JSON schema (`request_schema()`) is what the
CLI prints (`ddim run --schema`) and what an HTTP API would publish. `parse_request` turns JSON or a dict into
a request, or raises one `UsageError` line naming the field and what it allows.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from ..core.errors import UsageError
from ..core.guidance import GUIDANCE_RULES
from ..core.path import CONTINUOUS_SPACINGS
from ..core.schedule import SPACINGS

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class GuidanceSpec(BaseModel):
    """Classifier-free guidance: the rule, its scale and the rule's own options."""

    model_config = ConfigDict(extra="forbid")

    scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None, description="w (1: conditional only, 0: unconditional); default: the model's (7.5 for prompts, else 1)")
    rule: Literal["cfg", "apg", "cfg++"] = "cfg"
    rescale: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description="CFG rescale φ (Lin et al. 2024)")
    interval: tuple[Finite, Finite] | None = Field(None, description="guide only where σ/α lies in (lo, hi]")
    options: dict[str, Finite] = Field(default_factory=dict, description="the rule's own options (apg: eta, "
                                       "momentum, threshold)")
    two_calls: bool = Field(False, description="conditional and unconditional branches as two calls (less memory)")
    distilled: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None, description="guidance-distilled models (Flux-dev): the guidance scale the network takes as an input "
        "(diffusers' guidance_scale there; default 3.5); `scale` is then true CFG (diffusers' true_cfg_scale)")

    @model_validator(mode="after")
    def _rule_options(self) -> GuidanceSpec:
        takes = GUIDANCE_RULES[self.rule].options
        for k in self.options:
            if k not in takes:
                owners = [r for r, spec in GUIDANCE_RULES.items() if k in spec.options]
                why = f"an option of {', '.join(owners)}" if owners else "no rule's option"
                raise ValueError(f"{k!r} is {why}, not of rule {self.rule!r} (it takes "
                                 f"{', '.join(takes) or 'no options'})")
        return self


class _Run(BaseModel):
    """What every task shares: the model, its condition and guidance, the sampler and its steps, the run's mode."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("mixture:mog3", description="a configured model name (built-in, run folder, diffusers folder)")
    classes: list[NonNegInt] | None = Field(None, description="class-conditional models: classes cycled over samples")
    prompt: list[str] | None = Field(None, description="text-to-image models: prompts cycled over the samples")
    negative_prompt: str | None = None
    prompt_truncation: Literal["warn", "refuse"] = Field(
        "warn", description="a prompt longer than a text encoder takes: truncated with a warning naming what was "
                            "dropped (as diffusers), or refused")
    guidance: GuidanceSpec = Field(default_factory=GuidanceSpec)
    sampler: str | None = Field(None, description="default: the model's measured best for `steps` NFE, else ddim")
    options: dict[str, Any] = Field(default_factory=dict, description="the sampler's own declared options")
    steps: Annotated[int, Field(ge=1, le=10000)] = Field(50, description="steps, or the NFE budget without a sampler")
    spacing: str | None = Field(None, description="timestep spacing, or 'optimised' (the model's schedule.json)")
    timesteps: list[Finite] | None = Field(None, description="an explicit strictly decreasing list of levels")
    shift: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(None, description="flow models: a static "
                                                                               "σ-list shift at sampling time")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    compile: bool = False
    batch_invariant: bool | PositiveInt = Field(False, description="every network call has the same row count "
                                                "(true: 16, or the count given), so a sample's bits do not depend "
                                                "on the batch around it")
    preview_every: PositiveInt | None = Field(None, description="call the preview callback with x̂0 every k steps")

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v: str | None) -> str | None:
        known = tuple(dict.fromkeys((*SPACINGS, *CONTINUOUS_SPACINGS, "optimised")))
        if v is not None and v not in known:
            raise ValueError(f"unknown spacing {v!r}; choose one of {', '.join(known)}")
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str | None) -> str | None:
        from ..core.samplers import SAMPLERS

        if v is not None and v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; choose one of {', '.join(sorted(SAMPLERS))}")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("give at least one prompt")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> _Run:
        if self.classes is not None and self.prompt is not None:
            raise ValueError("give classes or prompt, not both")
        if self.negative_prompt is not None and self.prompt is None:
            raise ValueError("negative_prompt needs a prompt")
        if not self.classes and self.classes is not None:
            raise ValueError("classes: give at least one class")
        if self.timesteps is not None and self.spacing is not None:
            raise ValueError("give spacing or timesteps, not both")
        if self.options and self.sampler is not None:
            try:
                check_sampler_options(self.sampler, self.options)
            except ValueError as e:
                raise ValueError(f"options: {e}") from None
        return self


def check_sampler_options(sampler: str, options: dict[str, Any]) -> None:
    """Each option must be one the sampler declares, of its declared type (ValueError naming it otherwise)."""
    from ..core.samplers import SAMPLERS

    declared = SAMPLERS[sampler].options
    for k, v in options.items():
        if k not in declared:
            owners = sorted(n for n, s in SAMPLERS.items() if k in s.options)
            why = f"an option of {', '.join(owners)}" if owners else "no sampler's option"
            raise ValueError(f"option {k!r} is {why}, not of {sampler!r} (it takes "
                             f"{', '.join(declared) or 'no options'})")
        d = declared[k]
        kind = type(d) if d is not None else None
        ok = kind is None or (isinstance(v, bool) if kind is bool else
                              isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                              if kind is float else isinstance(v, kind) and not isinstance(v, bool))
        if not ok:
            raise ValueError(f"option {k!r} of {sampler!r} must be {kind.__name__}, got {v!r}")


class _Seeded(BaseModel):
    n: Annotated[int, Field(ge=1, le=1_000_000)] = Field(16, description="number of samples")
    seed: NonNegInt = Field(0, description="sample i uses seed + i")
    seeds: list[NonNegInt] | None = Field(None, description="or one seed per sample (sets n)")

    @model_validator(mode="after")
    def _seed_list(self) -> _Seeded:
        if self.seeds is not None:
            if not self.seeds:
                raise ValueError("seeds: give at least one seed")
            if "n" in self.model_fields_set and self.n != len(self.seeds):
                raise ValueError(f"n is {self.n} but {len(self.seeds)} seeds are given")
            self.__dict__["n"] = len(self.seeds)
        return self

    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else list(range(self.seed, self.seed + self.n))


class _Inputs(BaseModel):
    """Data rows to work on: a built-in dataset or an .npy/.npz file, its rows `index` or the first `n`."""

    data: str = Field("digits", description="a built-in dataset (digits, mog3, ...), an .npy/.npz file, or a base64 "
                      "data URI: data:image/png;base64,… (one image) or data:application/x-npy;base64,… (rows)")
    index: list[NonNegInt] | None = None
    n: Annotated[int, Field(ge=1, le=100_000)] = Field(16, description="rows when no index is given")


class SampleRequest(_Run, _Seeded):
    """Draw samples (text-to-image for prompt models)."""

    task: Literal["sample"] = "sample"
    batch: Annotated[int, Field(ge=1)] = Field(1000, description="samples per batch; more are written as shards")
    size: tuple[PositiveInt, PositiveInt] | None = Field(None, description="image height and width (latent models: "
                                                         "a multiple of the latent scale); default: the model's")
    score: bool = Field(False, description="8×8 digit models: score the samples with the benchmarks' digit "
                                           "classifier (FD, class-balanced FD, coverage; accuracy of asked classes)")


class Img2ImgRequest(_Run, _Inputs):
    """SDEdit / img2img: noise data rows to `strength` of the way and sample back under the condition."""

    task: Literal["img2img"] = "img2img"
    strength: Annotated[float, Field(gt=0, le=1)] = 0.5
    seed: NonNegInt = 0


class InvertRequest(_Run, _Inputs):
    """Encode data rows to noise with DDIM inversion (refined: fixed-point), and decode them back."""

    task: Literal["invert"] = "invert"
    refine: Annotated[int, Field(ge=0, le=50)] = 3


class ReconstructRequest(InvertRequest):
    """decode(encode(x)): the round trip alone."""

    task: Literal["reconstruct"] = "reconstruct"  # type: ignore[assignment]


class EditRequest(_Run, _Inputs):
    """Edit data rows: along a latent direction (class:A-B or a file), to another class, or to another prompt;
    SDEdit columns at each strength."""

    task: Literal["edit"] = "edit"
    n: Annotated[int, Field(ge=1, le=10_000)] = 4
    direction: str | None = Field(None, description="class:A-B or an .npy direction (default class:3-8)")
    scales: list[Finite] = Field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0])
    examples: PositiveInt = 64
    to_class: NonNegInt | None = None
    to_prompt: str | None = None
    inversion: Literal["naive", "refined", "negative"] = "refined"
    refine: Annotated[int, Field(ge=0, le=50)] = 3
    strength: list[Annotated[float, Field(gt=0, le=1)]] | None = None
    seed: NonNegInt = 0

    @model_validator(mode="after")
    def _kind(self) -> EditRequest:
        if self.to_class is not None and self.to_prompt is not None:
            raise ValueError("give to_class or to_prompt, not both")
        if self.direction is not None and (self.to_class is not None or self.to_prompt is not None):
            raise ValueError("a direction edit takes no to_class / to_prompt")
        return self


class InterpolateRequest(_Run, _Inputs):
    """A decoded path between two noise seeds, or between two data rows (encoded first)."""

    task: Literal["interpolate"] = "interpolate"
    n: Annotated[int, Field(ge=2, le=1000)] = 10
    endpoints: tuple[NonNegInt, NonNegInt] | None = Field(None, description="two noise seeds as endpoints")
    method: Literal["slerp", "lerp"] = "slerp"
    refine: Annotated[int, Field(ge=0, le=50)] = 3

    @model_validator(mode="after")
    def _ends(self) -> InterpolateRequest:
        if self.endpoints is None and (self.index is None or len(self.index) != 2):
            raise ValueError("give endpoints [A, B] (noise seeds) or index [I, J] (data rows)")
        if self.endpoints is not None and self.index is not None:
            raise ValueError("give endpoints or index, not both")
        return self


class LikelihoodRequest(_Run, _Inputs):
    """Per-sample log-likelihood of data rows through the probability-flow ODE."""

    task: Literal["likelihood"] = "likelihood"
    data: str = "mog3"
    n: Annotated[int, Field(ge=1, le=100_000)] = 200
    exact: bool | None = None
    probes: PositiveInt = 4
    bits_per_dim: bool = False
    float64: bool = False


Request = Annotated[SampleRequest | Img2ImgRequest | InvertRequest | ReconstructRequest | EditRequest |
                    InterpolateRequest | LikelihoodRequest, Field(discriminator="task")]
TASKS = ("sample", "img2img", "invert", "reconstruct", "edit", "interpolate", "likelihood")
_ADAPTER: TypeAdapter = TypeAdapter(Request)
_FIELDS = {f for cls in (SampleRequest, Img2ImgRequest, InvertRequest, EditRequest, InterpolateRequest,
                         LikelihoodRequest) for f in cls.model_fields}


def _field(loc: tuple, msg: str = "") -> str:
    """"request field F" for an error at loc; a whole-request check names its field first ("seeds: ...")."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in TASKS)]
    if not parts:
        word = re.match(r"(?:give )?([a-z_]+)\b", msg)
        if word and word.group(1) in _FIELDS:
            return f"request field {word.group(1)}"
    name = ".".join(p or "''" for p in parts)  # an empty key is named as such
    return f"request field {name}" if parts else "request"


def parse_request(data: str | bytes | dict[str, Any]) -> Any:
    """A validated request from JSON text or a dict; one UsageError line naming the field otherwise."""
    try:
        if isinstance(data, str | bytes):
            return _ADAPTER.validate_json(data)
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
            msg = f"task must be one of {', '.join(TASKS)}"
        where = _field(err["loc"], msg)
        msg = msg.removeprefix(where.removeprefix("request field ") + ": ")
        raise UsageError(f"{where}: {msg}") from None


def request_json(request: BaseModel) -> str:
    """The request as JSON: every field, defaults included, so a rerun does not depend on later defaults."""
    return request.model_dump_json(indent=2)


def request_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON schema of `Request`, generated from the definitions above (`ref_template`: where its parts live,
    e.g. an OpenAPI document's components)."""
    schema = _ADAPTER.json_schema(ref_template=ref_template)
    for part in schema["$defs"].values():  # the union is told apart by task: a body must name it
        if "task" in part.get("properties", {}):
            part["required"] = ["task", *(r for r in part.get("required", []) if r != "task")]
    return schema


class ImagesRequest(BaseModel):
    """`POST /v1/images/generations` in the OpenAI images API's shape, plus ddim's seed, steps, sampler and
    guidance scale. `prompt` is the prompt of a text-to-image model, a class index ("7") of a class model, and
    absent for an unconditional one."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="a served model (default: the first one)")
    prompt: str | None = None
    negative_prompt: str | None = None
    n: Annotated[int, Field(ge=1, le=64)] = 1
    size: str | None = Field(None, pattern=r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$", description="WIDTHxHEIGHT")
    response_format: Literal["b64_json"] = Field("b64_json", description="images come back inline (no URLs)")
    seed: NonNegInt = 0
    steps: Annotated[int, Field(ge=1, le=10000)] | None = None
    sampler: str | None = None
    guidance_scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


def parse_images_request(data: str | bytes) -> ImagesRequest:
    try:
        return ImagesRequest.model_validate_json(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"{_field(err['loc'])}: {err['msg'].removeprefix('Value error, ')}") from None


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
