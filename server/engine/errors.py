"""The engine's exceptions. One root, so callers can catch everything the engine raises.

EngineError
├── ModelLoadError          the model could not be loaded (path, file, checksum)
│   └── UnsupportedModelError   an architecture, rope scaling kind or tensor type we do not run
├── TokenizerError          no usable tokenizer, or text it cannot encode
├── ChatTemplateError       no chat template, or the template failed to render
├── RequestError            a request the engine refuses
│   ├── InvalidRequestError     a parameter the model cannot take (names the field)
│   ├── OverloadedError         the waiting queue is full: retry later
│   └── PromptTooLongError      the prompt does not fit the context window or the KV budget
├── RequestFailedError      one request failed inside a step; every other request went on
└── EngineRestartedError    the engine thread died and is being restarted: retry
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every exception the engine raises on purpose."""


class ModelLoadError(EngineError):
    pass


class UnsupportedModelError(ModelLoadError):
    pass


class TokenizerError(EngineError):
    pass


class ChatTemplateError(EngineError):
    pass


class RequestError(EngineError):
    pass


class OverloadedError(RequestError):
    pass


class PromptTooLongError(RequestError):
    pass


class InvalidRequestError(RequestError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field  # wire path of the bad parameter, e.g. "sampling.logit_bias"
        self.detail = message


class RequestFailedError(EngineError):
    pass


class EngineRestartedError(EngineError):
    pass
