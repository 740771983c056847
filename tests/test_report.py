"""`lagvae report`: one self-contained page per run or compare folder, rendered in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from lagvae.cli import main
from lagvae.experiments.compare import Grid, run_grid
from lagvae.experiments.html_report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from check_report import browser, check  # noqa: E402

SETTINGS = ("eval.iw_samples=2", "eval.posterior_points=20", "eval.posterior_grid=1.0")
SETTINGS += ("eval.snapshots_epoch0=1", "data.n_train=64", "data.n_val=32", "data.n_test=16")


@pytest.fixture(scope="module")
def grid_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lagvae.experiments import compare
    from tests.conftest import InlinePool

    out = tmp_path_factory.mktemp("grid")
    grid = Grid("synthetic", ("vae", "aggressive"), (0,), out, 2, 64, overrides=SETTINGS, reference="aggressive")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare, "worker_pool", InlinePool)
        run_grid(grid)
    return out


def _self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing fetched
    assert "data:image/png;base64," in page


def test_a_run_page_holds_curves_posterior_figure_final_table_alarms_and_config(grid_folder, tmp_path):
    run = grid_folder / "vae" / "seed0"
    page = write_report(run).read_text()
    _self_contained(page)
    assert page.count("<img") == 2  # the curves and the posterior-mean figure
    final = json.loads((run / "final.json").read_text())
    assert f"{final['nll']:.4g}" in page and "mi_full" in page
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # each alarm kind under its own name, with what it means: collapse apart from KL paid without information
    assert ("Posterior collapse</b>" in page) == any(r.get("alarm") == "collapse" for r in records)
    assert "KL paid without information</b>" not in page or any(r.get("alarm") != "collapse" for r in records)
    assert "&quot;method&quot;: &quot;vae&quot;" in page  # the config, escaped
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0 and (tmp_path / "r.html").exists()


def test_a_compare_page_holds_the_table_and_curves_per_method(grid_folder, tmp_path):
    page = write_report(grid_folder).read_text()
    _self_contained(page)
    assert "<th>I_q (mi_full)</th>" in page and "<th>I_q (minibatch, paper&#x27;s)</th>" in page
    assert "<td>aggressive</td>" in page and "<td>vae</td>" in page and "<th>time vs vae</th>" in page
    assert page.count("<img") == 1 and "aggressive / seed0: 2 epochs" in page
    # how long aggressive mode lasted, from each run's metrics.jsonl
    records = [json.loads(line) for line in (grid_folder / "aggressive" / "seed0" / "metrics.jsonl").open()]
    table = (grid_folder / "compare.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| method |"))
    head = [cell.strip() for cell in header.strip("|").split("|")]
    row = next(line for line in table if line.startswith("| aggressive |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[head.index("aggressive epochs")] == f"{sum(r['aggressive'] for r in records):.1f}"
    # the page's cells are compare.md's: each Markdown row is an HTML row
    for line in (raw for raw in table if raw.startswith("| ") and not raw.startswith("| method")):
        tds = "".join(f"<td>{html.escape(cell.strip())}</td>" for cell in line.strip().strip("|").split("|"))
        assert f"<tr>{tds}</tr>" in page
    # the paired comparison is a table of its own, after its heading; one seed gives no verdict
    assert page.count("<table>") == 3 and "<th>method - aggressive</th>" in page and "Paired against" in page
    assert "<td>one seed, no verdict</td>" in page and "<th>95% interval (t, over seeds)</th>" in page
    assert "Each run:" in page and "<th>best epoch</th>" in page
    # built from the cells (the row model), not read back from compare.md
    copy = shutil.copytree(grid_folder, tmp_path / "grid")
    (copy / "compare.md").write_text("| method |\n|---|\n| nonsense |\n")
    again = write_report(copy).read_text()
    assert "nonsense" not in again and again.count("<table>") == 3 and "<td>one seed, no verdict</td>" in again


def test_report_on_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "neither a run folder" in err


@pytest.mark.slow
@pytest.mark.skipif(browser() is None, reason="no chromium on PATH (apt-get install chromium)")
def test_both_pages_render_in_headless_chromium_without_errors(grid_folder, tmp_path):
    for folder in (grid_folder / "aggressive" / "seed0", grid_folder):
        assert check(write_report(folder), tmp_path / "shot.png", 1280, 1600) is None
        assert (tmp_path / "shot.png").stat().st_size > 10_000
    broken = tmp_path / "broken.html"  # the check must be able to fail: a figure that does not decode
    page = write_report(grid_folder, broken).read_text()
    broken.write_text(page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    assert "did not finish rendering" in (check(broken, None, 800, 600) or "")
