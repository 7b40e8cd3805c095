"""`hs2 eval-policy`: the paper's aligned-model evaluation through the real CLI, with a local OpenAI-compatible server
standing in for the judge (it checks the prompts it receives and answers chosen verdicts, failures and unparsable
replies), hand-made benchmark files, and lm-evaluation-harness itself as the reference for TruthfulQA MC2."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from hs2trl.evaluation import arena_hard, mt_bench, report, reward
from hs2trl.evaluation.judge import describe_error, public_url
from tests.helpers.cli_batch import run_cli_batch
from tests.helpers.eval_fixtures import ALPACA, ARENA_QUESTIONS, MT_QUESTIONS, TRUTHFUL, write_eval_data
from tests.helpers.fake_judge import KEY, FakeJudge
from tests.helpers.fixtures import SHARED_DATA, helpsteer_rows, write_jsonl

EVAL_DATA = SHARED_DATA / "eval"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(write_eval_data(tmp_path_factory.mktemp("eval_data")))


def _run(*args, key: str | None = KEY, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    if key is not None:
        env["OPENAI_API_KEY"] = key
    import subprocess

    return subprocess.run([sys.executable, "-m", "hs2trl.cli", "eval-policy", *args], capture_output=True, text=True,
                          timeout=900, env=env, cwd=cwd)


def _user(request: dict) -> str:
    """The judge prompt (the first user message; a follow-up turn comes after it)."""
    return next(m["content"] for m in request["messages"] if m["role"] == "user")


def _first_output(prompt: str) -> str:
    """The output alpaca_eval's annotator shows as model 'm' (it shuffles the two outputs)."""
    match = re.search(r'"model_identifier": "m",\s*"output": """(.*?)"""', prompt, re.S)
    return match.group(1) if match else ""


class Verdicts:
    """The fake judge's answers: MT Bench ratings by question and turn, Arena Hard verdicts by question and game,
    AlpacaEval preferences by instruction; `fail` names what answers an error or nothing usable (first run)."""

    RATINGS = {(81, 1): 8, (81, 2): 6, (111, 1): 3, (111, 2): 9, (121, 1): 5, (121, 2): 4}
    UNPARSABLE, ERRORS = {(111, 1)}, {(81, 2)}  # first run: a reply with no rating; HTTP 500 on every try
    ARENA = {("q0", 1): "B>>A", ("q0", 2): "A>B", ("q1", 1): "A=B", ("q1", 2): "A=B", ("q2", 1): "A>B",
             ("q2", 2): "B>A", ("q3", 1): "B>A", ("q3", 2): "CONFLICT"}
    ALPACA_WINNER = {0: "policy", 1: "policy", 2: "reference", 3: "unparsable"}

    def __init__(self, first_run: bool):
        self.first_run = first_run

    def __call__(self, request: dict):
        user = _user(request)
        if user.startswith("GRADE"):
            q = next(q for q in MT_QUESTIONS if f"Q:{q['turns'][0]}" in user or f"Q1:{q['turns'][0]}" in user)
            turn = 2 if user.startswith(("GRADE-2", "GRADE-MATH-2")) else 1
            if self.first_run and (q["question_id"], turn) in self.ERRORS:
                return 500, "overloaded"
            if self.first_run and (q["question_id"], turn) in self.UNPARSABLE:
                return "I cannot rate this."
            return f"Good. Rating: [[{self.RATINGS[(q['question_id'], turn)]}]]"
        if user.startswith("ARENA"):
            q = next(q for q in ARENA_QUESTIONS if q["turns"][0]["content"] in user)
            game = 1 if "A:<<BASELINE" in user else 2
            verdict = self.ARENA[(q["question_id"], game)]
            if verdict == "CONFLICT":
                return "[[A>B]] or maybe [[B>A]]" if self.first_run else "[[A>B]]"
            if (q["question_id"], game) == ("q0", 1) and len(request["messages"]) == 2:
                return "A long analysis without a label."  # the follow-up turn then gets the verdict
            return f"My final verdict is [[{verdict}]]."
        instruction = next(i for i, row in enumerate(ALPACA) if row["instruction"] in user)
        winner = self.ALPACA_WINNER[instruction]
        if winner == "unparsable":
            if self.first_run:
                return {"text": "x", "logprobs": {"x": -0.01}}
            winner = "policy"
        first_is_reference = _first_output(user).startswith("Reference output")
        first_wins = (winner == "reference") == first_is_reference
        return {"text": "m" if first_wins else "M", "logprobs": {"m": math.log(0.8 if first_wins else 0.2),
                                                               "M": math.log(0.2 if first_wins else 0.8)}}


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_judged_benchmarks_with_fake_judge(smol_dir, data_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["--model", smol_dir, "--benchmarks", "mt-bench,arena-hard,alpacaeval", "--judge-model", "judge-x",
            "--data-dir", data_dir, "--output-dir", str(out), "--max_new_tokens", "12", "--judge_max_retries", "1"]
    with FakeJudge(Verdicts(first_run=True)) as judge:
        first = _run(*args, "--judge-base-url", judge.url)
        assert first.returncode == 0, first.stderr[-3000:]
        requests = list(judge.requests)

    name = Path(smol_dir).name
    results = json.loads((out / "results.json").read_text())["models"][name]["benchmarks"]
    # MT Bench: mean over the graded turns; one unparsable reply and one 500 are failed judgments, left out
    graded = [r for k, r in Verdicts.RATINGS.items() if k not in Verdicts.ERRORS | Verdicts.UNPARSABLE]
    mt = results["mt-bench"]
    assert mt["score"] == pytest.approx(sum(graded) / len(graded))
    assert mt["failed_judgments"] == 2 and mt["n"] == len(graded)
    assert mt["per_category"] == {"math": 9.0, "reasoning": 4.5, "writing": 8.0}
    answers = [json.loads(line) for line in (out / name / "mt-bench" / "answers.jsonl").read_text().splitlines()]
    texts = [t for a in answers for t in a["turns"]]
    assert (len(texts) == 6 and mt["mean_response_chars"] == pytest.approx(sum(map(len, texts)) / 6)
            and mt["mean_response_chars"] > 0)
    # FastChat's prompt choice: references inside the math/reasoning prompts, both turns shown for turn 2
    mt_requests = [r for r in requests if _user(r).startswith("GRADE")]
    assert all(r["model"] == "judge-x" and r["temperature"] == 0 and r["max_tokens"] == 2048 for r in mt_requests)
    math1 = next(_user(r) for r in mt_requests if _user(r).startswith("GRADE-MATH-1 Q:What is 17"))
    assert "REF:REF-51" in math1
    math2 = next(r for r in mt_requests if _user(r).startswith("GRADE-MATH-2 Q1:What is 17"))
    assert "R1:REF-51" in _user(math2) and "R2:REF-68" in _user(math2)
    assert math2["messages"][0] == {"role": "system", "content": "SYS-multi-math"}
    writing2 = next(_user(r) for r in mt_requests if _user(r).startswith("GRADE-2 Q1:Write two lines"))
    tea = next(a for a in answers if a["question_id"] == 81)["turns"]
    assert f"A1:{tea[0]} Q2:Now make them rhyme. A2:{tea[1]} END" in writing2

    # Arena Hard: both orders, strong verdicts x3, the two-label reply failed, the follow-up turn recovered q0 game 1
    ah = results["arena-hard"]
    # the model's side: q0 B>>A in game 1 (model = B) 3 wins, A>B in game 2 (model = A) 1 win; q1 two ties;
    # q2 A>B in game 1 and B>A in game 2 two losses; q3 B>A in game 1 a win (its game 2 failed)
    wins, ties, losses = 5, 2, 2
    assert ah["battles"] == {"win": wins, "tie": ties, "loss": losses} and ah["failed_judgments"] == 1
    assert ah["score"] == pytest.approx(100 * (wins + ties / 2) / (wins + ties + losses), abs=1e-4)
    assert ah["interval"]["low"] <= ah["score"] <= ah["interval"]["high"]
    follow_up = [r for r in requests if len(r["messages"]) == 4]
    assert len(follow_up) == 1 and follow_up[0]["messages"][2]["content"] == "A long analysis without a label."

    # AlpacaEval: the package's annotator and metrics; offline, so the plain win rate, marked
    ae = results["alpacaeval"]
    assert ae["metric"] == "win_rate" and "df_gamed.csv" in ae["note"] and ae["failed_judgments"] == 1
    assert ae["score"] == pytest.approx(100 * (0.8 + 0.8 + 0.2) / 3, abs=1e-3)
    assert "WR*" in (out / "table.md").read_text()

    # the key is in no output file and nothing printed
    for path in _files_under(out):
        assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in first.stdout + first.stderr

    # rerun: nothing generated again; only the failed judgments are asked again
    before = {p: p.read_bytes() for p in (out / name).rglob("answers.jsonl")}
    with FakeJudge(Verdicts(first_run=False)) as judge:
        second = _run(*args, "--judge-base-url", judge.url)
        assert second.returncode == 0, second.stderr[-3000:]
        asked = [_user(r)[:14] for r in judge.requests if len(r["messages"]) == 2]
    assert "answers" not in second.stderr  # no generation progress
    assert {p: p.read_bytes() for p in before} == before
    assert len(asked) == 4, asked  # 2 MT Bench turns, 1 Arena Hard game, 1 AlpacaEval instruction
    again = json.loads((out / "results.json").read_text())["models"][name]["benchmarks"]
    assert again["mt-bench"]["failed_judgments"] == 0 and again["mt-bench"]["n"] == 6
    assert again["mt-bench"]["score"] == pytest.approx(sum(Verdicts.RATINGS.values()) / 6)
    assert again["arena-hard"]["failed_judgments"] == 0 and again["alpacaeval"]["failed_judgments"] == 0


@pytest.mark.slow
def test_truthfulqa_mc2_is_lm_eval_s_figure(tiny_lm_dir, data_dir, tmp_path):
    out = tmp_path / "eval"
    result = _run("--model", tiny_lm_dir, "--benchmarks", "truthfulqa-mc2", "--data-dir", data_dir,
                  "--output-dir", str(out), key=None)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = (json.loads((out / "results.json").read_text())
            ["models"][Path(tiny_lm_dir).name]["benchmarks"]["truthfulqa-mc2"])

    # the harness itself, through its own task loading (a task file that includes the registered one)
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    registered = Path(lm_eval.tasks.__file__).parent / "truthfulqa" / "truthfulqa_mc2.yaml"
    (tasks / "local.yaml").write_text(
        f"include: {registered}\ntask: truthfulqa_mc2_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data_dir}/truthfulqa/truthful_qa_mc_validation.jsonl\n")
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_lm_dir},dtype=float32",
                                     tasks=["truthfulqa_mc2_local"], device="cpu", batch_size=8,
                                     task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    assert ours["score"] == pytest.approx(theirs["results"]["truthfulqa_mc2_local"]["acc,none"], abs=1e-4)
    assert ours["n"] == len(TRUTHFUL)

    # and the formula (DESIGN.md 2b) by hand: MC2 = mass of the true answers over all answers
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = lm_eval.tasks._yaml_loader.load_yaml(str(Path(registered).parent / "truthfulqa_mc1.yaml"))
    template = config["doc_to_text"]
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval(), AutoTokenizer.from_pretrained(tiny_lm_dir)
    scores = []
    for doc in TRUTHFUL:
        import jinja2

        context = jinja2.Template(template).render(question=doc["question"])
        logps = []
        for choice in doc["mc2_targets"]["choices"]:
            ctx_ids = tok(context)["input_ids"]
            full = tok(context + " " + choice)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([full])).logits.log_softmax(-1)[0]
            logps.append(sum(float(logits[i - 1, full[i]]) for i in range(len(ctx_ids), len(full))))
        p = [math.exp(x) for x in logps]
        true = sum(pi for pi, label in zip(p, doc["mc2_targets"]["labels"]) if label == 1)
        scores.append(true / sum(p))
    assert ours["score"] == pytest.approx(sum(scores) / len(scores), abs=1e-4)


@pytest.mark.slow
def test_reward_benchmark_and_checkpoint_selection(tiny_lm_dir, tiny_rm_dir, tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    run = tmp_path / "run"
    for k, seed in ((1, 3), (2, 4)):  # two checkpoints with other weights, and the final model
        torch.manual_seed(seed)
        model = LlamaForCausalLM.from_pretrained(tiny_lm_dir)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * torch.randn_like(p))
        model.save_pretrained(run / f"checkpoint-{k}")
        for f in Path(tiny_lm_dir).iterdir():  # the tokenizer files, as the Trainer saves them in a checkpoint
            if not (run / f"checkpoint-{k}" / f.name).exists():
                shutil.copy(f, run / f"checkpoint-{k}")
    for f in Path(tiny_lm_dir).iterdir():
        shutil.copy(f, run)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", helpsteer_rows(6))
    result = _run("--checkpoints", str(run), "--benchmarks", "reward", "--reward-model", tiny_rm_dir,
                  "--reference-model", tiny_lm_dir, "--reward_dataset", prompts, "--max_new_tokens", "6", key=None)
    assert result.returncode == 0, result.stderr[-3000:]
    selection = json.loads((run / "checkpoint_selection.json").read_text())
    assert selection["benchmark"] == "reward" and set(selection["scores"]) == {"checkpoint-1", "checkpoint-2", "final"}
    assert selection["best"] == max(selection["scores"], key=selection["scores"].get)
    assert f"best by reward: {selection['best_path']}" in result.stdout

    # the reported mean reward is the RM's goodness of the saved answers, recomputed here
    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.rewards import scalar_rewards, weights_for
    from hs2trl.rm.scoring import score_conversations

    results = json.loads((run / "eval-policy" / "results.json").read_text())["models"]
    rm, tok, outputs = load_reward_model(tiny_rm_dir)
    from hs2trl.data.conversations import distinct_prompts
    from hs2trl.data.sources import read_records

    messages, _ = distinct_prompts(read_records(prompts))
    rows = [json.loads(x)
            for x in (run / "eval-policy" / "checkpoint-2" / "reward" / "answers.jsonl").read_text().splitlines()]
    conversations = [m + [{"role": "assistant", "content": r["turns"][0]}] for m, r in zip(messages, rows)]
    rewards = scalar_rewards(score_conversations(rm, tok, conversations), weights_for(outputs, "goodness"))
    entry = results["checkpoint-2"]["benchmarks"]["reward"]
    assert entry["score"] == pytest.approx(float(rewards.mean()), abs=1e-5) and entry["n"] == len(messages)
    reference = [json.loads(x)["reward"]
                 for x in (run / "eval-policy" / f"reference_{Path(tiny_lm_dir).name}" / "reward"
                           / "judgments.jsonl").read_text().splitlines()]
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards.tolist(), reference)]
    assert entry["vs_reference"]["win_rate"] == pytest.approx(sum(wins) / len(wins), abs=1e-6)


def test_bad_input_is_one_line_before_any_generation(tiny_lm_dir, tiny_rm_dir, data_dir, tmp_path):
    """Unknown benchmark, missing key, unreachable judge, missing data, reward without an RM: one line, exit 2."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    empty = tmp_path / "empty_data"
    empty.mkdir()
    no_checkpoints = tmp_path / "no_checkpoints"
    no_checkpoints.mkdir()
    base = ["eval-policy", "--model", tiny_lm_dir, "--output-dir", str(tmp_path / "o")]
    cases = [
        ([*base, "--benchmarks", "mt-bench,bogus"], ["--benchmarks", "'bogus'", "known: mt-bench"]),
        ([*base, "--benchmarks", "mt-bench", "--judge-model", "j", "--judge-api-key-env", "HS2_NO_SUCH_KEY",
          "--data-dir", data_dir], ["$HS2_NO_SUCH_KEY", "API key"]),
        ([*base, "--benchmarks", "arena-hard", "--judge-model", "j", "--judge-base-url", closed,
          "--data-dir", data_dir], ["judge at", "unreachable"]),
        ([*base, "--benchmarks", "mt-bench", "--data-dir", str(empty)], ["mt_bench/question.jsonl", "--data-dir"]),
        ([*base, "--benchmarks", "reward"], ["reward", "--reward-model"]),
        ([*base, "--benchmarks", "reward", "--reward-model", tiny_lm_dir], ["not a reward model"]),
        (["eval-policy", "--checkpoints", str(no_checkpoints)], ["no_checkpoints", "no checkpoint-N"]),
        (["eval-policy", "--model", str(tmp_path / "absent_model")], ["absent_model", "no such"]),
    ]
    env = {**{k: v for k, v in os.environ.items() if k != "HS2_NO_SUCH_KEY"}, "OPENAI_API_KEY": KEY}
    results = run_cli_batch([c for c, _ in cases], env=env)
    for (command, expect), result in zip(cases, results):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (command, result.stderr[-2000:])
        assert lines and lines[-1].startswith("hs2: error:") and all(e in lines[-1] for e in expect), \
            (command, lines[-1:])
        assert "Traceback" not in result.stderr and "answers" not in result.stderr


# ------------------------------------------------------------------------------------------------- the pieces


def test_rating_and_verdict_parsing():
    assert mt_bench.parse_rating("Rating: [[7]]") == 7 and mt_bench.parse_rating("[[8.5]]") == 8.5
    assert mt_bench.parse_rating("score [6] only") == 6 and mt_bench.parse_rating("no rating") is None
    pattern = r"\[\[([AB<>=]+)\]\]"
    assert arena_hard.parse_verdict("... [[A>>B]]", pattern) == ("A>>B", False)
    assert arena_hard.parse_verdict("[[A>B]] then [[A>B]]", pattern) == ("A>B", False)
    assert arena_hard.parse_verdict("[[A>B]] or [[B>A]]", pattern) == (None, False)
    assert arena_hard.parse_verdict("no label", pattern) == (None, True)


def test_arena_hard_score_is_bradley_terry_against_the_baseline():
    records = [{"question_id": i, "game": g, "verdict": v} for i, (g, v) in
               enumerate([(1, "B>A"), (2, "A>B"), (1, "A>>B"), (2, "A=B"), (1, "B>>A"), (2, "B>A"), (1, "junk")])]
    outcomes = arena_hard.battles(records)
    assert sorted(outcomes) == sorted(["win", "win", "loss", "loss", "loss", "tie", "win", "win", "win", "loss"])
    result = arena_hard.score(records)
    # two players: the Bradley-Terry MLE is the (tie = half) win share, whatever the strong-verdict weight did
    assert result["score"] == pytest.approx(100 * 5.5 / 10, abs=1e-4)
    assert result["interval"]["low"] < result["score"] < result["interval"]["high"]
    assert arena_hard.score(records) == result  # seeded bootstrap
    assert arena_hard.win_rate(1000.0) == pytest.approx(50.0)


def test_reward_win_rate_counts_ties_as_halves():
    out = reward.win_rate([1.0, 2.0, 3.0, 0.0], [0.5, 2.0, 4.0, -1.0])
    assert out["win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert 0 <= out["interval"]["low"] <= out["win_rate"] <= out["interval"]["high"] <= 1


def test_table_cells_follow_table_4():
    assert report.cell("mt-bench", "score", {"score": 8.164}) == "8.16"
    assert report.cell("mt-bench", "mean_response_chars", {"mean_response_chars": 1683.04}) == "1683.0"
    assert report.cell("truthfulqa-mc2", "score", {"score": 0.61812}) == "0.6181"
    assert report.cell("alpacaeval", "score", {"score": 34.4, "metric": "lc_win_rate",
                                                "interval": {"kind": "se", "value": 1.38}}) == "34.40 (1.38)"
    assert report.cell("arena-hard", "score", {"score": 41.1, "interval": {"kind": "ci95", "low": 39.1,
                                                                           "high": 43.3}}) == "41.1 (-2.0, 2.2)"
    assert report.cell("alpacaeval", "score", {"score": 30.0, "metric": "win_rate",
                                               "interval": {"kind": "se", "value": 1.0}}).endswith("WR*")


def test_judge_errors_never_show_the_key():
    class Err(Exception):
        status_code = 401
        body = {"message": f"Incorrect API key provided: {KEY}. Also sk-abcdef123456 here."}

    text = describe_error(Err(), KEY)
    assert KEY not in text and "sk-abcdef123456" not in text and "401" in text
    assert public_url("http://user:secret@host:8000/v1") == "http://host:8000/v1"


# ------------------------------------------------------------------------------------- the real benchmark files


@pytest.mark.shared_data
@pytest.mark.skipif(not EVAL_DATA.is_dir(), reason="needs ../shared/data/eval")
def test_real_mt_bench_and_arena_hard_files_fill_their_prompts():
    data = str(EVAL_DATA)
    questions, _ = mt_bench.load_questions(data, None)
    prompts = mt_bench.load_prompts(data)
    for which in mt_bench.REFERENCES:
        references, _ = mt_bench.load_references(data, which)
        for q in questions:
            for turn in (1, 2):
                name, messages = mt_bench.judge_messages(prompts, q, ["first answer", "second answer"], turn,
                                                         references.get(q["question_id"]))
                assert "first answer" in messages[1]["content"]
                if q["category"] in mt_bench.NEED_REFERENCE:
                    assert "math" in name and references[q["question_id"]][turn - 1][:40] in messages[1]["content"]
    assert len(questions) == 80 and sum(q["category"] in mt_bench.NEED_REFERENCE for q in questions) == 30
    # the paper's references differ from FastChat's on the 13 questions it found wrong
    paper, _ = mt_bench.load_references(data, "gpt-4-0125-preview")
    fastchat, _ = mt_bench.load_references(data, "gpt-4")
    assert ({104, 105, 109, 111, 113, 114, 120, 122, 124, 125, 126, 128, 130}
            <= {q for q in paper if paper[q] != fastchat[q]})

    arena, _ = arena_hard.load_questions(data, None)
    baseline = arena_hard.load_baseline(data)
    config = arena_hard.load_judge_config(data)
    assert len(arena) == 500 and all(q["question_id"] in baseline for q in arena)
    filled = config["prompt_template"].format(question_1="Q?", answer_1="AAA", answer_2="BBB")
    assert ("AAA" in filled and filled.index("AAA") < filled.index("BBB")
            and config["judge_model"] == "gpt-4-1106-preview")
