"""What the OpenAI and OIP generate routes share: strict pydantic models for requests (unknown fields and
wrong types refused, nothing coerced), errors that name the field at fault, the Retry-After of a refusal,
and giving up on a generation whose client has gone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from slimserve.serving.errors import InvalidInput, Overloaded, ServingError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FieldError(InvalidInput):
    """A request field's fault; `param` is its path (`messages[0].content`), the message starts with it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def parse_request(schema: type[Strict], body: bytes, field_names: frozenset[str]) -> Strict:
    """`body` as `schema`; FieldError naming the first field at fault (`field_names`: the schema's fields,
    to tell them from pydantic's names of union branches in an error's location)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    try:
        return schema.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        unknown = first["type"] == "extra_forbidden"
        param = _path(first["loc"], field_names, unknown)
        raise FieldError(param, "unknown parameter" if unknown else first["msg"]) from None


def field_names(*schemas: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for schema in schemas for name in schema.model_fields)


def stop_sequences(stop: str | list[str] | None, param: str) -> tuple[str, ...]:
    sequences = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not s for s in sequences):
        raise FieldError(param, "a stop sequence must not be empty")
    return sequences


def _path(location: Iterable, names: frozenset[str], unknown: bool) -> str:
    location = list(location)
    path = []
    for index, part in enumerate(location):
        if isinstance(part, int):
            path.append(f"[{part}]")
        elif part in names or (unknown and index == len(location) - 1):
            path.append(("." if path else "") + part)
    return "".join(path)


def retry_after(error: ServingError) -> list[tuple[bytes, bytes]]:
    """The Retry-After header of a request refused for want of capacity (429, 503); none otherwise."""
    return [(b"retry-after", str(error.retry_after_s).encode())] if isinstance(error, Overloaded) else []


T = TypeVar("T")


async def while_connected(receive: Callable, work: Awaitable[T]) -> T:
    """`work`'s result, or ConnectionAbortedError once the client disconnects (its body already read), with
    `work` cancelled: a client that gave up on an answer frees its sequence's slot at once."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ConnectionAbortedError("client disconnected")
    return task.result()


async def _disconnected(receive: Callable) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
