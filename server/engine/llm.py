"""LLM: a model, its tokenizer and chat template, and an EngineCore, loaded from one path."""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch

from .chat_template import ChatTemplate, load_chat_template
from .config import EngineConfig
from .core import EngineCore
from .errors import ChatTemplateError, ModelLoadError
from .model import Transformer
from .quant import QUANTIZE_CHOICES, describe_weights
from .scoring import plan_score
from .tokenizer import load_tokenizer
from .tokenizer_base import Tokenizer
from .types import EngineRequest, Priority, RequestOutput, SamplingParams, ScoreOutput
from .weights import load_checkpoint

log = logging.getLogger("banterbox.engine")


def resolve_device(config: EngineConfig) -> tuple[torch.device, torch.dtype]:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {config.device!r} asked for, but CUDA is not available")
    if config.dtype != "auto":
        try:
            return device, getattr(torch, config.dtype)
        except AttributeError as exc:
            raise ModelLoadError(f"unknown dtype {config.dtype!r}") from exc
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float32


@dataclass(frozen=True)
class WeightPolicy:
    """How checkpoint matrices are held: GGUF blocks kept packed, floats quantized, or dense."""

    keep_packed: bool
    quantize_to: gguf.GGMLQuantizationType | None


def resolve_weights(config: EngineConfig, device: torch.device) -> WeightPolicy:
    """auto on CPU keeps a GGUF's blocks packed; an explicit dtype is the dense mode."""
    if config.quantize == "none":
        return WeightPolicy(
            keep_packed=device.type == "cpu" and config.dtype == "auto", quantize_to=None
        )
    if config.quantize not in QUANTIZE_CHOICES:
        choices = ", ".join(["none", *QUANTIZE_CHOICES])
        raise ModelLoadError(f"unknown quantize format {config.quantize!r} (choices: {choices})")
    if device.type != "cpu" or config.dtype not in ("auto", "float32"):
        raise ModelLoadError(
            f"quantize {config.quantize} runs on CPU with float32 activations, "
            f"not {device.type} {config.dtype}"
        )
    return WeightPolicy(keep_packed=True, quantize_to=QUANTIZE_CHOICES[config.quantize])


@dataclass(frozen=True)
class Transcript:
    """A conversation as the model saw it: the text and the exact token ids behind it."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What the server tells clients about the loaded model."""

    name: str
    path: str
    architecture: str
    max_model_len: int
    device: str
    dtype: str  # of activations and the KV cache
    weights: str  # how matrices are held, e.g. "Q4_1 x210, Q8_0 x1 packed; float32 x61 dense"


class LLM:
    """The engine as one object: encode prompts, add requests, step, or generate synchronously."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        chat_template: ChatTemplate | None,
        *,
        name: str,
        path: Path,
        config: EngineConfig,
        weights: str = "dense",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.core = EngineCore(model, tokenizer, config=config)
        self.info = ModelInfo(
            name=name,
            path=str(path),
            architecture=model.config.architecture,
            max_model_len=self.core.max_model_len,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            weights=weights,
        )
        self._ids = itertools.count()
        # Control-token spellings inside message text would otherwise encode to the real
        # control token: a player typing "<|im_end|>" could close the turn and forge another.
        texts = sorted((t for t in tokenizer.special_texts if t), key=len, reverse=True)
        self._control_text = re.compile("|".join(map(re.escape, texts))) if texts else None

    @classmethod
    def load(
        cls,
        path: str | Path,
        config: EngineConfig | None = None,
        *,
        chat_template: str | None = None,
    ) -> LLM:
        """Load weights, tokenizer and chat template; raises ModelLoadError and friends."""
        config = config or EngineConfig()
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        device, dtype = resolve_device(config)
        policy = resolve_weights(config, device)
        checkpoint = load_checkpoint(
            path, keep_packed=policy.keep_packed, quantize_to=policy.quantize_to
        )
        model = Transformer(checkpoint.config, checkpoint.tensors, device=device, dtype=dtype)
        weights = describe_weights(checkpoint.tensors)
        log.info("weights: %s; activations %s on %s", weights, dtype, device)
        log.info("kernels: %s", model.kernels)
        tokenizer = load_tokenizer(checkpoint.path, checkpoint.gguf_metadata)
        try:
            template: ChatTemplate | None = load_chat_template(
                checkpoint.path, checkpoint.gguf_metadata, chat_template
            )
        except ChatTemplateError:
            if chat_template is not None:
                raise
            template = None  # raw prompts still work; chat turns will say why they cannot
        return cls(
            model,
            tokenizer,
            template,
            name=checkpoint.name,
            path=checkpoint.path,
            config=config,
            weights=weights,
        )

    def restart_core(self) -> EngineCore:
        """A fresh EngineCore on the same weights (after a crash): empty queues, empty KV."""
        config = self.core.config
        self.core.close()  # its mask thread would otherwise outlive it, one per restart
        del self.core  # free the old KV tensors before allocating the new ones
        self.core = EngineCore(self.model, self.tokenizer, config=config)
        return self.core

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        if self.chat_template is None:
            raise ChatTemplateError("model has no chat template; pass one with --chat-template")
        if self._control_text is not None:
            pattern = self._control_text
            messages = [{**m, "content": pattern.sub("", m["content"])} for m in messages]
        return self.chat_template.render(messages, add_generation_prompt=True)

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of a conversation, rendered with the model's template, ready to answer."""
        # The template writes BOS itself when the model wants one.
        return self.tokenizer.encode(self.render_chat(messages))

    def encode_chat_turn(
        self, messages: Sequence[Mapping[str, str]], history: Transcript | None = None
    ) -> Transcript:
        """Like encode_chat, but a session's next turn reuses the previous turn's exact tokens.

        Re-tokenizing a rendered history need not give back the tokens the model generated,
        and the first differing token would end the KV prefix match there. So when the new
        rendering extends the history's text, only the new text is encoded.
        """
        text = self.render_chat(messages)
        if history is not None and history.token_ids and text.startswith(history.text):
            new_ids = self.tokenizer.encode(text[len(history.text) :])
            return Transcript(text, history.token_ids + tuple(new_ids))
        return Transcript(text, tuple(self.tokenizer.encode(text)))

    def continue_transcript(self, prompt: Transcript, output_ids: Sequence[int]) -> Transcript:
        """The prompt followed by what the model generated, special tokens included."""
        raw = b"".join(self.tokenizer.token_bytes(i) for i in output_ids)
        text = raw.decode("utf-8", errors="replace")
        return Transcript(prompt.text + text, prompt.token_ids + tuple(output_ids))

    def encode_prompt(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special=True)

    def new_request(
        self,
        prompt_token_ids: Sequence[int],
        sampling: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: Priority = Priority.INTERACTIVE,
        session_id: str | None = None,
        cache_salt: str = "",
        prefill_only: bool = False,
    ) -> EngineRequest:
        return EngineRequest(
            request_id=request_id or f"req-{next(self._ids)}",
            prompt_token_ids=tuple(prompt_token_ids),
            sampling=sampling or SamplingParams(),
            priority=priority,
            session_id=session_id,
            cache_salt=cache_salt,
            arrival_time=time.monotonic(),
            prefill_only=prefill_only,
        )

    def score(
        self,
        prompt_token_ids: Sequence[int],
        candidates: Sequence[Sequence[int]],
        *,
        cache_salt: str = "",
    ) -> ScoreOutput:
        """Log-probability of each candidate after the prompt, run alone (like generate)."""
        plan = plan_score(
            f"score-{next(self._ids)}", prompt_token_ids, candidates, cache_salt=cache_salt
        )
        warm = self._run_to_end([plan.warm])[plan.warm.request_id]
        return plan.result(warm, self._run_to_end(plan.candidates))

    def _run_to_end(self, requests: Sequence[EngineRequest]) -> dict[str, RequestOutput]:
        """Step until every request has finished; their finishing outputs by request id."""
        for request in requests:
            self.core.add_request(request)
        pending = {request.request_id for request in requests}
        final: dict[str, RequestOutput] = {}
        while pending:
            for output in self.core.step():
                if output.finished and output.request_id in pending:
                    final[output.request_id] = output
                    pending.discard(output.request_id)
        return final

    def generate(
        self, prompt_token_ids: Sequence[int], sampling: SamplingParams | None = None
    ) -> Iterator[RequestOutput]:
        """Run one request to its end, alone, yielding each step's output."""
        request = self.new_request(prompt_token_ids, sampling)
        self.core.add_request(request)
        while self.core.has_unfinished():
            for output in self.core.step():
                if output.request_id == request.request_id:
                    yield output
