"""Caption metrics that reproduce coco-caption (pycocoevalcap): BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE.

Inputs are tokenised words: ``hypotheses[i]`` is one caption, ``references[i]`` its human captions
(any number >= 1). Every score is on a 0-100 scale, corpus-level and per caption. Papers print
coco's BLEU/METEOR/ROUGE-L x100 and its CIDEr (already x10 inside coco) x100 too, e.g. coco's
CIDEr 0.65 is our ``cider_d`` 65.0. The Java metrics (METEOR, SPICE) return None, with a one-line
reason, where Java or their jars are missing.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sacrebleu.metrics import BLEU

from captioner.data.vocab import END, PAD, START
from captioner.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Tokens = Sequence[str]
METRICS = ("bleu", "meteor", "rouge_l", "cider_d", "spice")
DEFAULT_METRICS = ("bleu", "meteor", "rouge_l", "cider_d")
METEOR_JAR_ENV = "CAPTIONER_METEOR_JAR"
_DROP = frozenset((START, END, PAD))
_warned: set[str] = set()


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores, per-caption scores (same keys, one value per caption) and skipped metrics."""

    corpus: dict[str, float]
    per_caption: dict[str, list[float]]
    skipped: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, float]]:
        """Per-caption scores as one dict per caption."""
        n = len(next(iter(self.per_caption.values()), []))
        return [{k: v[i] for k, v in self.per_caption.items()} for i in range(n)]


def _clean(tokens: Tokens) -> list[str]:
    # Callers should strip special tokens already; a stray <end> would otherwise count as a word.
    return [t for t in tokens if t not in _DROP]


def _prepare(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Validate shapes, strip special tokens and drop empty references."""
    if isinstance(hypotheses, str) or (hypotheses and isinstance(hypotheses[0], str)):
        raise DataError(
            "metrics hypotheses must be token lists (list[list[str]]); tokenize the captions first"
        )
    if len(hypotheses) != len(references):
        raise DataError(
            f"metrics got {len(hypotheses)} hypotheses but {len(references)} reference sets; pass one set per caption"
        )
    if not hypotheses:
        raise DataError("metrics got no captions to score; pass at least one hypothesis")
    hyps = [_clean(h) for h in hypotheses]
    refs = []
    for i, ref_set in enumerate(references):
        # An empty reference carries no words; coco would still count its length 0 in BLEU's brevity term.
        cleaned = [c for c in (_clean(r) for r in ref_set) if c]
        if not cleaned:
            raise DataError(
                f"metrics: caption {i} has no non-empty reference; every image needs >= 1 reference"
            )
        refs.append(cleaned)
    return hyps, refs


# ----------------------------------------------------------------------------------------------- BLEU


def _bleu_from_stats(
    correct: np.ndarray, guess: np.ndarray, testlen: np.ndarray, reflen: np.ndarray
) -> np.ndarray:
    """coco's BLEU-1..4 from counts: arrays (..., 4) and (...,) -> (..., 4), in [0, 1]."""
    # coco adds tiny/small instead of sacrebleu's "0 if any precision is 0": per-caption BLEU-4 of a
    # 3-word caption is ~3 points in coco, 0 in sacrebleu, so this part is written out to match coco.
    tiny, small = 1e-15, 1e-9
    log_p = np.log((correct + tiny) / (guess + small))
    orders = np.arange(1, correct.shape[-1] + 1)
    bleus = np.exp(np.cumsum(log_p, axis=-1) / orders)
    ratio = (testlen + tiny) / (reflen + small)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return bleus * brevity[..., None]


def bleu(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> CaptionScores:
    """BLEU-1..4 as coco-caption computes it (closest reference length), keys ``bleu1..bleu4``."""
    hyps, refs = _prepare(hypotheses, references)
    # sacrebleu does the n-gram matching (clipped counts, closest ref length with ties to the shorter,
    # like coco's option="closest"); its public sentence_score gives each caption's counts (effective_order
    # changes only its own score, which we do not read, and keeps it from warning on every sentence).
    scorer = BLEU(tokenize="none", smooth_method="none", force=True, effective_order=True)
    scored = [scorer.sentence_score(" ".join(h), [" ".join(r) for r in rs]) for h, rs in zip(hyps, refs)]
    stats = np.asarray([[s.sys_len, s.ref_len, *s.counts, *s.totals] for s in scored], dtype=float)
    testlen, reflen, correct, guess = stats[:, 0], stats[:, 1], stats[:, 2:6], stats[:, 6:10]
    corpus = _bleu_from_stats(correct.sum(0), guess.sum(0), testlen.sum(), reflen.sum()) * 100
    per = _bleu_from_stats(correct, guess, testlen, reflen) * 100
    keys = [f"bleu{k}" for k in range(1, 5)]
    return CaptionScores(
        corpus={k: float(corpus[i]) for i, k in enumerate(keys)},
        per_caption={k: per[:, i].tolist() for i, k in enumerate(keys)},
    )


# -------------------------------------------------------------------------------------------- ROUGE-L


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-int ops."""
    masks: dict[str, int] = {}
    for i, word in enumerate(a):
        masks[word] = masks.get(word, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for word in b:
        u = v & masks.get(word, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], beta: float = 1.2
) -> CaptionScores:
    """ROUGE-L F-score as coco-caption computes it (beta=1.2), corpus = mean over captions."""
    hyps, refs = _prepare(hypotheses, references)
    scores = []
    for hyp, ref_set in zip(hyps, refs):
        if not hyp:
            scores.append(0.0)
            continue
        lcs = [_lcs_length(hyp, r) for r in ref_set]
        # coco takes the best precision and the best recall separately (possibly from different
        # references), not the best per-reference F; kept for equality with published numbers.
        prec = max(m / len(hyp) for m in lcs)
        rec = max(m / len(r) for m, r in zip(lcs, ref_set))
        f = (1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0
        scores.append(f * 100)
    return CaptionScores(corpus={"rouge_l": float(np.mean(scores))}, per_caption={"rouge_l": scores})


# -------------------------------------------------------------------------------------------- CIDEr-D


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def cider_d(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0
) -> CaptionScores:
    """CIDEr-D exactly as coco-caption's ``Cider`` (idf from this set's references), key ``cider_d``."""
    _check_cider(n, sigma)
    hyps, refs = _prepare(hypotheses, references)
    ref_counts = [[_ngrams(r, n) for r in ref_set] for ref_set in refs]
    df, log_n_images = cider_document_frequency(ref_counts)
    scores = [
        _cider_score(_cider_vector(_ngrams(h, n), df, log_n_images, n), ref_vectors, sigma)
        for h, ref_vectors in zip(
            hyps, ([_cider_vector(c, df, log_n_images, n) for c in counts] for counts in ref_counts)
        )
    ]
    return CaptionScores(corpus={"cider_d": float(np.mean(scores))}, per_caption={"cider_d": scores})


def _check_cider(n: int, sigma: float) -> None:
    if n < 1 or sigma <= 0:
        raise ConfigError(f"cider_d n={n}, sigma={sigma}: need n >= 1 and sigma > 0 (coco uses n=4, sigma=6)")


def cider_document_frequency(ref_counts: Sequence[Sequence[Counter]]) -> tuple[Counter, float]:
    """In how many images' reference sets each n-gram occurs, and log(number of images)."""
    df: Counter = Counter()
    for counts in ref_counts:
        df.update(set().union(*counts))
    return df, math.log(len(ref_counts))


CiderVector = tuple[list[dict], np.ndarray, int]


def _cider_vector(counts: Counter, df: Counter, log_n_images: float, n: int) -> CiderVector:
    """tf-idf weights per n-gram order, their L2 norms, and coco's length."""
    vec: list[dict] = [{} for _ in range(n)]
    for gram, tf in counts.items():
        vec[len(gram) - 1][gram] = tf * (log_n_images - math.log(max(1.0, df.get(gram, 0))))
    norms = np.sqrt([sum(w * w for w in order.values()) for order in vec])
    # coco's "length" sums bigram counts (its `n == 1` tests the 0-based order), i.e. words - 1.
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, norms, length


def _cider_score(hyp: CiderVector, refs: Sequence[CiderVector], sigma: float) -> float:
    """CIDEr-D of one caption against its references' vectors, on our 0-100 scale."""
    h_vec, h_norm, h_len = hyp
    n = len(h_vec)
    total = np.zeros(n)
    for r_vec, r_norm, r_len in refs:
        val = np.array(
            [
                sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, w in h_vec[k].items())
                for k in range(n)
            ],
            dtype=float,
        )
        # Cosine similarity; coco leaves the (zero) dot product undivided when a norm is 0.
        denom = h_norm * r_norm
        val = np.divide(val, denom, out=val, where=denom != 0)
        total += val * math.exp(-((h_len - r_len) ** 2) / (2 * sigma**2))
    # Mean over n-gram orders, mean over references, x10 as coco; x100 for our 0-100 scale.
    return float(total.mean() / len(refs) * 10 * 100)


class CiderD:
    """CIDEr-D with document frequencies fixed once from a corpus (ruotianluo's ``cider`` cache).

    SCST scores thousands of sampled captions per epoch against the training references: the idf
    comes from the whole training set, as in Rennie et al. 2017, not from each minibatch, and each
    image's reference vectors are computed once. ``score`` of a corpus's own references equals
    :func:`cider_d` on that corpus.
    """

    def __init__(self, corpus: dict[str, Sequence[Tokens]], n: int = 4, sigma: float = 6.0):
        _check_cider(n, sigma)
        self.n, self.sigma = n, sigma
        ids = list(corpus)
        _, refs = _prepare([[]] * len(ids), [corpus[i] for i in ids])
        ref_counts = [[_ngrams(r, n) for r in ref_set] for ref_set in refs]
        self.df, self.log_n_images = cider_document_frequency(ref_counts)
        self.refs = {
            i: [_cider_vector(c, self.df, self.log_n_images, n) for c in counts]
            for i, counts in zip(ids, ref_counts)
        }

    def score(self, hypotheses: Sequence[Tokens], ids: Sequence[str]) -> list[float]:
        """Per-caption CIDEr-D (0-100) of ``hypotheses[j]`` against the references of image ``ids[j]``."""
        missing = sorted({i for i in ids if i not in self.refs})
        if missing:
            raise DataError(f"CiderD has no references for images {missing[:3]}; build it from their split")
        return [
            _cider_score(
                _cider_vector(_ngrams(_clean(h), self.n), self.df, self.log_n_images, self.n),
                self.refs[i],
                self.sigma,
            )
            for h, i in zip(hypotheses, ids)
        ]


# --------------------------------------------------------------------------------------- Java metrics


def _warn_once(message: str) -> None:
    # Evaluation runs every epoch; one line per process is enough to say a metric is missing.
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _pycocoevalcap_file(*parts: str) -> Path | None:
    """A file shipped inside pycocoevalcap, found without importing it (it is not a runtime dependency)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location, *parts)
        if path.is_file():
            return path
    return None


def find_meteor_jar() -> Path | None:
    """The METEOR 1.5 jar: ``$CAPTIONER_METEOR_JAR`` if set, else pycocoevalcap's copy, else None."""
    env = os.environ.get(METEOR_JAR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise DataError(f"{METEOR_JAR_ENV}={env} is not a file; point it at meteor-1.5.jar or unset it")
        return path
    return _pycocoevalcap_file("meteor", "meteor-1.5.jar")


def meteor_unavailable() -> str | None:
    """Why METEOR cannot run here (one line), or None when it can."""
    if shutil.which("java") is None:
        return "METEOR skipped: no `java` on PATH; install a Java runtime (e.g. apt-get install default-jre-headless)"
    if find_meteor_jar() is None:
        return (
            "METEOR skipped: meteor-1.5.jar not found; `pip install pycocoevalcap` "
            f"or set {METEOR_JAR_ENV}=/path/to/meteor-1.5.jar"
        )
    return None


def _meteor_text(tokens: list[str]) -> str:
    # " ||| " separates fields in METEOR's stdio protocol (pycocoevalcap strips it from hypotheses too).
    return " ".join(tokens).replace("|||", "").replace("  ", " ")


def meteor(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], timeout_s: float = 1800.0
) -> CaptionScores | None:
    """METEOR 1.5 through its jar, run as pycocoevalcap runs it; None (and a warning) without Java."""
    reason = meteor_unavailable()
    if reason:
        _warn_once(reason)
        return None
    hyps, refs = _prepare(hypotheses, references)
    jar = find_meteor_jar()
    assert jar is not None  # checked by meteor_unavailable()
    score_lines = [
        " ||| ".join(("SCORE", *(_meteor_text(r) for r in ref_set), _meteor_text(h))) + "\n"
        for h, ref_set in zip(hyps, refs)
    ]
    cmd = ["java", "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
    with tempfile.TemporaryFile() as stderr:
        # cwd = the jar's folder so it finds data/paraphrase-en.gz, as pycocoevalcap does.
        proc = subprocess.Popen(
            cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            # A writer thread streams the SCORE lines while we read their stats, so neither pipe fills up.
            writer = threading.Thread(target=lambda: (proc.stdin.writelines(score_lines), proc.stdin.flush()))
            writer.start()
            stats = [proc.stdout.readline().strip() for _ in score_lines]
            writer.join()
            proc.stdin.write("EVAL ||| " + " ||| ".join(stats) + "\n")
            proc.stdin.close()
            values = [proc.stdout.readline().strip() for _ in range(len(score_lines) + 1)]
            per, corpus = [float(v) * 100 for v in values[:-1]], float(values[-1]) * 100
        except (ValueError, BrokenPipeError, OSError) as err:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(
                f"METEOR jar {jar} failed ({err}); java said: {' '.join(tail) or 'nothing'}"
            ) from err
        finally:
            timer.cancel()
            proc.kill()
            proc.wait()
    return CaptionScores(corpus={"meteor": corpus}, per_caption={"meteor": per})


def spice_unavailable() -> str | None:
    """Why SPICE cannot run here (one line), or None when it can."""
    if shutil.which("java") is None:
        return "SPICE skipped: no `java` on PATH; install a Java runtime"
    if _pycocoevalcap_file("spice", "spice-1.0.jar") is None:
        return "SPICE skipped: spice-1.0.jar not found; `pip install pycocoevalcap`"
    if _pycocoevalcap_file("spice", "lib", "stanford-corenlp-3.6.0-models.jar") is None:
        return (
            "SPICE skipped: Stanford CoreNLP 3.6.0 jars missing from pycocoevalcap/spice/lib; run "
            "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'` online"
        )
    return None


def spice(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], timeout_s: float = 3600.0
) -> CaptionScores | None:
    """SPICE F-score through pycocoevalcap's jar; None (and a warning) when Java or CoreNLP is missing."""
    reason = spice_unavailable()
    if reason:
        _warn_once(reason)
        return None
    hyps, refs = _prepare(hypotheses, references)
    jar = _pycocoevalcap_file("spice", "spice-1.0.jar")
    assert jar is not None  # checked by spice_unavailable()
    items = [
        {"image_id": i, "test": " ".join(h), "refs": [" ".join(r) for r in ref_set]}
        for i, (h, ref_set) in enumerate(zip(hyps, refs))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = Path(tmp, "in.json"), Path(tmp, "out.json")
        in_path.write_text(json.dumps(items))
        cmd = ["java", "-jar", "-Xmx8G", str(jar), str(in_path), "-out", str(out_path), "-subset", "-silent"]
        done = subprocess.run(cmd, cwd=jar.parent, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:]
            raise RuntimeError(
                f"SPICE jar {jar} exited {done.returncode}; java said: {' '.join(tail) or 'nothing'}"
            )
        by_id = {item["image_id"]: item["scores"]["All"]["f"] for item in json.loads(out_path.read_text())}
    per = [float(by_id[i]) * 100 if by_id.get(i) is not None else math.nan for i in range(len(items))]
    return CaptionScores(corpus={"spice": float(np.mean(per))}, per_caption={"spice": per})


# ---------------------------------------------------------------------------------------------- entry


_SCORERS = {"bleu": bleu, "meteor": meteor, "rouge_l": rouge_l, "cider_d": cider_d, "spice": spice}


def evaluate_captions(
    hypotheses: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> CaptionScores:
    """Run the named metrics; Java metrics that cannot run are listed in ``skipped`` with the reason."""
    if isinstance(metrics, str):
        raise ConfigError(f"metrics={metrics!r} must be a list of names, e.g. [{metrics!r}]")
    unknown = [m for m in metrics if m not in _SCORERS]
    if unknown:
        raise ConfigError(f"metrics: unknown {unknown}; choose from {list(METRICS)}")
    hyps, refs = _prepare(hypotheses, references)
    corpus: dict[str, float] = {}
    per_caption: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(metrics):
        result = _SCORERS[name](hyps, refs)
        if result is None:
            skipped[name] = (meteor_unavailable if name == "meteor" else spice_unavailable)() or "unavailable"
            continue
        corpus.update(result.corpus)
        per_caption.update(result.per_caption)
    return CaptionScores(corpus, per_caption, skipped)


def score_captions(
    hypotheses: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    """Corpus scores (0-100): ``bleu1..bleu4, meteor, rouge_l, cider_d`` (and ``spice`` if asked)."""
    return evaluate_captions(hypotheses, references, metrics).corpus


def per_caption(
    hypotheses: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> list[dict[str, float]]:
    """One dict of scores (0-100) per caption, same keys as :func:`score_captions`."""
    return evaluate_captions(hypotheses, references, metrics).rows()
