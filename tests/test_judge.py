"""Pairwise judging against a scripted OpenAI-compatible stub (a real HTTP server on 127.0.0.1, a random port,
in a thread): both orders, ties, malformed answers, intervals, files, and the CLI on the tiny model."""
from __future__ import annotations

import csv
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from adapter_fixtures import make_job


class StubJudge:
    """``script(prompt) -> answer`` decides each verdict; every request is recorded."""

    def __init__(self, script, models=("stub-judge",)):
        self.script, self.models, self.requests = script, list(models), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in stub.models]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                answer = stub.script(body["messages"][-1]["content"])
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": answer}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def answers(prompt: str) -> tuple[str, str]:
    a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", prompt, re.DOTALL).group(1)
    b = re.search(r"Answer B:\n(.*?)\n\nWhich answer", prompt, re.DOTALL).group(1)
    return a, b


def prefers_good(prompt: str) -> str:
    """A fair judge: the answer that says GOOD wins, wherever it stands; two alike are a tie."""
    a, b = answers(prompt)
    if ("GOOD" in a) == ("GOOD" in b):
        return "TIE\nThey are equally good."
    return ("A" if "GOOD" in a else "B") + "\nIt is the good one."


def judge_with(script, candidates, opponents, **client_kw):
    from studio import judge

    prompts = [f"question {i}" for i in range(len(candidates))]
    with StubJudge(script) as stub:
        client = judge.JudgeClient(stub.url, **client_kw)
        pairs = judge.judge_all(client.ask, prompts, candidates, opponents)
        client.close()
    return pairs, stub


def test_each_pair_is_asked_in_both_orders_and_a_fair_judge_decides():
    pairs, stub = judge_with(prefers_good, ["GOOD one", "bad", "GOOD too", "bad"], ["bad", "GOOD", "GOOD", "bad"],
                             key="sk-test")
    assert [p.outcome for p in pairs] == ["win", "loss", "tie", "tie"]
    assert len(stub.requests) == 8
    first, second = (answers(r["messages"][-1]["content"]) for r in stub.requests[:2])
    assert first == ("GOOD one", "bad") and second == ("bad", "GOOD one"), "the second order must swap A and B"
    assert (pairs[0].first, pairs[0].second) == ("A", "B")
    assert all(r["auth"] == "Bearer sk-test" and r["model"] == "stub-judge" for r in stub.requests)
    assert all(r["path"] == "/v1/chat/completions" and r["temperature"] == 0 for r in stub.requests)


def test_a_judge_that_always_picks_one_position_gives_ties_not_wins():
    pairs, _ = judge_with(lambda prompt: "A", ["x", "y", "z"], ["p", "q", "r"])
    assert [p.outcome for p in pairs] == ["tie", "tie", "tie"]
    pairs, _ = judge_with(lambda prompt: "TIE", ["x"], ["p"])
    assert pairs[0].outcome == "tie"


@pytest.mark.parametrize("malformed", ["I think A is better.", "", "Verdict: A", "A or B", "AB", "TIE?", "Answer A"])
def test_a_malformed_judge_answer_is_a_failure_never_a_win(malformed):
    from studio import judge

    # the candidate (GOOD) would win every well-formed judgement: only the malformed one decides
    def script(prompt):
        a, _ = answers(prompt)
        return malformed if "GOOD" in a else "B"

    pairs, _ = judge_with(script, ["GOOD"] * 4, ["bad"] * 4)
    assert [p.outcome for p in pairs] == ["failed"] * 4
    result = judge.rates([p.outcome for p in pairs])
    assert result["win"]["count"] == 0 and result["failed"]["count"] == 4 and result["win"]["rate"] == 0.0


@pytest.mark.parametrize("text,verdict", [("A", "A"), ("b\nbecause", "B"), ("**TIE**", "TIE"), ("tie.", "TIE"),
                                          ("\n  A  \nreason", "A"), ("A B", None), (None, None)])
def test_the_verdict_is_read_strictly_from_the_first_line(text, verdict):
    from studio.judge import parse_verdict

    assert parse_verdict(text) == verdict


def test_rates_have_95_percent_wilson_intervals():
    from studio.judge import rates, wilson

    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)   # the textbook values for 8/10
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    r = rates(["win"] * 6 + ["tie"] * 2 + ["loss"] + ["failed"])
    assert r["pairs"] == 10
    assert [r[k]["count"] for k in ("win", "tie", "loss", "failed")] == [6, 2, 1, 1]
    assert r["win"]["rate"] == 0.6 and r["win"]["low"] < 0.6 < r["win"]["high"]


def test_bad_urls_rubrics_and_endpoints_are_one_sentence():
    from studio import judge

    with pytest.raises(judge.JudgeError, match="must start with http"):
        judge.JudgeClient("localhost:8000")
    with pytest.raises(judge.JudgeError, match=r"\{answer_b\}"):
        judge.check_rubric("Compare {question}: {answer_a}")
    with StubJudge(prefers_good, models=()) as stub:
        with pytest.raises(judge.JudgeError, match="names no model"):
            judge.JudgeClient(stub.url)
        client = judge.JudgeClient(stub.url + "/chat/completions", model="given")
        assert client.url == stub.url + "/chat/completions" and client.model == "given"
        client.close()


def test_cli_judges_a_run_against_the_base_and_another_run(tiny_model_dir, studio_home, tmp_path, capsys,
                                                            monkeypatch):
    from workers.cli import main

    first, second = make_job(tiny_model_dir, "judge-a", seed=1), make_job(tiny_model_dir, "judge-b", seed=2)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello, how are you?\nWhat is your name?\nTell me about Paris.\n")
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Q: {question}\n\nAnswer A:\n{answer_a}\n\nAnswer B:\n{answer_b}\n\nWhich answer? A, B or TIE.")
    monkeypatch.setenv("STUDIO_JUDGE_KEY", "sk-env")
    with StubJudge(lambda prompt: "A") as stub:
        code = main(["evaluate", first.name, "--judge", stub.url, "--against", "base", "--prompts", str(prompts),
                     "--rubric", str(rubric), "--max-new-tokens", "8"])
        assert code == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "judge-a vs base: win 0% [0%-56%], tie 100% [44%-100%], loss 0% [0%-56%] over 3 pairs" in out
        assert len(stub.requests) == 6 and stub.requests[0]["auth"] == "Bearer sk-env"
        assert stub.requests[0]["messages"][0]["content"].startswith("Q: Hello, how are you?")
        folder = studio_home / first.output_dir / "judge"
        saved = json.loads((folder / "vs-base.json").read_text())
        assert saved["tie"]["count"] == 3 and len(saved["judged"]) == 3 and saved["rubric"] == rubric.read_text()
        assert saved["judged"][0]["candidate"] != saved["judged"][0]["opponent"]
        rows = list(csv.reader((folder / "vs-base.csv").open()))
        assert len(rows) == 4 and rows[1][1] == "Hello, how are you?" and rows[1][6] == "tie"

        assert main(["evaluate", first.id, "--judge", stub.url, "--against", second.name,
                     "--prompts", str(prompts), "--max-new-tokens", "8", "--limit", "2"]) == 0
        assert (folder / f"vs-{second.id}.json").exists()
        assert len(stub.requests) == 6 + 4
        capsys.readouterr()

        assert main(["evaluate", first.id, "--judge", stub.url, "--against", "nobody", "--prompts", str(prompts)]) == 2
        assert "no finished run or imported adapter named 'nobody'" in capsys.readouterr().err
        bad_rubric = tmp_path / "bad.txt"
        bad_rubric.write_text("Which is better?")
        assert main(["evaluate", first.id, "--judge", stub.url, "--prompts", str(prompts),
                     "--rubric", str(bad_rubric)]) == 2
        assert "the rubric must contain {question}" in capsys.readouterr().err
        assert main(["evaluate", first.id, "--judge", stub.url]) == 2   # its dataset is not in the library
        assert "the dataset 'tiny-data' does not exist" in capsys.readouterr().err
        assert len(stub.requests) == 10, "bad input must not reach the judge"

        # without --prompts: the run's own eval split (2 of its 10 rows)
        from studio import library

        data = tmp_path / "chat.jsonl"
        data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                         {"role": "assistant", "content": f"Answer {i}."}]}) + "\n"
                                for i in range(10)))
        library.add(data, name="judge-data")
        third = make_job(tiny_model_dir, "judge-c", seed=3, dataset="judge-data", eval_split=0.2)
        assert main(["evaluate", third.name, "--judge", stub.url, "--max-new-tokens", "4"]) == 0
        saved = json.loads((studio_home / third.output_dir / "judge" / "vs-base.json").read_text())
        assert len(saved["judged"]) == 2 and all(re.fullmatch(r"Question \d\?", p["prompt"]) for p in saved["judged"])
