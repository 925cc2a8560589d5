"""HellaSwag scoring with a fake model whose losses are known, so accuracy is exact; the
download through a loopback HTTP server; rendering with GPT-2 as build-nanogpt does."""

import http.server
import json
import math
import threading
from pathlib import Path

import pytest
import torch

from budgetlm.errors import BudgetLMError
from budgetlm.eval import hellaswag as hs

# With ByteTok and PreferA below: an "a" costs ~0 nats, any other byte costs log(255) = L.
# Ending "b" -> tokens " ", "b": sum 2L, mean L.  Ending "aaaaaaaa b" -> " ", 8 x "a", " ", "b": sum 3L, mean 3L/11.
SHORT, LONG_A = "b", "aaaaaaaa b"
ITEMS = [  # (endings, label): which of sum / mean picks the label
    ([SHORT, LONG_A, "cd", "xyz"], 1),  # sum picks SHORT (2L), mean picks LONG_A (3L/11): only acc_norm right
    ([SHORT, LONG_A, "cd", "xyz"], 0),  # same predictions, label SHORT: only acc right
    (["c", "xy", LONG_A, "zzzz"], 2),   # sum picks "c" (2L), mean picks LONG_A: only acc_norm right
    (["aaaa", "b", "cd", "efg"], 0),    # " aaaa" costs L in all (mean L/5): both right
]


def write_fixture(path: Path, n: int = 4) -> Path:
    """Items in the real file's format (ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split, label)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        endings, label = ITEMS[i % len(ITEMS)]
        rows.append({"ind": i, "activity_label": "Testing", "ctx_a": "q", "ctx_b": "r", "ctx": "q r",
                     "split": "val", "split_type": "indomain", "label": label, "endings": endings,
                     "source_id": f"test~{i}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ByteTok:
    def encode(self, text):
        return list(text.encode())


class PreferA(torch.nn.Module):
    """Same logits at every position: 'a' (97) near-certain, all else uniform."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(256))

    def forward(self, idx, targets=None):
        logits = torch.zeros(256)
        logits[97] = 40.0
        return (logits + self.w).expand(*idx.shape, 256), None


def expected(items):
    """Exact predictions from the loss model in the comment above."""
    L = math.log(255)
    acc = acc_norm = 0
    for endings, label in items:
        costs = []
        for e in endings:
            toks = (" " + e).encode()
            s = sum(0.0 if t == 97 else L for t in toks)
            costs.append((s, s / len(toks)))
        acc += min(range(4), key=lambda i: (costs[i][0], i)) == label
        acc_norm += min(range(4), key=lambda i: (costs[i][1], i)) == label
    return acc, acc_norm


def test_render_masks_only_the_ending():
    ex = {"ctx": "q r", "endings": ["b", "cd", "aaaa", "x"], "label": 2}
    tokens, mask, label = hs.render_example(ex, ByteTok())
    assert label == 2 and tokens.shape == mask.shape == (4, 3 + 5)
    assert tokens[2].tolist() == list(b"q r aaaa") and mask[2].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert mask[0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]  # right-padded, padding not scored


def test_accuracy_is_exact_with_known_losses(tmp_path):
    examples = hs.load_examples(write_fixture(tmp_path / "h.jsonl"))
    r = hs.evaluate_hellaswag(PreferA(), ByteTok(), examples)
    acc, acc_norm = expected([ITEMS[i] for i in range(4)])
    assert r == {"acc": acc / 4, "acc_norm": acc_norm / 4, "n": 4}
    assert (acc, acc_norm) == (2, 3)  # the fixture tells acc and acc_norm apart
    assert hs.evaluate_hellaswag(PreferA(), ByteTok(), examples[:2]) == {"acc": 0.5, "acc_norm": 0.5, "n": 2}


def test_ranks_stride_items_and_sum_counts(tmp_path):
    examples = hs.load_examples(write_fixture(tmp_path / "h.jsonl", n=7))
    whole = hs.evaluate_hellaswag(PreferA(), ByteTok(), examples)
    parts = [hs.evaluate_hellaswag(PreferA(), ByteTok(), examples, rank=r, world=3, reduce=lambda v: v)
             for r in range(3)]
    assert [p["n"] for p in parts] == [3, 2, 2]
    n = sum(p["n"] for p in parts)
    assert n == whole["n"] == 7
    assert sum(p["acc_norm"] * p["n"] for p in parts) == pytest.approx(whole["acc_norm"] * 7)
    assert sum(p["acc"] * p["n"] for p in parts) == pytest.approx(whole["acc"] * 7)


def test_bad_file_names_the_line(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_text(json.dumps({"ctx": "a", "endings": ["x"], "label": 0}) + "\n")
    with pytest.raises(BudgetLMError, match=r"h.jsonl:1"):
        hs.load_examples(p)


def test_download_from_loopback_server_then_cache(tmp_path):
    src = write_fixture(tmp_path / "served" / "hellaswag_val.jsonl")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(src.parent), **k)

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hellaswag_val.jsonl"
    try:
        got = hs.download(url, cache_dir=tmp_path / "cache", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert got.read_bytes() == src.read_bytes() and not list((tmp_path / "cache").glob("*.part"))
    assert hs.download(url, cache_dir=tmp_path / "cache", timeout=1) == got  # server gone: the cache answers


def test_download_offline_is_a_clear_error(tmp_path):
    with socket_closed_port() as port:
        with pytest.raises(BudgetLMError, match="could not download .*BUDGETLM_CACHE"):
            hs.download(f"http://127.0.0.1:{port}/hellaswag_val.jsonl", cache_dir=tmp_path, timeout=2)
    assert not list(tmp_path.iterdir())


class socket_closed_port:
    """A port with nothing listening on it."""

    def __enter__(self):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *a):
        return False


def test_gpt2_rendering_matches_build_nanogpt():
    """Endings are encoded with their leading space, appended to the context tokens."""
    from budgetlm.data.tokenizers import load_gpt2
    try:
        tok = load_gpt2()
    except BudgetLMError as e:
        pytest.skip(f"GPT-2 tokenizer files unavailable: {e}")
    ex = {"ctx": "A man is sitting on a roof. He", "endings": ["starts pulling up roofing.", "is ripping it."] * 2,
          "label": 0}
    tokens, mask, _ = hs.render_example(ex, tok)
    ctx = tok.encode(ex["ctx"])
    end = tok.encode(" starts pulling up roofing.")
    assert tokens[0, :len(ctx) + len(end)].tolist() == ctx + end
    assert end[0] == tok.encode(" starts")[0] and mask[0].sum() == len(end)
    assert ctx[:2] == [32, 582]  # "A", " man" in GPT-2's vocabulary


def test_references_are_recorded():
    assert hs.REFERENCES["GPT-2 124M"] == pytest.approx(0.2945, abs=1e-3)
    assert hs.REFERENCES["GPT-2 1.5B"] == pytest.approx(0.489, abs=1e-3)
    assert hs.REFERENCES["GPT-3 1.3B"] == pytest.approx(0.547)


SHARED_HELLASWAG = Path(__file__).resolve().parents[1].parent / "shared/data/hellaswag/hellaswag_val.jsonl.xz"


@pytest.fixture
def shared_hellaswag():
    if not SHARED_HELLASWAG.is_file():
        pytest.skip(f"shared HellaSwag validation file not found at {SHARED_HELLASWAG}")
    return SHARED_HELLASWAG


def test_real_validation_set_loads_from_xz(shared_hellaswag):
    items = hs.load_examples(shared_hellaswag)
    assert len(items) == hs.VAL_ITEMS == 10042
    assert [ex["ind"] for ex in items[:3]] == [0, 1, 2] and {ex["label"] for ex in items} == {0, 1, 2, 3}
    assert items[0]["ctx"] == "A man is sitting on a roof. he"
    assert items[0]["endings"][items[0]["label"]] == "starts pulling up roofing on a roof."
    for ex in (items[0], items[5000], items[-1]):  # rendered as ctx + " " + ending, the ending masked in
        tokens, mask, label = hs.render_example(ex, ByteTok())
        assert label == ex["label"]
        for row, m, ending in zip(tokens, mask, ex["endings"]):
            text = (ex["ctx"] + " " + ending).encode()
            assert row[:len(text)].tolist() == list(text) and row[len(text):].sum() == 0
            assert m.sum() == len((" " + ending).encode()) and m[len(ex["ctx"].encode())] == 1
    assert len(hs.load_examples(shared_hellaswag, limit=7)) == 7


def test_converted_items_score_like_the_original_format(shared_hellaswag, tmp_path):
    """The first 50 items of the shared (converted, xz) file written back in the original layout
    (ctx_a/ctx_b/split/split_type/source_id) score the same with a seeded model."""
    from budgetlm.config import ModelConfig
    from budgetlm.models import build_model
    items = hs.load_examples(shared_hellaswag, limit=50)
    original = tmp_path / "hellaswag_val.jsonl"
    original.write_text("".join(json.dumps({"ind": ex["ind"], "activity_label": ex["activity_label"],
                                            "ctx_a": ex["ctx"], "ctx_b": "", "ctx": ex["ctx"], "split": "val",
                                            "split_type": "indomain", "label": ex["label"], "endings": ex["endings"],
                                            "source_id": f"x~{ex['ind']}"}) + "\n" for ex in items))
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=256, block_size=512, n_layer=1, n_head=2, n_embd=32))
    converted = hs.evaluate_hellaswag(model, ByteTok(), items)
    assert converted == hs.evaluate_hellaswag(model, ByteTok(), hs.load_examples(original))
    assert converted["n"] == 50 and 0 < converted["acc_norm"] < 1


def test_local_file_by_flag_or_env(shared_hellaswag, tmp_path, monkeypatch):
    assert hs.locate(shared_hellaswag) == shared_hellaswag
    monkeypatch.setenv(hs.FILE_ENV, str(shared_hellaswag))
    assert hs.locate() == shared_hellaswag
    monkeypatch.setenv(hs.FILE_ENV, str(tmp_path / "gone.jsonl.xz"))
    with pytest.raises(BudgetLMError, match="BUDGETLM_HELLASWAG_FILE .*gone.jsonl.xz: file not found"):
        hs.locate()
    with pytest.raises(BudgetLMError, match="--hellaswag-file .*gone.jsonl: file not found"):
        hs.locate(tmp_path / "gone.jsonl")
    bad = tmp_path / "bad.jsonl.xz"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(BudgetLMError, match="bad.jsonl.xz: cannot be read as HellaSwag jsonl"):
        hs.load_examples(bad)


def test_trainer_reads_a_local_xz_file(synth_data, tmp_path):
    import lzma
    from budgetlm.config import EvalConfig, FastConfig, TrainConfig, model_config
    from budgetlm.train.trainer import train
    src = write_fixture(tmp_path / "h.jsonl", n=5)
    packed = tmp_path / "h.jsonl.xz"
    packed.write_bytes(lzma.compress(src.read_bytes()))
    info = train(model_config(n_layer=1, n_head=2, n_embd=16),
                 TrainConfig(budget="2-steps", batch_size=2, seq_len=32, out_dir=str(tmp_path / "run"), progress=False,
                             threads=1, log_to="jsonl",
                             eval=EvalConfig(final_eval_tokens=256, hellaswag_every=2, hellaswag_file=str(packed)),
                             fast=FastConfig(compile="off")), synth_data, log=lambda *_: None)
    assert info.extra["hellaswag_n"] == 5
