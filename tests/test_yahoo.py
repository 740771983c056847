"""The `yahoo` preset: the reduced split of the paper's Yahoo files, `_UNK` as `<unk>`, and the sha256 check."""

from __future__ import annotations

import re
import shutil

import pytest

from lagvae.config import ConfigError, DataConfig
from lagvae.data import build_data
from lagvae.data.corpus import default_data_root, encode_corpus
from lagvae.data.text import UNK, UNK_ID
from lagvae.data.yahoo import HELD_OUT, YAHOO_FILES, interleave, map_unk, yahoo_lines, yahoo_split
from lagvae.experiments.presets import make_config

ROOT = default_data_root()
needs_yahoo = pytest.mark.skipif(
    ROOT is None or not (ROOT / "yahoo").is_dir(),
    reason="../shared/data/yahoo is absent (see ../shared/data/README.md)",
)


def _topic_lines(topics: int = 10, per_topic: int = 5) -> list[str]:
    """Lines `t<topic>d<doc> ...` in file order: topic after topic, as the Yahoo files hold them."""
    return [f"t{t}d{d} a _UNK b" for t in range(topics) for d in range(per_topic)]


def test_the_split_interleaves_topics_and_holds_out_the_last_of_each():
    valid, test = _topic_lines(), _topic_lines(per_topic=3)
    assert interleave(valid)[:3] == [valid[0], valid[5], valid[10]]
    split = yahoo_split(valid, test, held_out=10)
    assert [len(split[s]) for s in ("train", "valid", "test")] == [40, 10, 30]
    # the held-out part is each topic's last document; training keeps the first four of every topic
    assert sorted(doc.split()[0] for doc in split["valid"]) == [f"t{t}d4" for t in range(10)]
    assert {doc.split()[0][:2] for doc in split["train"][:10]} == {f"t{t}" for t in range(10)}
    assert split == yahoo_split(valid, test, held_out=10)  # no randomness: the same lines give the same split
    with pytest.raises(ValueError, match="equal blocks"):
        interleave(valid[:-1])


def test_the_files_unk_becomes_lagvaes_unknown_word():
    assert map_unk("a _UNK b _UNKish") == f"a {UNK} b _UNKish"  # only the whole token
    raw = {"train": ["x _UNK y", "_UNK x"], "valid": ["y _UNK"], "test": ["z x"]}
    sets, vocab, _ = encode_corpus({k: [map_unk(line) for line in v] for k, v in raw.items()}, DataConfig())
    assert "_UNK" not in vocab.stoi and vocab.itos[4:] == ["x", "y"]  # <unk> is id 3, never a word of its own
    assert sets["train"].tokens[0, :5].tolist() == [1, 4, UNK_ID, 5, 2]
    assert sets["test"].tokens[0, 1] == UNK_ID  # an unseen word too


def test_yahoo_preset_sizes():
    paper, cpu = make_config("yahoo", size="paper"), make_config("yahoo", size="cpu")
    m = paper.model
    assert (m.embed_dim, m.enc_hidden, m.dec_hidden, m.latent_dim, paper.train.batch_size) == (512, 1024, 1024, 32, 32)
    assert (cpu.model.embed_dim, cpu.model.dec_hidden, cpu.model.latent_dim) == (64, 128, 32)
    assert (paper.data.name, paper.data.vocab_from, paper.data.max_len) == ("yahoo", "all", 0)


@needs_yahoo
def test_hashes_agree_with_the_data_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## yahoo/") :]
    valid, test = re.search(r"sha256 `(\w+)` \(valid\),\s*`(\w+)` \(test\)", section).groups()
    assert {"yahoo.valid.txt": valid, "yahoo.test.txt": test} == YAHOO_FILES


@needs_yahoo
def test_yahoo_split_sizes_and_determinism():
    lines = yahoo_lines(ROOT)
    assert [len(lines[s]) for s in ("train", "valid", "test")] == [10_000 - HELD_OUT, HELD_OUT, 10_000]
    assert lines == yahoo_lines(ROOT)
    raw = (ROOT / "yahoo" / "yahoo.valid.txt").read_text(encoding="utf-8").splitlines()
    # training starts with each topic's first document; validation with the first topic's 901st
    assert lines["train"][:2] == [map_unk(raw[0]), map_unk(raw[1000])]
    assert lines["valid"][0] == map_unk(raw[900]) and lines["valid"][-1] == map_unk(raw[-1])
    tokens = [doc.split() for split in lines.values() for doc in split]
    assert sum(len(d) for d in tokens) == 790_680 + 788_673  # the README's ~79 tokens a document
    assert not any("_UNK" in d for d in tokens) and sum(d.count(UNK) for d in tokens) == 33_582 + 33_081


@needs_yahoo
def test_a_tampered_yahoo_file_is_refused(tmp_path):
    copy = tmp_path / "yahoo"
    shutil.copytree(ROOT / "yahoo", copy)
    copy.chmod(0o755)  # the shared copy is read-only
    assert yahoo_lines(tmp_path)["test"]  # the untouched copy loads
    path = copy / "yahoo.test.txt"
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # one bit
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="yahoo.test.txt has sha256") as err:
        build_data(DataConfig(name="yahoo", path=str(tmp_path)))
    assert "\n" not in str(err.value)
    path.unlink()
    with pytest.raises(ConfigError, match="Yahoo file not found: .*yahoo.test.txt"):
        build_data(DataConfig(name="yahoo", path=str(tmp_path)))
    with pytest.raises(ConfigError, match="set data.path=FOLDER holding yahoo/"):
        build_data(DataConfig(name="yahoo", path=str(tmp_path / "nowhere")))
