"""Pairwise judging: a model behind any OpenAI-compatible chat-completions endpoint compares two replies.

Each pair is asked twice, with the replies swapped, so a judge that prefers a position cancels itself out.
The judge must put ``A``, ``B`` or ``TIE`` on the first line of its answer; anything else is a failed
judgement, counted on its own and never as a win. Outcomes come with 95% Wilson intervals, and the judged
pairs are written to JSON and CSV. torch-free: replies come in as text, from whatever generated them.
"""
from __future__ import annotations

import csv
import io
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

DEFAULT_RUBRIC = """You are judging two answers to the same question.

Question:
{question}

Answer A:
{answer_a}

Answer B:
{answer_b}

Which answer is better? Prefer the answer that is correct, follows the question's instructions, is helpful
and safe, and is clear. Length alone is no reason to prefer an answer.

On the first line write only A, B or TIE. On the next line give one short sentence of reason."""

PLACEHOLDERS = ("{question}", "{answer_a}", "{answer_b}")
VERDICTS = ("A", "B", "TIE")
OUTCOMES = ("win", "tie", "loss", "failed")
Z95 = 1.959963984540054
TIMEOUT_S = 120.0
JUDGE_FOLDER = "judge"


class JudgeError(ValueError):
    """A judge that cannot be used (bad URL, refused key, no model); the message is one sentence."""


# ---- the rubric and the verdict -----------------------------------------------------------------

def check_rubric(rubric: str) -> str:
    missing = [p for p in PLACEHOLDERS if p not in (rubric or "")]
    if missing:
        raise JudgeError(f"the rubric must contain {', '.join(missing)} where the question and answers go")
    return rubric


def judge_prompt(rubric: str, question: str, answer_a: str, answer_b: str) -> str:
    """The rubric with the question and both answers put in (plain replacement: braces in answers are safe)."""
    out = rubric
    for slot, text in zip(PLACEHOLDERS, (question, answer_a, answer_b)):
        out = out.replace(slot, text)
    return out


def parse_verdict(text: str | None) -> str | None:
    """``A``, ``B`` or ``TIE`` from the first non-empty line (case, surrounding '*' and a final '.' aside);
    None for anything else."""
    first = next((line for line in (text or "").splitlines() if line.strip()), "")
    word = first.strip().strip("*").strip().rstrip(".").strip().upper()
    return word if word in VERDICTS else None


def outcome(first: str | None, second: str | None) -> str:
    """The outcome for the candidate, asked first as A (``first``) and then as B (``second``).

    Either judgement failed: ``failed``. Otherwise each order scores +1 for the candidate, -1 for the
    opponent, 0 for a tie; the sum decides, so orders that disagree make a tie."""
    if first is None or second is None:
        return "failed"
    score = {"A": 1, "B": -1, "TIE": 0}[first] - {"A": 1, "B": -1, "TIE": 0}[second]
    return "win" if score > 0 else "loss" if score < 0 else "tie"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (0, 1 when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rates(outcomes: list[str]) -> dict:
    """Counts, shares and 95% intervals of each outcome over all pairs (failed ones included, so a failure
    can only lower the win rate)."""
    n = len(outcomes)
    out: dict = {"pairs": n}
    for name in OUTCOMES:
        k = outcomes.count(name)
        low, high = wilson(k, n)
        out[name] = {"count": k, "rate": k / n if n else 0.0, "low": low, "high": high}
    return out


# ---- the endpoint -------------------------------------------------------------------------------

def completions_url(url: str) -> str:
    """``.../v1`` or ``.../v1/chat/completions`` -> the chat-completions URL."""
    url = (url or "").strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise JudgeError(f"the judge URL '{url}' must start with http:// or https://")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class JudgeClient:
    """A chat-completions client: one user message in, the reply's text out (greedy)."""

    def __init__(self, url: str, key: str | None = None, model: str | None = None, timeout: float = TIMEOUT_S,
                 max_tokens: int = 64):
        self.url = completions_url(url)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self.model = model or self._first_model()
        self.max_tokens = max_tokens

    def _first_model(self) -> str:
        models_url = self.url[: -len("/chat/completions")] + "/models"
        try:
            response = self.http.get(models_url)
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"{models_url} names no model: give the judge's model name") from None

    def ask(self, prompt: str) -> str:
        """The judge's answer; an HTTP or protocol failure raises JudgeError (one sentence)."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": self.max_tokens}
        try:
            response = self.http.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise JudgeError(f"cannot reach the judge at {self.url}: {exc}") from None
        if response.status_code in (401, 403):
            raise JudgeError(f"the judge at {self.url} refused the key (HTTP {response.status_code})")
        if response.status_code >= 400:
            raise JudgeError(f"the judge at {self.url} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"the judge at {self.url} did not answer in the chat-completions format") from None
        return content if isinstance(content, str) else ""

    def close(self) -> None:
        self.http.close()


# ---- judging pairs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgedPair:
    prompt: str
    candidate: str          # the reply of the model under test
    opponent: str           # the reply it is compared with
    first_raw: str          # the judge's answer with the candidate as A
    second_raw: str         # ... and with the candidate as B
    first: str | None
    second: str | None
    outcome: str


def judge_pair(ask, rubric: str, prompt: str, candidate: str, opponent: str) -> JudgedPair:
    """Ask ``ask`` (prompt text -> judge's answer) in both orders and combine the two verdicts."""
    first_raw = ask(judge_prompt(rubric, prompt, candidate, opponent))
    second_raw = ask(judge_prompt(rubric, prompt, opponent, candidate))
    first, second = parse_verdict(first_raw), parse_verdict(second_raw)
    return JudgedPair(prompt, candidate, opponent, first_raw, second_raw, first, second, outcome(first, second))


def judge_all(ask, prompts: list[str], candidates: list[str], opponents: list[str],
              rubric: str = DEFAULT_RUBRIC, progress=None) -> list[JudgedPair]:
    check_rubric(rubric)
    pairs = []
    for i, (p, c, o) in enumerate(zip(prompts, candidates, opponents, strict=True), 1):
        pairs.append(judge_pair(ask, rubric, p, c, o))
        if progress is not None:
            progress(i, len(prompts))
    return pairs


def report(pairs: list[JudgedPair], candidate: str, opponent: str, judge: str, rubric: str) -> dict:
    return {"candidate": candidate, "opponent": opponent, "judge": judge, "rubric": rubric, "time": time.time(),
            **rates([p.outcome for p in pairs]), "judged": [asdict(p) for p in pairs]}


def summary_line(result: dict) -> str:
    parts = [f"{name} {result[name]['rate']:.0%} [{result[name]['low']:.0%}-{result[name]['high']:.0%}]"
             for name in ("win", "tie", "loss")]
    return (f"{result['candidate']} vs {result['opponent']}: " + ", ".join(parts) +
            f" over {result['pairs']} pairs ({result['failed']['count']} failed judgements)")


def to_csv(result: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["pair", "prompt", f"{result['candidate']} reply", f"{result['opponent']} reply",
                     "verdict (candidate as A)", "verdict (candidate as B)", "outcome", "judge answer (A)",
                     "judge answer (B)"])
    for i, p in enumerate(result["judged"], 1):
        writer.writerow([i, p["prompt"], p["candidate"], p["opponent"], p["first"] or "", p["second"] or "",
                         p["outcome"], p["first_raw"], p["second_raw"]])
    return buf.getvalue()


def write(result: dict, folder: Path, stem: str) -> tuple[Path, Path]:
    """``<folder>/<stem>.json`` and ``.csv``, each written atomically."""
    from .atomic import write_json, write_text

    return write_json(folder / f"{stem}.json", result), write_text(folder / f"{stem}.csv", to_csv(result))
