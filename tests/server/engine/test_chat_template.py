"""Chat templates: the default model's own, HF folder sources, overrides, errors, the sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import pytest

from server.engine.chat_template import ChatTemplate, load_chat_template
from server.engine.errors import ChatTemplateError
from server.engine.gguf_file import open_gguf, read_metadata

NO_TEMPLATE = "model has no chat template; pass one with --chat-template"
SIMPLE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
CONVERSATION = [
    {"role": "system", "content": "You are Bob, a blacksmith."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello, traveller!"},
    {"role": "user", "content": "Can you fix my sword?"},
]


@pytest.fixture(scope="module")
def model_path(default_model: Path) -> Path:
    return default_model


@pytest.fixture(scope="module")
def metadata(model_path: Path) -> dict[str, Any]:
    return read_metadata(open_gguf(model_path))


@pytest.mark.slow
def test_default_model_multi_turn(model_path: Path, metadata: dict[str, Any]) -> None:
    template = load_chat_template(model_path, metadata)
    assert template.render(CONVERSATION) == (
        "<|im_start|>system\nYou are Bob, a blacksmith.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello, traveller!<|im_end|>\n"
        "<|im_start|>user\nCan you fix my sword?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert (template.bos_token, template.eos_token) == ("<|im_start|>", "<|im_end|>")


@pytest.mark.slow
def test_default_model_default_system_prompt(model_path: Path) -> None:
    template = load_chat_template(model_path)  # reads the metadata itself
    rendered = template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


@pytest.mark.slow
def test_override_replaces_the_model_template(
    model_path: Path, metadata: dict[str, Any], tmp_path: Path
) -> None:
    as_text = load_chat_template(model_path, metadata, override=SIMPLE)
    assert as_text.render(CONVERSATION[1:2]) == "[user] Hi\n"
    template_file = tmp_path / "npc.jinja"
    template_file.write_text("{{ bos_token }}{{ messages[-1]['content'] }}")
    from_file = load_chat_template(model_path, metadata, override=str(template_file))
    assert from_file.render(CONVERSATION) == "<|im_start|>Can you fix my sword?"


def test_gguf_without_template(tmp_path: Path) -> None:
    path = tmp_path / "plain.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(["<s>", "</s>", "a"])
    writer.add_bos_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ChatTemplateError) as caught:
        load_chat_template(path)
    assert str(caught.value) == NO_TEMPLATE
    assert load_chat_template(path, override=SIMPLE).bos_token == "<s>"


def test_folder_sources(tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match="no chat template"):
        load_chat_template(tmp_path)
    config: dict[str, Any] = {
        "bos_token": {"content": "<s>"},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {
                "name": "default",
                "template": "{{ bos_token }}{{ messages | length }}{{ eos_token }}",
            },
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_chat_template(tmp_path).render(CONVERSATION) == "<s>4</s>"
    config["chat_template"] = "plain {{ messages[0]['role'] }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_chat_template(tmp_path).render(CONVERSATION) == "plain system"
    (tmp_path / "chat_template.jinja").write_text("from jinja file")
    assert load_chat_template(tmp_path).render(CONVERSATION) == "from jinja file"


def test_not_a_model_path(tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match=r"not a \.gguf file or a model folder"):
        load_chat_template(tmp_path / "missing")


def test_hf_rendering_conventions() -> None:
    source = (
        "{% for m in messages %}\n"
        "  {% if m['role'] == 'user' %}\n"
        "U:{{ m['content'] | tojson }}\n"
        "  {% endif %}\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}A:{% endif %}"
    )
    template = ChatTemplate(source)
    # trim_blocks and lstrip_blocks: block tags leave no blank lines or indentation behind.
    assert template.render([{"role": "user", "content": "café <b>"}]) == 'U:"café <b>"\nA:'
    assert template.render([], add_generation_prompt=False) == ""
    dated = ChatTemplate("{{ strftime_now('%Y') }}").render([])
    assert dated.isdigit() and len(dated) == 4


def test_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for %}")
    raising = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        raising.render(CONVERSATION)
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        ChatTemplate("{{ messages[0]['content'] + 1 }}").render(CONVERSATION)


def test_sandbox_blocks_attribute_access() -> None:
    assert ChatTemplate("{{ ''.__class__ }}").render([]) == ""
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}").render([])
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.append({'role': 'x'}) }}").render([])
