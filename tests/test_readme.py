"""The README and docs: the set-up commands CI runs, and recipes whose settings and flags still exist."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_make_commands_ci_uses():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "test-all", "setup"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci and "\nmake test-all\n" in ci  # CI runs both tiers
    # the tiers split on the `slow` marker, registered so a typo in it is an error, not a silent skip
    assert '-m "not slow"' in makefile and "-m slow" in makefile
    assert "--strict-markers" in (ROOT / "pyproject.toml").read_text()
    assert "make test-all" in readme
    # the demo target runs the library's demo command, which the CLI tests exercise
    assert "lagvae demo" in makefile


def test_the_readme_python_api_block_runs(tmp_path, monkeypatch, capsys):
    """The README's Python block, executed on a tiny run: make_config gets tiny data and 1 epoch, and the
    generation half loads the run the first half trained (the README's runs/ptb-agg is a PTB run)."""
    import lagvae
    from lagvae.experiments.presets import make_config

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None
    source = block.group(1).replace('"runs/ptb-agg"', '"runs/agg"')
    tiny = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "eval.iw_samples=4", "eval.posterior_points=0"]

    def tiny_config(preset, method="vae", **kwargs):
        config = make_config(preset, method, **{**kwargs, "epochs": 1}, overrides=tiny)
        config.threads, config.progress = 1, False
        return config

    monkeypatch.setattr(lagvae, "make_config", tiny_config)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert set(namespace["results"]) >= {"nll", "kl", "mi", "au"}
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3 and printed[0].startswith("[")  # three lists of generated sentences


def test_every_setting_the_docs_name_is_a_current_key():
    """A `--set KEY=` or `` `KEY=`` in the README or docs/ names a setting of this release, not a removed one
    nor a schema-1 alias (which still loads, but a reader should learn the current name)."""
    from lagvae.config import RunConfig, flatten, to_dict

    keys = set(flatten(to_dict(RunConfig())))
    historical = {"section.field", "train.agg_dec_norm_every"}  # a placeholder; an option docs say was removed
    stale = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in re.finditer(r"(?:--set\s+|`)([a-z_]+(?:\.[a-z_0-9]+)+)=", path.read_text()):
            if match.group(1) not in keys | historical:
                stale.append(f"{path.name}: {match.group(1)}")
    assert not stale


def test_every_lagvae_command_in_the_docs_parses():
    """Each `lagvae ...` line of a README or docs/ code block is accepted by the CLI's parser (its flags
    and choices exist), so a renamed flag cannot leave a recipe behind; `[...]` marks an optional part."""
    from lagvae.cli import build_parser

    parser, commands, rejected = build_parser(), 0, []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", path.read_text(), re.S):
            for line in re.sub(r"\\\n\s*(?:#\s*)?", " ", block).splitlines():
                found = re.search(r"(?:^|&&|;)\s*(?:\S*/)?lagvae\s+([^#&;|>]*)", line.strip().removeprefix("$ "))
                if found is None:
                    continue
                commands += 1
                argv = shlex.split(re.sub(r"\[(--[^]]*)\]", r"\1", found.group(1)))
                try:
                    with contextlib.redirect_stderr(io.StringIO()):
                        parser.parse_args(argv)
                except SystemExit:
                    rejected.append(f"{path.name}: lagvae {' '.join(argv)}")
    assert commands >= 20  # the README's recipes and the docs' reproduction commands were all found
    assert not rejected
