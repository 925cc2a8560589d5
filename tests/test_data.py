import json

import numpy as np
import pytest

from budgetlm.data.prepare import load_meta, prepare
from budgetlm.data.shards import load_split
from budgetlm.data.sources import iter_txt, open_source, split_text
from budgetlm.data.tokenizers import load_tokenizer
from budgetlm.errors import BudgetLMError

QUIET = lambda *_: None  # noqa: E731


def test_split_text_layouts():
    shared_layout = "story one.\n\npara two.\nstory two.\nstory three.\n\nmore.\n"
    assert split_text(shared_layout) == ["story one.\n\npara two.", "story two.", "story three.\n\nmore."]
    assert split_text("a\nb<|endoftext|>c\n\nd<|endoftext|>") == ["a\nb", "c\n\nd"]


def test_iter_txt_chunks_match_whole_file(tmp_path, monkeypatch):
    import budgetlm.data.sources as S
    text = "".join(f"story {i} line.\n\nsecond paragraph {i}.\n" for i in range(300))
    p = tmp_path / "s.txt"
    p.write_text(text)
    whole = split_text(text)
    monkeypatch.setattr(S, "_CHUNK", 37)  # chunk edges fall everywhere, also between "\n\n"
    assert list(iter_txt(p)) == whole and len(whole) == 300


def test_shared_stories_split(stories_path):
    docs = list(iter_txt(stories_path))
    assert len(docs) > 4000
    assert docs[0].startswith("one day, a little girl named lily found a needle")
    assert "\n\n" in docs[0]  # paragraphs stay inside their story


def test_prepare_holds_out_tail(tmp_path):
    stories = [f"Story number {i} is about a cat." for i in range(100)]
    src = tmp_path / "s.txt"
    src.write_text("\n".join(stories) + "\n")
    meta = prepare(str(src), "char", tmp_path / "out", val_frac=0.1, log=QUIET)
    assert meta["docs_read"] == 100 and meta["val_docs"] == 10
    tok = load_tokenizer(tmp_path / "out")
    val = load_split(tmp_path / "out", "val")
    val_text = tok.decode(val).split("<|endoftext|>")[1:]
    assert val_text == stories[90:]  # the last 10% of documents, in order
    train_text = tok.decode(load_split(tmp_path / "out", "train")).split("<|endoftext|>")[1:]
    assert train_text == stories[:90]


def test_prepare_max_tokens_is_lazy(tmp_path):
    meta = prepare("synth", "bpe:300", tmp_path, max_tokens=5000, log=QUIET)
    assert 5000 <= meta["train_tokens"] < 5000 + 2048 * 400  # stops after the batch that reaches it
    assert meta["docs_read"] < 10_000


def test_prepare_jsonl_parquet_and_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.jsonl").write_text("\n".join(json.dumps({"text": f"json doc {i}."}) for i in range(30)))
    pq.write_table(pa.table({"text": [f"parquet doc {i}." for i in range(30)], "id": list(range(30))}), d / "b.parquet")
    meta = prepare(str(d), "char", tmp_path / "out", log=QUIET)
    assert meta["docs_read"] == 60
    assert load_meta(tmp_path / "out")["vocab_size"] == load_tokenizer(tmp_path / "out").vocab_size


def test_synth_has_separate_validation(tmp_path):
    meta = prepare("synth", "bpe:300", tmp_path, max_tokens=3000, log=QUIET)
    assert meta["val_split"] == "the source's validation split" and meta["val_tokens"] > 1000
    train, val = load_split(tmp_path, "train"), load_split(tmp_path, "val")
    assert not np.array_equal(train[:200], val[:200])


@pytest.mark.parametrize("make,msg", [
    (lambda p: p.write_text(""), "file is empty"),
    (lambda p: p.write_bytes(b"\x00\x01\x02binary"), "looks binary"),
    (lambda p: p.write_bytes(b"caf\xe9 au lait " * 10), "not UTF-8"),
])
def test_bad_text_files(tmp_path, make, msg):
    p = tmp_path / "bad.txt"
    make(p)
    with pytest.raises(BudgetLMError, match=f"bad.txt: {msg}"):
        prepare(str(p), "char", tmp_path / "out", log=QUIET)


def test_bad_sources(tmp_path):
    with pytest.raises(BudgetLMError, match="no such file or directory"):
        open_source("nonexistent_corpus")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(BudgetLMError, match="unsupported file type '.csv'"):
        open_source(str(tmp_path / "x.csv"))
    (tmp_path / "bad.jsonl").write_text('{"content": "no text field"}\n')
    with pytest.raises(BudgetLMError, match="bad.jsonl:1: expected a JSON object with a 'text' field"):
        prepare(str(tmp_path / "bad.jsonl"), "char", tmp_path / "o", log=QUIET)
    with pytest.raises(BudgetLMError, match="expected hf:OWNER/NAME"):
        open_source("hf:")


def test_tinystories_from_prefilled_hub_cache(tmp_path, monkeypatch):
    """The real hub code path, served from a cache laid out as huggingface_hub writes it."""
    commit = "a" * 40
    snap = tmp_path / "datasets--roneneldan--TinyStories" / "snapshots" / commit
    snap.mkdir(parents=True)
    (tmp_path / "datasets--roneneldan--TinyStories" / "refs").mkdir()
    (tmp_path / "datasets--roneneldan--TinyStories" / "refs" / "main").write_text(commit)
    (snap / "TinyStoriesV2-GPT4-train.txt").write_text(
        "<|endoftext|>".join(f"Once upon a time {i}.\n\nThe end." for i in range(50)))
    (snap / "TinyStoriesV2-GPT4-valid.txt").write_text("Val story one.<|endoftext|>Val story two.")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = open_source("tinystories", cache_dir=str(tmp_path))
    train = list(src.train())
    assert len(train) == 50 and train[3] == "Once upon a time 3.\n\nThe end."
    assert list(src.val()) == ["Val story one.", "Val story two."]


def test_tinystories_offline_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BudgetLMError, match="hub cannot be reached"):
        list(open_source("tinystories", cache_dir=str(tmp_path)).train())


def test_auto_size_picks_chinchilla_nearest():
    from budgetlm.speedrun.pipeline import pick_size
    # 100 s at these speeds sees 2M, 1M, 0.5M tokens -> optimal sizes 100k, 50k, 25k params
    shapes = [(10_000, 20_000.0), (50_000, 10_000.0), (400_000, 5_000.0)]
    assert pick_size(shapes, 100) == 1
    assert pick_size(shapes, 10_000) == 2  # a long budget favours the largest
    assert pick_size(shapes, 1) == 0
