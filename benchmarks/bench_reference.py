"""lagvae against a plain-PyTorch reference of the authors' text training step, side by side in one run.

Run: .venv/bin/python benchmarks/bench_reference.py [--presets synthetic ptb-cpu ptb-small] [--threads 1 2]

The reference below is written out here, not imported from lagvae. It mirrors the published code of He et
al. (2019, github.com/jxhe/vae-lagging-encoder, `modules/` and `text.py`): the same LSTM encoder/decoder
sizes, U(-0.01, 0.01) weights and U(-0.1, 0.1) embeddings, decoder dropout on inputs and outputs, the
loss in one function (cross-entropy over the vocabulary plus the analytic KL), a clip over all parameters,
SGD, and IW evaluation one sentence at a time in chunks of 100 samples. Both sides see the same
constant-length batches and the same test sentences. Every ratio is lagvae / reference at the same
thread count, so a busy machine moves both sides.
For ptb-small the script also prints the joint step's matmul floor: its counted matmul FLOPs divided by the
best 4096 x 4096 `torch.mm` rate measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lagvae.data.text import PAD_ID
from lagvae.experiments.presets import make_config
from lagvae.metrics import iw_log_likelihood
from lagvae.training.loop import Trainer

PRESETS = {"synthetic": ("synthetic", None), "ptb-cpu": ("ptb", "cpu"), "ptb-small": ("ptb", "small")}


# ---- the reference ---------------------------------------------------------------------------------------
class RefEncoder(nn.Module):
    def __init__(self, vocab: int, ni: int, nh: int, nz: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, ni)
        self.lstm = nn.LSTM(ni, nh, batch_first=True)
        self.linear = nn.Linear(nh, 2 * nz, bias=False)
        for p in self.parameters():
            nn.init.uniform_(p, -0.01, 0.01)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, (h, _) = self.lstm(self.embed(x))
        mu, logvar = self.linear(h).chunk(2, -1)
        return mu.squeeze(0), logvar.squeeze(0)


class RefDecoder(nn.Module):
    def __init__(self, vocab: int, ni: int, nh: int, nz: int, dropout: float) -> None:
        super().__init__()
        self.nz = nz
        self.embed = nn.Embedding(vocab, ni)
        self.dropout_in = nn.Dropout(dropout)
        self.dropout_out = nn.Dropout(dropout)
        self.trans_linear = nn.Linear(nz, nh, bias=False)
        self.lstm = nn.LSTM(ni + nz, nh, batch_first=True)
        self.pred_linear = nn.Linear(nh, vocab, bias=False)
        for p in self.parameters():
            nn.init.uniform_(p, -0.01, 0.01)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def reconstruct_error(self, x: Tensor, z: Tensor) -> Tensor:
        """-log p(x|z) for x [B, T] and z [B, S, nz] -> [B, S], expanding x to every sample as the authors do."""
        src, tgt = x[:, :-1], x[:, 1:]
        b, t = src.shape
        s = z.shape[1]
        emb = self.dropout_in(self.embed(src))
        emb = emb.unsqueeze(1).expand(b, s, t, -1).reshape(b * s, t, -1)
        z_in = z.unsqueeze(2).expand(b, s, t, self.nz).reshape(b * s, t, self.nz)
        c0 = self.trans_linear(z.reshape(b * s, self.nz)).unsqueeze(0)
        out, _ = self.lstm(torch.cat([emb, z_in], -1), (torch.tanh(c0), c0))
        logits = self.pred_linear(self.dropout_out(out))
        tgt = tgt.unsqueeze(1).expand(b, s, t).reshape(-1)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt, reduction="none")
        return loss.view(b, s, t).sum(-1)


def ref_sample(mu: Tensor, logvar: Tensor, n: int) -> Tensor:
    eps = torch.randn(mu.shape[0], n, mu.shape[1])
    return mu.unsqueeze(1) + (0.5 * logvar).exp().unsqueeze(1) * eps


def ref_loss(enc: RefEncoder, dec: RefDecoder, x: Tensor, kl_weight: float) -> Tensor:
    """The authors' VAE.loss: per-example reconstruction error + kl_weight * KL."""
    mu, logvar = enc(x)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1)
    return dec.reconstruct_error(x, ref_sample(mu, logvar, 1)).mean(1) + kl_weight * kl


def ref_step(enc: RefEncoder, dec: RefDecoder, opts: list[torch.optim.Optimizer], x: Tensor, stepped: int) -> float:
    """One update as in text.py: zero both, backward, clip all parameters at 5, step `opts[:stepped]`."""
    for opt in opts:
        opt.zero_grad()
    loss = ref_loss(enc, dec, x, 1.0)
    total = loss.sum().item()  # the authors read the loss every step
    loss.mean().backward()
    nn.utils.clip_grad_norm_([*enc.parameters(), *dec.parameters()], 5.0)
    for opt in opts[:stepped]:
        opt.step()
    return total


@torch.no_grad()
def ref_iw_nll(enc: RefEncoder, dec: RefDecoder, x: Tensor, k: int, ns: int = 100) -> Tensor:
    """The authors' nll_iw on one sentence [1, T]: k samples in chunks of ns, the encoder rerun per chunk."""
    log_w = []
    for _ in range(k // ns):
        mu, logvar = enc(x)
        z = ref_sample(mu, logvar, ns)
        log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        var = logvar.exp().unsqueeze(1)
        log_q = (-0.5 * (z - mu.unsqueeze(1)).pow(2) / var - 0.5 * (math.log(2 * math.pi) + logvar.unsqueeze(1))).sum(
            -1
        )
        log_w.append(-dec.reconstruct_error(x, z) + log_pz - log_q)
    return -(torch.logsumexp(torch.cat(log_w, -1), -1) - math.log(k))


# ---- timing ----------------------------------------------------------------------------------------------
def per_call_ms(fn: Callable[[Tensor], object], batches: list[Tensor], seconds: float) -> float:
    """Mean ms per call over `batches` cycled for about `seconds` (after one warm-up call; at least 3 calls)."""
    fn(batches[0])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn(batches[n % len(batches)])
        n += 1
    return (time.perf_counter() - start) / n * 1000


@dataclass
class Row:
    preset: str
    threads: int
    what: str
    ref_ms: float
    lagvae_ms: float

    def line(self) -> str:
        ratio = self.ref_ms / self.lagvae_ms
        cells = (self.preset, self.threads, self.what, f"{self.ref_ms:.1f}", f"{self.lagvae_ms:.1f}", f"{ratio:.2f}x")
        return "| " + " | ".join(map(str, cells)) + " |"


def bench_preset(name: str, threads: int, seconds: float, iw_pool: int, tmp: str) -> list[Row]:
    preset, size = PRESETS[name]
    overrides = ["eval.posterior_points=0", "data.train_limit=4000", "data.eval_limit=400"]
    config = make_config(preset, "aggressive", size=size, overrides=overrides)
    config.progress, config.threads = False, threads
    torch.manual_seed(0)
    agg = Trainer(config, f"{tmp}/{name}-aggressive")
    joint_config = make_config(preset, "vae", size=size, overrides=overrides)
    joint_config.progress, joint_config.threads = False, threads
    joint = Trainer(joint_config, f"{tmp}/{name}-vae")
    torch.set_num_threads(threads)

    # The authors batch sentences of one length: keep lagvae's batches that hold no padding.
    batches = [b for b in (agg.train_batches.sample()[0] for _ in range(200)) if bool((b != PAD_ID).all())][:40]
    m = config.model
    vocab = len(agg.splits.vocab)
    enc = RefEncoder(vocab, m.embed_dim, m.enc_hidden, m.latent_dim)
    dec = RefDecoder(vocab, m.embed_dim, m.dec_hidden, m.latent_dim, m.dec_dropout_in)
    lr = config.train.lr
    opts: list[torch.optim.Optimizer] = [torch.optim.SGD(enc.parameters(), lr), torch.optim.SGD(dec.parameters(), lr)]

    rows = [
        Row(
            name,
            threads,
            "joint step",
            per_call_ms(lambda x: ref_step(enc, dec, opts, x, 2), batches, seconds),
            per_call_ms(lambda x: joint.strategy.step(x, 1.0), batches, seconds),
        ),
        Row(
            name,
            threads,
            "encoder-only step",
            per_call_ms(lambda x: ref_step(enc, dec, opts, x, 1), batches, seconds),
            per_call_ms(lambda x: agg.strategy.encoder_step(x, 1.0), batches, seconds),  # type: ignore[attr-defined]
        ),
    ]
    # IW on one test batch of typical length: the real test sorts sentences by length into batches, so the
    # batch is the one in the middle of the first `iw_pool` test sentences; the reference takes its
    # sentences one at a time, unpadded.
    eval_batch = config.eval.batch_size or config.train.batch_size
    pool = list(agg.splits.test.head(iw_pool).batches(eval_batch, shuffle=False))
    batch = pool[len(pool) // 2]
    singles = [s[: int((s != PAD_ID).sum())].unsqueeze(0) for s in batch]
    enc.eval(), dec.eval(), agg.model.eval()
    ref_ms = per_call_ms(lambda x: ref_iw_nll(enc, dec, x, 500), singles, seconds)
    budget = config.eval.max_memory_mb

    def lagvae_iw(x: Tensor) -> None:
        with torch.no_grad():
            iw_log_likelihood(agg.model, x, 500, budget)

    per_example = per_call_ms(lagvae_iw, [batch], seconds) / batch.shape[0]
    rows.append(Row(name, threads, "IW-NLL K=500, per sentence", ref_ms, per_example))
    if name == "ptb-small":
        rows.append(matmul_floor_row(name, threads, joint, batches, rows[0].lagvae_ms))
    return rows


def step_matmul_flops(config_model, vocab: int, tokens: int, enc_tokens: int) -> float:
    """Matmul FLOPs of one joint step: forward + input gradients + weight gradients = 3x the forward's."""
    m = config_model
    enc = 4 * m.enc_hidden * (m.embed_dim + m.enc_hidden) * enc_tokens
    dec = 4 * m.dec_hidden * (m.embed_dim + m.latent_dim + m.dec_hidden) * tokens
    out = m.dec_hidden * vocab * tokens
    return 3 * 2 * (enc + dec + out)


def best_mm_flops_per_s() -> float:
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    out = torch.empty(4096, 4096)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * 4096**3 / best


def matmul_floor_row(name: str, threads: int, joint: Trainer, batches: list[Tensor], step_ms: float) -> Row:
    tokens = sum(int(x[:, 1:].numel()) for x in batches) / len(batches)
    enc_tokens = sum(int(x.numel()) for x in batches) / len(batches)
    flops = step_matmul_flops(joint.config.model, len(joint.splits.vocab), int(tokens), int(enc_tokens))
    rate = best_mm_flops_per_s()
    print(f"  {name} {threads} thread(s): {flops / 1e9:.2f} GFLOP of matmul per step, best mm {rate / 1e9:.0f} GFLOP/s")
    return Row(name, threads, "joint step vs matmul floor (floor in ref column)", flops / rate * 1000, step_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    parser.add_argument("--iw-pool", type=int, default=320, help="test sentences bucketed for the IW batch")
    parser.add_argument("--tmp", default="/tmp/lagvae-bench-reference")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.seconds:.0f} s per measurement; speed-up = reference ms / lagvae ms")
    rows = []
    for threads in args.threads:
        for name in args.presets:
            rows += bench_preset(name, threads, args.seconds, args.iw_pool, args.tmp)
    print("| preset | threads | what | reference ms | lagvae ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())


if __name__ == "__main__":
    main()
