"""The `lagvae` command line: parse flags, call the library, turn user mistakes into one-line errors."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lagvae.config import RunConfig
from lagvae.errors import ConfigError, LagvaeError
from lagvae.experiments.presets import PRESETS, SIZES, make_config
from lagvae.logs import setup_logging
from lagvae.training.methods import METHODS

if TYPE_CHECKING:
    from lagvae.inference import Posterior
    from lagvae.models import VAE


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the full usage stays behind --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lagvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one method on one preset into a run folder")
    train.add_argument("preset", help=f"one of: {', '.join(PRESETS)}")
    train.add_argument("--method", default="vae", help=f"one of: {', '.join(METHODS)}")
    train.add_argument("--size", help=f"model size: {', '.join(SIZES)}")
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--seed", type=int)
    train.add_argument("--train-limit", type=_positive_int, help="use only the first N training examples")
    train.add_argument("--out", type=Path, help="run folder (default runs/<preset>-<method>)")
    train.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        default="no",
        choices=("yes", "auto"),
        help="continue the run in --out from its last.pt; 'auto': continue when there is one, else start",
    )
    train.add_argument("--overwrite", action="store_true", help="delete the run already in --out, then start")
    train.add_argument("--beta", type=float, help="KL weight of the beta method (train.beta)")
    train.add_argument("--target", type=float, help="free-bits lambda in nats per dimension (train.free_bits)")
    train.add_argument("--threads", type=_positive_int, help="CPU threads (default: chosen from model size)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (the corpus summary stays)")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors (for scripts)")
    train.add_argument("--json", action="store_true", help="print final.json at the end, not the result line")
    train.add_argument("--retest", action="store_true", help="with --resume: test a finished run again")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable, e.g. --set train.lr=0.5 --set model.latent_dim=1",
    )

    ev = sub.add_parser(
        "eval",
        help="recompute final.json of a finished run from its best checkpoint (at another --iw-samples K: "
        "eval_k<K>.json beside it)",
    )
    ev.add_argument("run", type=Path)
    ev.add_argument("--iw-samples", type=_positive_int)
    ev.add_argument("--no-progress", action="store_true", help="no progress bar while testing")

    cmp = sub.add_parser("compare", help="a methods x seeds grid on one preset, summarised as a table")
    cmp.add_argument("preset", help=f"one of: {', '.join(PRESETS)}")
    cmp.add_argument("--methods", required=True, help="comma-separated, e.g. vae,aggressive,beta=0.8,free-bits=0.5")
    cmp.add_argument("--seeds", type=_positive_int, default=1, help="seeds 0..N-1 for every method")
    cmp.add_argument(
        "--reference",
        help="pair every method's test NLLs with this method's, example by example "
        "(default: aggressive-anneal, else aggressive, when in --methods)",
    )
    cmp.add_argument("--size", help=f"text model size for every run: {', '.join(SIZES)}")
    cmp.add_argument("--epochs", type=_positive_int)
    cmp.add_argument("--train-limit", type=_positive_int)
    cmp.add_argument("--jobs", type=_positive_int, default=1, help="runs in parallel (one CPU thread each)")
    cmp.add_argument("--out", type=Path, required=True)
    cmp.add_argument("--report-only", action="store_true", help="summarise finished runs, train nothing")
    cmp.add_argument(
        "--plan", type=Path, metavar="FILE", help="write one `lagvae train` line per unfinished cell, train nothing"
    )
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    def generation_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("run", type=Path, help="a run folder")
        p.add_argument("--decode", choices=("greedy", "beam", "sample"), default="greedy")
        p.add_argument("--beam", type=_positive_int, default=5, help="beam width")
        p.add_argument("--temperature", type=_positive_float, default=1.0, help="for --decode sample")
        p.add_argument(
            "--max-len", type=_positive_int, help="token cap (default: the run's longest training document, else 50)"
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", type=Path, help="write here: a PNG grid for image runs (required), text otherwise")
        p.add_argument("--no-progress", action="store_true", help="no progress bar while sampling images")

    smp = sub.add_parser("sample", help="decode sentences (or draw images) from z ~ p(z)")
    generation_flags(smp)
    smp.add_argument("-n", type=_positive_int, default=10)
    rec = sub.add_parser("reconstruct", help="encode sentences (or images) and decode them")
    generation_flags(rec)
    rec.add_argument(
        "--input",
        type=Path,
        help="text: a file, one sentence a line (required); images: .npy/.npz/PNG folder (default: the test split)",
    )
    rec.add_argument("-n", type=_positive_int, default=10, help="images: how many to reconstruct")
    rec.add_argument("--sample-z", action="store_true", help="decode a posterior sample, not the mean")
    itp = sub.add_parser("interpolate", help="decode along the line between two sentences' posterior means")
    generation_flags(itp)
    itp.add_argument("sentence_a")
    itp.add_argument("sentence_b")
    itp.add_argument("--steps", type=_positive_int, default=5)

    rep = sub.add_parser(
        "report",
        help="one self-contained page: a run or compare folder; several runs paired; several grids as a benchmark",
    )
    rep.add_argument(
        "dirs", nargs="+", type=Path, metavar="DIR",
        help="a run folder or a compare --out folder; several run folders (paired); compare folders or a folder "
        "of them (the benchmark page)",
    )  # fmt: skip
    rep.add_argument(
        "--out", type=Path,
        help="the page (a name ending .html; with several folders a Markdown twin goes beside it) or a folder "
        "for report.html or benchmark.html (default: DIR, or the current folder for several)",
    )  # fmt: skip
    rep.add_argument("--reference", help="several run folders: the method the others are paired against")
    rep.add_argument(
        "--docs", type=Path, metavar="FILE.md",
        help="the benchmark: also refill FILE.md's generated blocks (<!-- lagvae report: NAME --> ... "
        "<!-- end lagvae report -->, NAME a dataset or 'overview') with its tables",
    )  # fmt: skip

    demo = sub.add_parser("demo", help="vae vs aggressive on the synthetic preset, side by side")
    demo.add_argument("--epochs", type=_positive_int, default=5)
    demo.add_argument("--seed", type=int, default=783435)
    demo.add_argument("--iw-samples", type=_positive_int, default=100, help="K at test (the reference used 100)")
    demo.add_argument("--train-limit", type=_positive_int, default=6000, help="training sentences (16000 = all)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument(
        "--jobs", type=_positive_int, help="runs in parallel (default: one per method, up to the cores; 1: in turn)"
    )
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _train(args: argparse.Namespace) -> None:
    from lagvae.training.run import train_and_evaluate

    # Every flag becomes an override, so a flag and `--set` (and compare, and the Python API) agree.
    flags = [f"train.beta={args.beta}"] if args.beta is not None else []
    flags += [f"train.free_bits={args.target}"] if args.target is not None else []
    flags += [f"threads={args.threads}"] if args.threads else []
    flags += ["progress=false"] if args.no_progress or args.quiet else []
    config = make_config(
        args.preset,
        args.method,
        size=args.size,
        epochs=args.epochs,
        seed=args.seed,
        train_limit=args.train_limit,
        overrides=[*flags, *args.overrides],
    )
    out = args.out or Path("runs") / f"{args.preset}-{args.method}"
    if args.retest and args.resume == "no":
        raise ConfigError("--retest tests a finished run again: it needs --resume (or --resume auto)")
    results = train_and_evaluate(config, out, resume=args.resume, overwrite=args.overwrite, retest=args.retest)
    if args.json:
        print(json.dumps(results, indent=2))
    elif not args.quiet:
        print(result_line(results, out))


def result_line(results: dict, folder: Path) -> str:
    """What `train` prints at the end: the test numbers that say whether z is used, the time, the folder."""
    from lagvae.training.evaluation import rough_duration

    parts = []
    if "nll" in results:
        parts.append(f"test NLL {results['nll']:.2f} (IW, K = {results.get('iw_samples', '?')})")
    parts += [f"{name} {results[key]:.2f}" for key, name in (("kl", "KL"), ("mi_full", "I_q")) if key in results]
    parts.append(f"AU {results.get('au', '-')}")
    trained = f"{results.get('epochs', '?')} epochs (best {results.get('best_epoch', '?')})"
    trained += f" in {rough_duration(results.get('train_seconds', 0.0))}"
    return f"result: {', '.join(parts)}; {trained}; run folder: {folder}"


def _eval(args: argparse.Namespace) -> None:
    from lagvae.training.finished import evaluate_run

    print(json.dumps(evaluate_run(args.run, args.iw_samples, progress=not args.no_progress), indent=2))


def _compare(args: argparse.Namespace) -> None:
    from lagvae.experiments.compare import Grid, choose_reference, plan_commands, run_grid

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods:
        raise LagvaeError(f"--methods {args.methods!r} names no method; e.g. --methods vae,aggressive")
    reference = choose_reference(methods, args.reference)
    grid = Grid(
        args.preset,
        methods,
        tuple(range(args.seeds)),
        args.out,
        args.epochs,
        args.train_limit,
        args.size,
        tuple(args.overrides),
        reference,
    )
    if args.plan is not None:
        from lagvae.atomic import atomic_write

        lines = plan_commands(grid)
        atomic_write(args.plan, lambda f: f.write("".join(line + "\n" for line in lines).encode()))
        print(f"wrote {len(lines)} commands (one per unfinished cell) to {args.plan}")
        return
    results = run_grid(grid, jobs=args.jobs, report_only=args.report_only)
    print((args.out / "compare.md").read_text())
    failed = sum(not r["ok"] for r in results.values())
    print(f"{len(results) - failed} runs finished, {failed} failed; table in {args.out / 'compare.md'}")


def _generate(args: argparse.Namespace) -> None:
    import torch

    from lagvae.training.build import build_posterior
    from lagvae.training.finished import load_trained, saved_image_shape, saved_longest_document

    _check_out_folder(args.out)  # before minutes of sampling, not after
    torch.manual_seed(args.seed)
    config, model, vocab = load_trained(args.run)
    posterior = build_posterior(config)  # SA-VAE runs encode with their refined posterior, as their metrics did
    if vocab is None:
        _generate_images(args, config, model, saved_image_shape(args.run), posterior)
        return
    from lagvae.generate import Decoding, interpolate_sentences, reconstruct_sentences, sample_sentences

    max_len = args.max_len or saved_longest_document(args.run) or 50
    how = Decoding(args.decode, args.beam, args.temperature, max_len)
    if args.command == "sample":
        out = sample_sentences(model, vocab, args.n, config.model.latent_dim, how)
    elif args.command == "reconstruct":
        from lagvae.data.corpus import read_lines

        if args.input is None:
            raise LagvaeError("reconstruct on a text run needs --input FILE (one sentence a line)")
        lines = [line for line in read_lines(args.input) if line.strip()]
        if not lines:
            raise LagvaeError(f"{args.input} has no non-empty lines")
        decoded = reconstruct_sentences(model, vocab, lines, args.sample_z, how, posterior)
        out = [f"{line}\t->\t{text}" for line, text in zip(lines, decoded, strict=True)]
    else:
        out = interpolate_sentences(model, vocab, args.sentence_a, args.sentence_b, args.steps, how, posterior)
    if args.out is not None:
        from lagvae.atomic import atomic_write

        atomic_write(args.out, lambda f: f.write("".join(line + "\n" for line in out).encode()))
        print(f"wrote {len(out)} lines to {args.out}")
    else:
        print("\n".join(out))


def _check_out_folder(out: Path | None) -> None:
    if out is not None and not out.parent.is_dir():
        raise LagvaeError(f"cannot write {out}: the folder {out.parent} does not exist")


def _generate_images(
    args: argparse.Namespace, config: RunConfig, model: VAE, shape: tuple[int, int] | None, posterior: Posterior
) -> None:
    """sample / reconstruct for an image run: a PNG grid (PixelCNN sampling takes H*W decoder passes)."""
    from lagvae.generate import reconstruction_panel, sample_image_panel
    from lagvae.plots import reconstruction_figure, sample_figure, save_figure

    if args.out is None:
        raise LagvaeError(f"{args.command} on an image run writes a PNG grid: give --out FILE.png")
    if shape is None:
        raise LagvaeError(f"{args.run} has neither vocab.json nor an image shape in data_stats.json")
    if args.command == "interpolate":
        raise LagvaeError("interpolate works on text runs; for images use sample or reconstruct")
    progress = not args.no_progress
    if args.command == "sample":
        images, cols = sample_image_panel(
            model, config.model.latent_dim, shape, n=args.n, seed=args.seed, progress=progress
        )
        title = f"{args.run.name}: {len(images)} samples of p(x|z), z ~ N(0, I), seed {args.seed}"
        figure = sample_figure(images, cols, title)
    else:
        originals, reconstructions = reconstruction_panel(
            model, config, shape, n=args.n, input_path=args.input, sample_z=args.sample_z, seed=args.seed,
            progress=progress, posterior=posterior,
        )  # fmt: skip
        z = "a sample of q(z|x)" if args.sample_z else "the mean of q(z|x)"
        source = args.input.name if args.input is not None else "test images"
        title = f"{args.run.name}: {source}, each decoded from {z} (seed {args.seed})"
        figure = reconstruction_figure(originals, reconstructions, min(len(originals), 10), title)
    save_figure(figure, args.out)
    print(f"wrote {args.out}")


def _report(args: argparse.Namespace) -> None:
    from lagvae.experiments.html_report import write_pages

    print("wrote " + ", ".join(str(p) for p in write_pages(args.dirs, args.out, args.reference, args.docs)))


def _demo(args: argparse.Namespace) -> None:
    from lagvae.experiments.demo import demo_checks, demo_grid, run_demo
    from lagvae.experiments.report import results_table
    from lagvae.training.run_folder import POSTERIOR_PNG

    grid = demo_grid(args.out, args.epochs, args.seed, args.iw_samples, args.train_limit, args.overrides)
    results = run_demo(grid, args.jobs)
    print(
        f"\nsynthetic preset, {args.train_limit} training sentences, {args.epochs} epochs, seed {args.seed}, "
        f"test IW-NLL with K={args.iw_samples}\n"
    )
    print(results_table(results))
    print()
    for claim, shown in demo_checks(results):
        print(f"[{'shown' if shown else 'NOT shown'}] {claim}")
    for method in results:
        print(f"posterior-mean figure ({method}): {grid.folder(method, args.seed) / POSTERIOR_PNG}")
    print(f"comparison: {args.out / 'compare.md'}; one page of it all: lagvae report {args.out}")


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "compare": _compare,
    "sample": _generate,
    "reconstruct": _generate,
    "interpolate": _generate,
    "demo": _demo,
    "report": _report,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun only rank 0 tells the story; every rank still prints its own errors.
    rank = os.environ.get("RANK", "0")
    setup_logging(logging.WARNING if getattr(args, "quiet", False) or rank != "0" else logging.INFO)
    try:
        COMMANDS[args.command](args)
    except LagvaeError as err:
        where = ""  # a failing rank's reason already went to the others (RunContext.held)
        if "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1":
            where = f" (rank {rank} of {os.environ['WORLD_SIZE']})"
        print(f"lagvae: error{where}: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk or a read-only folder where no lagvae code said more: still one line
        where = f" {err.filename}" if err.filename else ""
        print(f"lagvae: error: cannot read or write{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lagvae: interrupted; the last saved checkpoint is intact", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:
            from lagvae.distributed import leave

            leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
