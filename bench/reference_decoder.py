"""Reference decoder for the speed benchmark: the common tutorial design with a shrinking batch.

This is the ``DecoderWithAttention`` of sgrvinod's a-PyTorch-Tutorial-to-Image-Captioning, the design
most SAT re-implementations copy: sort the batch by caption length, and at step t run an
``nn.LSTMCell`` and the attention on only the rows whose caption is still going. Its layers have the
same shapes as :class:`captioner.model.decoder.Decoder` (one layer, deep output, beta gate), so
:meth:`ReferenceDecoder.from_decoder` copies our weights and both give the same loss on the same batch
(tested). Only the implementation differs, which is what ``bench/train_speed.py`` times.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.model.decoder import Decoder, DecoderOutput


class TutorialAttention(nn.Module):
    """Additive attention with the tutorial's layer names (encoder_att, decoder_att, full_att)."""

    def __init__(self, encoder_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(hidden_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(
        self, encoder_out: Tensor, decoder_hidden: Tensor, att1: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Context (B,D) and alpha (B,L); without ``att1`` it re-projects the annotations, as the tutorial does."""
        if att1 is None:
            att1 = self.encoder_att(encoder_out)
        att2 = self.decoder_att(decoder_hidden)
        att = self.full_att(torch.tanh(att1 + att2.unsqueeze(1))).squeeze(2)
        alpha = att.softmax(dim=1)
        return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha


class ReferenceDecoder(nn.Module):
    """Tutorial-style decoder: LSTMCell, per-step attention over the still-active rows only."""

    def __init__(
        self,
        vocab_size: int,
        encoder_dim: int,
        embed_dim: int,
        hidden_dim: int,
        attention_dim: int,
        dropout: float = 0.5,
        beta_gate: str = "scalar",
        project_once: bool = False,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        # The tutorial computes W_a a inside the attention, i.e. again at every step (B*L*D*A MACs
        # each); project_once hoists it out of the loop like our Decoder, leaving only the loop design.
        self.project_once = project_once
        self.attention = TutorialAttention(encoder_dim, hidden_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, hidden_dim)
        self.init_h = nn.Linear(encoder_dim, hidden_dim)
        self.init_c = nn.Linear(encoder_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, 1 if beta_gate == "scalar" else encoder_dim)
        # Deep output (paper Eq. 7), as in our Decoder, so both do the same arithmetic per word.
        self.L_h = nn.Linear(hidden_dim, embed_dim)
        self.L_z = nn.Linear(encoder_dim, embed_dim)
        self.L_o = nn.Linear(embed_dim, vocab_size)

    @classmethod
    def from_decoder(cls, decoder: Decoder, project_once: bool = False) -> ReferenceDecoder:
        """A reference with ``decoder``'s weights (one layer, deep output, beta gate scalar/channel)."""
        if decoder.num_layers != 1 or not decoder.deep_output or decoder.f_beta is None:
            raise ValueError("ReferenceDecoder mirrors a 1-layer Decoder with deep_output and a beta gate")
        ref = cls(
            decoder.vocab_size,
            decoder.encoder_dim,
            decoder.embed_dim,
            decoder.hidden_dim,
            decoder.attention.hidden_proj.out_features,
            decoder.dropout.p,
            decoder.beta_gate,
            project_once,
        )
        a, lstm = decoder.attention, decoder.lstm
        pairs = [
            (ref.attention.encoder_att, a.annotation_proj),
            (ref.attention.decoder_att, a.hidden_proj),
            (ref.attention.full_att, a.score),
            (ref.embedding, decoder.embedding),
            (ref.init_h, decoder.init_h),
            (ref.init_c, decoder.init_c),
            (ref.f_beta, decoder.f_beta),
            (ref.L_h, decoder.L_h),
            (ref.L_z, decoder.L_z),
            (ref.L_o, decoder.L_o),
        ]
        with torch.no_grad():
            for dst, src in pairs:
                dst.load_state_dict(src.state_dict())
            cell = ref.decode_step
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(lstm, f"{name}_l0"))
        return ref

    def forward(self, encoder_out: Tensor, captions: Tensor, lengths: Tensor) -> tuple[DecoderOutput, Tensor]:
        """Teacher-forced pass; returns padded outputs for the length-sorted batch and the sort order.

        ``lengths`` counts <start> and <end>; a caption of length n is decoded for n - 1 steps.
        """
        lengths, order = lengths.sort(descending=True)
        encoder_out, captions = encoder_out[order], captions[order]
        decode_lengths = (lengths - 1).tolist()
        b, steps = captions.shape[0], max(decode_lengths)
        embeddings = self.embedding(captions)
        mean = encoder_out.mean(dim=1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        predictions = encoder_out.new_zeros(b, steps, self.vocab_size)
        alphas = encoder_out.new_zeros(b, steps, encoder_out.shape[1])
        att1 = self.attention.encoder_att(encoder_out) if self.project_once else None
        for t in range(steps):
            n = sum(length > t for length in decode_lengths)  # rows still decoding (sorted first)
            emb = embeddings[:n, t]
            context, alpha = self.attention(encoder_out[:n], h[:n], None if att1 is None else att1[:n])
            context = torch.sigmoid(self.f_beta(h[:n])) * context
            h, c = self.decode_step(torch.cat([emb, context], dim=1), (h[:n], c[:n]))
            predictions[:n, t] = self.L_o(self.dropout(emb + self.L_h(h) + self.L_z(context)))
            alphas[:n, t] = alpha
        return DecoderOutput(logits=predictions, alphas=alphas), order

    @torch.no_grad()
    def beam_search_one(self, encoder_out: Tensor, k: int, max_len: int) -> tuple[list[int], float]:
        """The tutorial's per-image beam search (``caption_image_beam_search`` in its caption.py).

        One image (1,L,D) expanded to k rows; each step runs the attention (re-projecting the
        annotations unless ``project_once``), the gate, the LSTMCell and the deep output on the live
        beams, takes the top k of the flattened (beams x V) scores, and moves beams that emit <end>
        to a finished list, so k shrinks. Returns the best finished caption (word ids after <start>,
        <end> included) and its summed log-prob; if none finished by ``max_len``, the best live one.
        """
        from captioner.data.vocab import END_ID, START_ID

        vocab = self.vocab_size
        encoder_out = encoder_out.expand(k, -1, -1)
        att1 = self.attention.encoder_att(encoder_out) if self.project_once else None
        words = torch.full((k,), START_ID, dtype=torch.long, device=encoder_out.device)
        seqs = words[:, None]
        top_scores = encoder_out.new_zeros(k)
        mean = encoder_out.mean(dim=1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        done_seqs, done_scores = [], []
        for step in range(max_len):
            emb = self.embedding(words)
            context, _ = self.attention(encoder_out, h, att1)
            context = torch.sigmoid(self.f_beta(h)) * context
            h, c = self.decode_step(torch.cat([emb, context], dim=1), (h, c))
            scores = self.L_o(emb + self.L_h(h) + self.L_z(context)).log_softmax(dim=1)
            scores = top_scores[:, None] + scores
            if step == 0:  # all k rows are the same <start>: expand the first only
                top_scores, flat = scores[0].topk(k)
            else:
                top_scores, flat = scores.view(-1).topk(k)
            parent, words = flat // vocab, flat % vocab
            seqs = torch.cat([seqs[parent], words[:, None]], dim=1)
            ended = words == END_ID
            done_seqs += seqs[ended, 1:].tolist()
            done_scores += top_scores[ended].tolist()
            live = ~ended
            k = int(live.sum())
            if k == 0:
                break
            seqs, top_scores, words = seqs[live], top_scores[live], words[live]
            h, c = h[parent[live]], c[parent[live]]
            encoder_out = encoder_out[:k]
            att1 = None if att1 is None else att1[:k]
        if not done_seqs:  # nothing ended within max_len: the best live beam
            best = int(top_scores.argmax())
            return seqs[best, 1:].tolist(), float(top_scores[best])
        best = max(range(len(done_scores)), key=done_scores.__getitem__)
        return done_seqs[best], done_scores[best]
