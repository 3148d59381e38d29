"""The Java-backed metrics of coco-caption: METEOR 1.5 and SPICE through their jars, and why they cannot run.

Each returns None, with a one-line reason logged once, where Java or its jars are missing.
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner.errors import DataError
from captioner.metrics.scores import CaptionScores, Tokens, prepare_captions

log = logging.getLogger(__name__)

METEOR_JAR_ENV = "CAPTIONER_METEOR_JAR"
_warned: set[str] = set()


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


def _prepared_if_runnable(
    reason: str | None, hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]
) -> tuple[list[Tokens], list[list[Tokens]]] | None:
    """The checked captions for a Java scorer, or None (warned once) when ``reason`` says it cannot run."""
    if reason:
        _warn_once(reason)
        return None
    return prepare_captions(hypotheses, references)


def meteor(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], timeout_s: float = 1800.0
) -> CaptionScores | None:
    """METEOR 1.5 through its jar, run as pycocoevalcap runs it; None (and a warning) without Java."""
    prepared = _prepared_if_runnable(meteor_unavailable(), hypotheses, references)
    if prepared is None:
        return None
    hyps, refs = prepared
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
    prepared = _prepared_if_runnable(spice_unavailable(), hypotheses, references)
    if prepared is None:
        return None
    hyps, refs = prepared
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
