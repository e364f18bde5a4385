"""Request and response schemas of the OpenAI API, as far as tunesmith serves it.

Fields are ordered as in the official OpenAI API reference, so a reader can check them side by side; tunesmith
extras are marked. Requests forbid unknown fields (OpenAI answers 400 "Unrecognized request argument supplied"),
messages ignore them, so a client can send back a response message as it received it (with `refusal`,
`annotations`, ...). What is parsed here but not honoured is refused in chat.py or completion.py with a message
naming it, and /openapi.json says so: such a field carries `documented(...)`, the schema of what is served, so a
client (or a fuzzer) reading the document knows the answer before asking. openapi.py adds what depends on the
server's settings (the largest max_tokens, the API key).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    # strict: no coercion the schema does not promise (false as a temperature, "1" as n)
    model_config = ConfigDict(extra="forbid", strict=True)


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


def _whole_number(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def integer(**bounds: int) -> Any:
    """JSON Schema's integer: 15 and 15.0 (some clients send that), not 15.5, "15" or true. The bounds go before
    the validator, or the published schema would lose them."""
    return Annotated[int, Field(strict=False, **bounds), BeforeValidator(_whole_number)]


def documented(schema: dict[str, Any]) -> WithJsonSchema:
    """The field's schema in /openapi.json: what the server answers, narrower than what it parses (the rest is
    refused by name, so the client learns why)."""
    return WithJsonSchema(schema)


def null_is_default(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A field OpenAI's reference declares nullable with a default (n, stream, echo): null means that default, as
    clients that write every field send it. Reused as `field_validator(...)(null_is_default)`, so the code after
    parsing never sees None."""
    return cls.model_fields[info.field_name].default if value is None else value


def _or_null(schema: dict[str, Any], note: str) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}], "description": note}


ZERO_ONLY = _or_null({"const": 0}, "Not supported by tunesmith's engines: leave it out, or 0.")
NOT_SERVED = {"type": "null", "description": "An OpenAI option tunesmith does not serve: leave it out (chat.py "
                                             "answers 400 naming it)."}
TEXT_PARTS = {"type": "array", "items": {"type": "object", "required": ["type", "text"],
                                         "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}
# what a vision model's server reads besides text parts (openapi.py lists it where one is served)
IMAGE_PART = {"type": "object", "required": ["type", "image_url"], "properties": {
    "type": {"const": "image_url"},
    "image_url": {"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string", "description": "data:image/...;base64,..., or where the server allows them a file "
                                                 "under its --image-root or an http(s) URL (--allow-remote-images)"},
        "detail": {"anyOf": [{"enum": ["auto", "low", "high"]}, {"type": "null"}]}}}}}


def _when(condition: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """A rule between two fields, as JSON Schema's if/then: `condition` and `then` map field -> schema."""
    return {"if": {"properties": condition, "required": list(condition)},
            "then": {"properties": then, "required": [k for k, v in then.items() if "const" in v]}}


# stream_options shapes a stream only: refused without stream: true (serving.refuse_stream_options_without_stream)
STREAM_OPTIONS_NEED_STREAM = _when({"stream_options": {"type": "object"}}, {"stream": {"const": True}})


# -----------------------------------------------------------------------------
# Chat completions: requests


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class ImageURL(Lenient):
    url: str  # data:image/...;base64,..., https://..., or a file under the server's --image-root (serve/images.py)
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the model's processor sets the resolution


class ImagePart(Lenient):
    """Read for vision models (serve/images.py), refused by name for text models; /openapi.json lists it only where
    a vision model is served."""

    type: Literal["image_url"]
    image_url: ImageURL


class OtherPart(Lenient):
    """input_audio, file, a malformed image_url...: parsed so chat.py can refuse them by name."""

    type: str


class FunctionCall(Lenient):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Lenient):
    role: Literal["developer", "system"]  # developer: OpenAI's newer name; chat templates get system
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Lenient):
    role: Literal["user"]
    content: Annotated[str | list[TextPart | ImagePart | OtherPart],
                       documented({"anyOf": [{"type": "string"}, TEXT_PARTS]})]
    name: str | None = None


class AssistantTurn(Lenient):
    """An earlier answer: text, tool calls or both; content may be null only beside tool calls."""

    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={"anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}}]})
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(Lenient):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantTurn | ToolMessage, Field(discriminator="role")]


class FunctionDefinition(Strict):
    name: str = Field(..., min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(Strict):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(Lenient):
    name: str


class NamedToolChoice(Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Any = None  # read for type json_schema only (JSONSchemaFormat), as OpenAI does


class JSONSchemaFormat(Lenient):
    """response_format.json_schema, checked by chat.py; the schema itself by infer/grammar.py."""

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


# what /openapi.json promises for json_schema: OpenAI's shape; a schema the grammar cannot take is still a 400
JSON_SCHEMA_FORMAT = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
    "description": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    "schema": {"anyOf": [{"type": "object"}, {"type": "null"}], "description": "A JSON Schema for the answer."},
    "strict": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}}}


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted, nothing to obfuscate here


class ChatCompletionRequest(Strict):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"allOf": [
        _when({"top_logprobs": {"type": "integer", "minimum": 1}}, {"logprobs": {"const": True}}),
        STREAM_OPTIONS_NEED_STREAM,
        {"if": {"properties": {"tool_choice": {"anyOf": [{"const": "required"}, {"type": "object"}]}},  # a forced
                "required": ["tool_choice"]},  # call needs tools to call (chat.py refuses it without)
         "then": {"properties": {"tools": {"type": "array", "minItems": 1}}, "required": ["tools"]}},
        {"if": {"properties": {"response_format": {"type": "object", "required": ["type"], "properties": {  # no
            "type": {"enum": ["json_object", "json_schema"]}}}}, "required": ["response_format"]},  # logprobs under
         "then": {"properties": {"logprobs": {"not": {"const": True}}}}}]})  # a grammar (chat.py refuses them)
    messages: list[ChatMessage] = Field(..., min_length=1)
    model: str | None = None  # tunesmith: may be left out to use the default model
    # OpenAI's fields for what no engine here does (spoken answers, predicted outputs, web search, deprecated
    # functions, reasoning and verbosity controls): parsed so chat.py refuses them by name, not as unrecognized
    audio: Annotated[Any, documented(NOT_SERVED)] = None
    frequency_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0), documented(ZERO_ONLY)] = None
    function_call: Annotated[Any, documented(NOT_SERVED)] = None
    functions: Annotated[Any, documented(NOT_SERVED)] = None
    logit_bias: Annotated[dict[str, float] | None, documented(_or_null(
        {"type": "object", "maxProperties": 0}, "Not supported by tunesmith's engines: leave it out."))] = None
    logprobs: bool | None = None
    max_completion_tokens: integer(ge=1) | None = None
    max_tokens: integer(ge=1) | None = None  # deprecated by OpenAI for max_completion_tokens; both work
    metadata: dict[str, str] | None = None
    modalities: Annotated[list[Literal["text", "audio"]] | None, documented(_or_null(
        {"type": "array", "items": {"const": "text"}}, "Text answers only: [\"text\"] or leave it out."))] = None
    n: integer(ge=1, le=128) | None = 1
    parallel_tool_calls: bool | None = None
    prediction: Annotated[Any, documented(NOT_SERVED)] = None
    # OpenAI's hints for its own caching and abuse tracking: accepted and not used (prefix caching here is automatic)
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    reasoning_effort: Annotated[Any, documented(NOT_SERVED)] = None
    safety_identifier: str | None = None
    presence_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0), documented(ZERO_ONLY)] = None
    response_format: Annotated[ResponseFormat | None, documented(_or_null({"anyOf": [
        {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type", "json_schema"], "properties": {
            "type": {"const": "json_schema"}, "json_schema": JSON_SCHEMA_FORMAT}}]},
        "json_object or json_schema: the answer is JSON (that the schema accepts), decoded under a grammar; a "
        "schema the grammar cannot take is a 400."))] = None
    seed: integer() | None = None  # any integer: engines get it modulo 2**63
    service_tier: str | None = None
    stop: str | list[str] | None = None
    store: bool | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    tool_choice: Annotated[Literal["none", "auto", "required"] | NamedToolChoice | None, documented(_or_null(
        {"anyOf": [{"enum": ["none", "auto", "required"]},
                   {"type": "object", "required": ["function"], "properties": {
                       "type": {"const": "function"},
                       "function": {"type": "object", "required": ["name"],
                                    "properties": {"name": {"type": "string"}}}}}]},
        "required or a named function: one call, its arguments valid for the tool's parameters (a grammar), "
        "written as the model's chat template writes calls; not with response_format or logprobs."))] = None
    tools: list[ToolDefinition] | None = None
    top_logprobs: integer(ge=0, le=20) | None = None  # needs logprobs: true
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None
    verbosity: Annotated[Any, documented(NOT_SERVED)] = None
    web_search_options: Annotated[Any, documented(NOT_SERVED)] = None
    # vLLM's extra: variables for the chat template (enable_thinking ...), over the deploy's and the run's own
    chat_template_kwargs: dict[str, Any] | None = None

    _defaults = field_validator("n", "stream")(null_is_default)


# -----------------------------------------------------------------------------
# Chat completions: responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = None
    refusal: list[TokenLogprobOut] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None  # vLLM's and DeepSeek's extra: the <think> part, out of content


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]  # content_filter: a guardrail refused


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class DeltaMessage(BaseModel):
    """Only the keys a chunk carries: the first has role, the next content, the last none."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    refusal: str | None = None  # an output guardrail's refusal (with finish_reason content_filter)
    reasoning_content: str | None = None  # vLLM's and DeepSeek's extra: reasoning pieces, before the content's

    @model_serializer(mode="wrap")
    def _present_only(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None  # only the last chunk, and only with stream_options.include_usage


# -----------------------------------------------------------------------------
# Completions (legacy): request and responses


class CompletionRequest(Strict):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"allOf": [
        _when({"echo": {"const": True}}, {"logprobs": {"type": "null"}}),  # echo needs prompt logprobs: none here
        STREAM_OPTIONS_NEED_STREAM]})
    model: str | None = None  # tunesmith: may be left out to use the default model
    prompt: Annotated[str | list[str] | list[int] | list[list[int]], documented({
        "anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}],
        "description": "Text, or several texts answered together; not token ids."})]
    best_of: Annotated[integer(ge=1) | None, documented(_or_null(
        {"const": 1}, "Only 1 (vLLM dropped best_of too): ask for n answers instead."))] = None
    echo: bool | None = False
    frequency_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0), documented(ZERO_ONLY)] = None
    logit_bias: Annotated[dict[str, float] | None, documented(_or_null(
        {"type": "object", "maxProperties": 0}, "Not supported by tunesmith's engines: leave it out."))] = None
    logprobs: integer(ge=0, le=5) | None = None
    max_tokens: integer(ge=1) | None = None
    n: integer(ge=1, le=128) | None = 1
    presence_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0), documented(ZERO_ONLY)] = None
    seed: integer() | None = None  # any integer: engines get it modulo 2**63
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: Annotated[str | None, documented(_or_null(
        {"type": "string", "maxLength": 0}, "Fill in the middle is not supported."))] = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None

    _defaults = field_validator("n", "stream", "echo")(null_is_default)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class CompletionResponse(BaseModel):
    """The whole answer, and each streamed chunk (OpenAI uses the same object for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


# -----------------------------------------------------------------------------
# Models and errors


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "tunesmith"
    lineage: dict | None = None  # tunesmith extra: the served folder's lineage.json, short (tunesmith/lineage.py card)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
