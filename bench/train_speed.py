"""Decoder training speed: FLOP/s against this CPU's matmul FLOP/s, and captions/s against a reference.

    python bench/train_speed.py                    # D=1280/H=512 and D=256/H=256, V=3000 (+ V=54), B=64
    python bench/train_speed.py --quick            # tiny sizes, a few seconds (plumbing check)
    python bench/train_speed.py --profile          # also print torch.profiler's top ops for our decoder

One train step = forward (teacher forcing 1.0) + caption_loss + backward + AdamW step, on random
annotations (B, 49, D) and random captions of 12-16 tokens (incl. <start>/<end>, padded to 16).
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward (matmuls,
i.e. what the hardware's peak refers to); "util" = those FLOPs / step time / sgemm FLOP/s measured in
the same process. Implementations (same weights, same loss, checked in tests/test_bench.py):

    captioner        captioner.model.decoder.Decoder (nn.LSTM called once per step)
    lstm_cell        experiment: the same Decoder with its step's nn.LSTM call replaced by torch.lstm_cell
    hoisted          experiment: lstm_cell + every non-recurrent matmul done once for all steps
    tutorial         bench/reference_decoder.py, the a-PyTorch-Tutorial design (shrinking batch, LSTMCell)
    tutorial_proj1   the same with W_a a projected once instead of every step

Timings are the best of ``--repeats`` rounds, variants interleaved per round so that load from other
users of the machine hits all of them alike. Prints a table, writes bench/results/train_speed.json.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import Run, add_quick_and_out, best_time, print_table
from reference_decoder import ReferenceDecoder
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from captioner.model.decoder import Decoder, DecoderOutput
from captioner.model.loss import caption_loss
from captioner.model.state import DecoderState

CONFIGS = {
    "D1280/H512": dict(encoder_dim=1280, embed_dim=512, hidden_dim=512, attention_dim=512),
    "D256/H256": dict(encoder_dim=256, embed_dim=256, hidden_dim=256, attention_dim=256),
}
QUICK = {"D64/H32": dict(encoder_dim=64, embed_dim=32, hidden_dim=32, attention_dim=32)}
VARIANTS = ("captioner", "lstm_cell", "hoisted", "tutorial", "tutorial_proj1")


class LSTMCellDecoder(Decoder):
    """Experiment: our Decoder, its per-step ``nn.LSTM`` call swapped for ``torch.lstm_cell`` (same weights).

    On CPU, nn.LSTM on a length-1 sequence goes through oneDNN's RNN layer, whose backward is the
    single most expensive op of the step (see --profile); lstm_cell is two GEMMs plus a fused cell.
    """

    def step_locations(
        self,
        words: Tensor,
        state: DecoderState,
        annotations: Tensor,
        projected: Tensor,
        how: str | None = None,
    ) -> tuple[Tensor, Tensor, DecoderState, None]:
        """As Decoder.step_locations (1 layer, soft attention), with the LSTM computed by torch.lstm_cell."""
        h, c = state.h, state.c
        emb = self.embed(words)
        context, alpha = self.attention(annotations, projected, h[-1])
        if self.f_beta is not None:
            context = torch.sigmoid(self.f_beta(h[-1])) * context
        lstm = self.lstm
        h_t, c_t = torch.lstm_cell(
            torch.cat([emb, context], dim=-1),
            (h[0], c[0]),
            lstm.weight_ih_l0,
            lstm.weight_hh_l0,
            lstm.bias_ih_l0,
            lstm.bias_hh_l0,
        )
        if self.deep_output:
            logits = self.L_o(self.dropout(emb + self.L_h(h_t) + self.L_z(context)))
        else:
            logits = self.L_o(self.dropout(h_t))
        return logits, alpha, DecoderState(h_t.unsqueeze(0), c_t.unsqueeze(0)), None


class HoistedDecoder(Decoder):
    """Experiment: only the recurrence stays in the time loop; embeddings, their share of the LSTM
    gates and the deep output (L_h, L_z, L_o) run once over all (B, T-1) positions as big GEMMs.

    Teacher forcing 1.0, one layer, deep output only (enough to measure the gain).
    """

    def forward(self, annotations: Tensor, captions: Tensor, teacher_forcing: float = 1.0) -> DecoderOutput:
        """Same outputs as Decoder.forward with teacher_forcing=1.0."""
        assert teacher_forcing == 1.0 and self.num_layers == 1 and self.deep_output
        projected = self.project(annotations)
        state = self.init_state(annotations)
        h, c = state.h[0], state.c[0]
        emb = self.embed(captions[:, :-1])  # (B, T-1, E): every input word is known up front
        lstm, e = self.lstm, self.embed_dim
        w_emb, w_ctx = lstm.weight_ih_l0[:, :e], lstm.weight_ih_l0[:, e:]
        gates_emb = F.linear(emb, w_emb, lstm.bias_ih_l0 + lstm.bias_hh_l0)  # (B, T-1, 4H), one GEMM
        hs, contexts, alphas = [], [], []
        for t in range(emb.shape[1]):
            context, alpha = self.attention(annotations, projected, h)
            if self.f_beta is not None:
                context = torch.sigmoid(self.f_beta(h)) * context
            gates = gates_emb[:, t] + F.linear(context, w_ctx) + F.linear(h, lstm.weight_hh_l0)
            i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
            contexts.append(context)
            alphas.append(alpha)
        h_all, z_all = torch.stack(hs, dim=1), torch.stack(contexts, dim=1)
        logits = self.L_o(self.dropout(emb + self.L_h(h_all) + self.L_z(z_all)))  # Eq. 7, all steps at once
        return DecoderOutput(logits=logits, alphas=torch.stack(alphas, dim=1))


def make_batch(
    batch: int, locations: int, encoder_dim: int, vocab: int, min_len: int, max_len: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Random annotations (B,L,D), captions (B,max_len) <start> w... <end> <pad>..., lengths (B,)."""
    g = torch.Generator().manual_seed(seed)
    annotations = torch.rand(batch, locations, encoder_dim, generator=g)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=g)
    captions = torch.zeros(batch, max_len, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        captions[i, 1 : n - 1] = torch.randint(4, vocab, (n - 2,), generator=g)
        captions[i, 0], captions[i, n - 1] = 1, 2  # <start>, <end>
    return annotations, captions, lengths


def build_variant(name: str, decoder: Decoder) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """A function (annotations, captions, lengths) -> loss for ``name``, sharing ``decoder``'s weights."""
    if name in ("captioner", "lstm_cell", "hoisted"):
        cls = {"captioner": Decoder, "lstm_cell": LSTMCellDecoder, "hoisted": HoistedDecoder}[name]
        model = decoder if cls is Decoder else _clone_as(cls, decoder)

        def loss_fn(annotations: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
            return caption_loss(model(annotations, captions), captions, smoothing=0.1)[0]

        loss_fn.model = model
        return loss_fn
    ref = ReferenceDecoder.from_decoder(decoder, project_once=name == "tutorial_proj1")

    def ref_loss(annotations: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
        out, order = ref(annotations, captions, lengths)
        # Trimmed to the longest caption: the reference runs only that many steps.
        return caption_loss(out, captions[order, : out.logits.shape[1] + 1], smoothing=0.1)[0]

    ref_loss.model = ref
    return ref_loss


def _clone_as(cls: type[Decoder], decoder: Decoder) -> Decoder:
    clone = cls(
        vocab_size=decoder.vocab_size,
        encoder_dim=decoder.encoder_dim,
        embed_dim=decoder.embed_dim,
        hidden_dim=decoder.hidden_dim,
        attention_dim=decoder.attention.hidden_proj.out_features,
        dropout=decoder.dropout.p,
        beta_gate=decoder.beta_gate,
    )
    clone.load_state_dict(decoder.state_dict())
    return clone


def matmul_flops(m: int, k: int, n: int, repeats: int = 10) -> float:
    """fp32 (m,k)@(k,n) FLOP/s, best of ``repeats``."""
    a, b = torch.rand(m, k), torch.rand(k, n)
    seconds = best_time(lambda: a @ b, repeats=repeats, warmup=2)
    return 2 * m * k * n / seconds


def bench_config(
    label: str,
    size: dict,
    vocab: int,
    variants: list[str],
    args: argparse.Namespace,
    sgemm: list[float],
) -> list[dict]:
    """Time one train step of every variant on one model size; interleaved rounds, best time kept.

    Appends one sgemm FLOP/s measurement per round to ``sgemm``.
    """
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=vocab, dropout=0.5, beta_gate="scalar", **size)
    annotations, captions, lengths = make_batch(
        args.batch_size, 49, size["encoder_dim"], vocab, args.min_len, args.max_len
    )
    steps, flops = {}, {}
    for name in variants:
        loss_fn = build_variant(name, decoder)
        model = loss_fn.model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(loss_fn=loss_fn, optimizer=optimizer) -> None:
            loss_fn(annotations, captions, lengths).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        # FlopCounterMode has no formula for oneDNN's LSTM layer (it would count 0 for nn.LSTM), so
        # our Decoder is counted on its lstm_cell twin: same weights, same arithmetic.
        counted = build_variant("lstm_cell", decoder) if name == "captioner" else loss_fn
        with FlopCounterMode(display=False) as counter:
            counted(annotations, captions, lengths).backward()
        flops[name] = counter.get_total_flops()
        step()  # warm-up: allocator, oneDNN primitive caches
        steps[name] = step
    best = {name: float("inf") for name in variants}
    for _ in range(args.repeats):
        sgemm.append(
            matmul_flops(*[args.sgemm_n] * 3, repeats=5)
        )  # each round: the machine's rate under the same load
        for name in variants:
            best[name] = min(best[name], best_time(steps[name], repeats=1, warmup=0))
    print(f"{label} V={vocab}: " + ", ".join(f"{n} {t:.3f} s" for n, t in best.items()), flush=True)
    rows = []
    for name in variants:
        rows.append(
            {
                "model": f"{label} V={vocab}",
                "impl": name,
                "step_s": round(best[name], 4),
                "captions_per_s": round(args.batch_size / best[name], 1),
                "gflop_per_step": round(flops[name] / 1e9, 2),
                "gflop_per_s": round(flops[name] / best[name] / 1e9, 2),
                "vs_captioner": round(best["captioner"] / best[name], 2) if "captioner" in best else None,
            }
        )
    return rows


def profile_captioner(
    label: str, size: dict, vocab: int, args: argparse.Namespace, rows: int = 15
) -> list[dict]:
    """torch.profiler's top ops (self CPU time) for one train step of our Decoder."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    decoder = Decoder(vocab_size=vocab, dropout=0.5, **size).train()
    annotations, captions, _ = make_batch(
        args.batch_size, 49, size["encoder_dim"], vocab, args.min_len, args.max_len
    )

    def step() -> None:
        caption_loss(decoder(annotations, captions), captions)[0].backward()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in averages)
    top = [
        {
            "op": e.key,
            "calls": e.count,
            "self_ms": round(e.self_cpu_time_total / 1e3, 1),
            "share": round(e.self_cpu_time_total / total, 3),
        }
        for e in averages[:rows]
    ]
    print_table(
        top,
        [("op", "op"), ("calls", "calls"), ("self_ms", "self ms"), ("share", "share")],
        title=f"\ntorch.profiler, one captioner train step (fwd+bwd), {label} V={vocab}:",
    )
    return top


def main() -> None:
    """Run the benchmark, print the tables, write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument(
        "--small-vocab",
        type=int,
        default=54,
        help="also run captioner, lstm_cell, tutorial_proj1 at this V (0: skip)",
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--min-len", type=int, default=12, help="shortest caption, incl. <start>/<end>")
    parser.add_argument("--max-len", type=int, default=16, help="longest caption, incl. <start>/<end>")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's top ops for our decoder"
    )
    add_quick_and_out(parser, "train_speed", "tiny sizes: checks the plumbing in seconds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run("train_speed")

    configs = QUICK if args.quick else {k: CONFIGS[k] for k in args.configs}
    if args.quick:
        args.batch_size, args.vocab, args.small_vocab, args.repeats = 8, 50, 0, 1
    sgemm_n = args.sgemm_n = 256 if args.quick else 1024
    sgemm_runs = []

    rows = []
    for label, size in configs.items():
        rows += bench_config(label, size, args.vocab, args.variants, args, sgemm_runs)
        if args.small_vocab:
            small = [v for v in args.variants if v in ("captioner", "lstm_cell", "tutorial_proj1")]
            rows += bench_config(label, size, args.small_vocab, small, args, sgemm_runs)
    sgemm = max(sgemm_runs)  # the least disturbed measurement, like the step times
    shapes = {}
    if not args.quick:
        size, b, t = CONFIGS["D1280/H512"], args.batch_size, args.max_len - 1
        d, hdim = size["encoder_dim"], size["hidden_dim"]
        shapes = {  # the big GEMMs of the D=1280/H=512 step
            "W_a a (B*L, D) x (D, A)": matmul_flops(b * 49, d, size["attention_dim"]),
            "LSTM input (B, E+D) x (E+D, 4H)": matmul_flops(b, size["embed_dim"] + d, 4 * hdim),
            "L_o per step (B, E) x (E, V)": matmul_flops(b, size["embed_dim"], args.vocab),
            "L_o hoisted (B*T, E) x (E, V)": matmul_flops(b * t, size["embed_dim"], args.vocab),
        }
    for r in rows:
        r["util"] = round(r["gflop_per_s"] * 1e9 / sgemm, 3)

    print(f"sgemm {sgemm_n}^3: {sgemm / 1e9:.1f} GFLOP/s ({args.threads} threads)")
    for k, v in shapes.items():
        print(f"  {k}: {v / 1e9:.1f} GFLOP/s")
    print_table(
        rows,
        [
            ("model", "model"),
            ("impl", "impl"),
            ("step_s", "step s"),
            ("captions_per_s", "captions/s"),
            ("gflop_per_step", "GFLOP/step"),
            ("gflop_per_s", "GFLOP/s"),
            ("util", "util"),
            ("vs_captioner", "x captioner"),
        ],
        title=f"\ntrain step, batch {args.batch_size}, captions {args.min_len}-{args.max_len} tokens:",
    )
    label, size = next(iter(configs.items()))
    profile = profile_captioner(label, size, args.vocab, args) if args.profile else None
    if args.quick and args.out is None:
        return  # a plumbing check must not overwrite the measured record
    run.write(
        {
            "setup": {
                "batch_size": args.batch_size,
                "caption_tokens": [args.min_len, args.max_len],
                "locations": 49,
                "teacher_forcing": 1.0,
                "loss": "caption_loss(smoothing=0.1, att_gamma=1)",
                "optimizer": "AdamW",
                "threads": args.threads,
                "repeats": args.repeats,
            },
            "sgemm_gflop_per_s": {
                f"{sgemm_n}^3": round(sgemm / 1e9, 2),
                **{k: round(v / 1e9, 2) for k, v in shapes.items()},
            },
            "rows": rows,
            "profile_captioner": profile,
        },
        out=args.out,
    )


if __name__ == "__main__":
    main()
