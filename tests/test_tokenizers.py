import pytest

from budgetlm.data.tokenizers import build_tokenizer, load_gpt2, load_tokenizer
from budgetlm.errors import BudgetLMError

TEXTS = ["Once upon a time, there was a little girl named Lily.", "She liked to play in the park. \"Hi!\" she said."] * 50


@pytest.fixture(scope="module")
def gpt2():
    try:
        return load_gpt2()
    except BudgetLMError as e:
        pytest.skip(f"GPT-2 tokenizer files unavailable: {e}")


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eot_id == 50256 and gpt2.vocab_size == 50257
    text = "It's a test:  multiple   spaces, émojis 🙂 and\nnewlines."
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_matches_tiktoken_when_available(gpt2):
    tiktoken = pytest.importorskip("tiktoken")
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # its files download on first use; offline they cannot
        pytest.skip(f"tiktoken's gpt2 files not available offline ({type(e).__name__})")
    for t in TEXTS + ["  leading spaces", "numbers 12345 and symbols #$%"]:
        assert gpt2.encode(t) == enc.encode(t)


def test_bpe_trains_to_size_and_round_trips(tmp_path):
    tok = build_tokenizer("bpe:400", iter(TEXTS))
    assert tok.vocab_size <= 400 and tok.eot_id == 0
    ids = tok.encode(TEXTS[1])
    assert tok.decode(ids) == TEXTS[1]
    assert len(ids) < len(TEXTS[1])  # merges learned: fewer tokens than bytes
    tok.save(tmp_path / "tokenizer.json")
    back = load_tokenizer(tmp_path)
    assert back.encode(TEXTS[0]) == tok.encode(TEXTS[0]) and back.fingerprint() == tok.fingerprint()


def test_token_bytes_sum_to_text_bytes():
    for spec in ("bpe:300", "char"):
        tok = build_tokenizer(spec, iter(TEXTS))
        text = "Once upon a time, she said \"Hi!\" — café."
        ids = tok.encode(text)
        if spec == "char":  # unseen characters map to a stand-in, so only count seen text
            text = "Once upon a time, she said \"Hi!\""
            ids = tok.encode(text)
        assert int(tok.token_bytes()[ids].sum()) == len(text.encode())
        assert tok.token_bytes()[tok.eot_id] == 0


def test_char_tokenizer(tmp_path):
    tok = build_tokenizer("char", iter(["abc", "cab d"]))
    assert tok.vocab_size == 6  # a b c d space + eot
    assert tok.decode(tok.encode("bad cab")) == "bad cab"
    tok.save(tmp_path / "t.json")
    assert load_tokenizer(tmp_path / "t.json").encode("dab") == tok.encode("dab")


@pytest.mark.parametrize("spec,msg", [("wordpiece", "unknown tokenizer"), ("bpe:abc", "bpe:N"), ("bpe:100", "at least 258")])
def test_bad_tokenizer_spec(spec, msg):
    with pytest.raises(BudgetLMError, match=msg):
        build_tokenizer(spec, iter(TEXTS))


def test_load_missing_or_foreign_file(tmp_path):
    with pytest.raises(BudgetLMError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text('{"foo": 1}')
    with pytest.raises(BudgetLMError, match="not a budgetlm tokenizer"):
        load_tokenizer(tmp_path / "x.json")
