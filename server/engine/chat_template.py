"""A model's Jinja chat template, rendered sandboxed as HF does. Reads model files only."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError, ModelLoadError
from .gguf_file import open_gguf, read_metadata
from .tokenizer_base import read_json_object, token_content

_NO_TEMPLATE = "model has no chat template; pass one with --chat-template"
# What a template may raise while rendering; anything else is our bug and propagates.
_RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError)


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which would change the prompt.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class ChatTemplate:
    """Renders a conversation into the model's prompt text."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template does not compile: {exc}") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=None,
                documents=None,
            )
        except _RENDER_ERRORS as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc


def load_chat_template(
    path: Path, metadata: Mapping[str, Any] | None = None, override: str | None = None
) -> ChatTemplate:
    """The chat template of a .gguf file or an HF folder.

    `override` replaces the model's own template: the path of a template file, or the
    template text itself. An HF folder's template comes from chat_template.jinja, else
    tokenizer_config.json's `chat_template` (a string, or named templates: "default").
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        if metadata is None:
            try:
                metadata = read_metadata(open_gguf(path))
            except ModelLoadError as exc:
                raise ChatTemplateError(str(exc)) from exc
        source, bos, eos = _from_gguf(metadata)
    elif path.is_dir():
        source, bos, eos = _from_folder(path)
    else:
        raise ChatTemplateError(f"not a .gguf file or a model folder: {path}")
    if override is not None:
        source = _read_override(override)
    if source is None:
        raise ChatTemplateError(_NO_TEMPLATE)
    return ChatTemplate(source, bos_token=bos, eos_token=eos)


def _read_override(override: str) -> str:
    candidate = Path(override)
    # A template source containing newlines or braces is never meant as a file name.
    if "\n" not in override and "{" not in override and candidate.is_file():
        try:
            return candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatTemplateError(f"cannot read chat template {candidate}: {exc}") from exc
    return override


def _from_gguf(metadata: Mapping[str, Any]) -> tuple[str | None, str, str]:
    tokens = metadata.get("tokenizer.ggml.tokens", ())

    def text_of(key: str) -> str:
        token_id = metadata.get(key)
        if token_id is None or not 0 <= int(token_id) < len(tokens):
            return ""
        return str(tokens[int(token_id)])

    source = metadata.get("tokenizer.chat_template")
    return (
        str(source) if source is not None else None,
        text_of("tokenizer.ggml.bos_token_id"),
        text_of("tokenizer.ggml.eos_token_id"),
    )


def _from_folder(folder: Path) -> tuple[str | None, str, str]:
    try:
        config = read_json_object(folder / "tokenizer_config.json")
    except ValueError as exc:
        raise ChatTemplateError(str(exc)) from exc
    bos = token_content(config.get("bos_token")) or ""
    eos = token_content(config.get("eos_token")) or ""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8"), bos, eos
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatTemplateError(f"cannot read {jinja_file}: {exc}") from exc
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return (template if isinstance(template, str) else None), bos, eos
