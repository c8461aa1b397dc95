"""The request layer: one typed request for every task, one `run(request, store)` that every front end calls."""

from .outputs import save_result
from .request import (
    EditRequest,
    GuidanceSpec,
    Img2ImgRequest,
    InterpolateRequest,
    InvertRequest,
    LikelihoodRequest,
    ReconstructRequest,
    Request,
    SampleRequest,
    parse_request,
    request_json,
    request_schema,
)
from .run import Preview, Result, run
from .store import ModelStore

__all__ = ["EditRequest", "GuidanceSpec", "Img2ImgRequest", "InterpolateRequest", "InvertRequest",
           "LikelihoodRequest", "ModelStore", "Preview", "ReconstructRequest", "Request", "Result", "SampleRequest",
           "parse_request", "request_json", "request_schema", "run", "save_result"]
