"""Response shapes, for the OpenAPI document (/docs); the routes build these dicts directly."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    id: str = Field(description="the sample's id (given, or its position)")
    labels: list[str] = Field(description="the predicted emotion set: labels at or above the threshold")
    probabilities: dict[str, float] = Field(description="every label's probability")
    modalities_present: list[str] = Field(description="modalities with at least one step")
    modality_label_scores: dict[str, dict[str, float]] | None = Field(
        None, description="modality -> label -> relevance, where the model has them (else null)")
    top_modality: dict[str, str] | None = Field(None, description="label -> its most relevant modality")
    source: str | None = Field(None, description='"media" for a clip')
    media: dict[str, Any] | None = Field(None, description="a clip's container kind and duration (s)")
    transcript: str | None = Field(None, description="the transcript used for a clip")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str


class ErrorDetail(BaseModel):
    status: int
    field: str | None = Field(description="the part of the request at fault, e.g. samples[2].audio")
    message: str
    fix: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "malformed multipart body", 401: "missing or wrong token", 413: "body, samples or transcript too large",
    415: "not JSON, .npz or a media file", 422: "invalid features or clip (the field and the fix are named)",
    503: "queue full: retry after Retry-After seconds"}.items()}
