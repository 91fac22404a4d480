"""Zero-shot evaluation through lm-eval, offline, on a tiny model whose answers are known in advance.

The model is a plain ``LlamaForCausalLM`` whose next-token distribution is the same at every position and
puts almost all mass on the word "yes" (every other token ties). Scored on small task files in each
benchmark's own format, each task's accuracy is then fixed by the data: "yes" wins wherever it is a choice,
and among tied choices lm-eval's argmax takes the first.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("lm_eval")

from numprune.cli import main
from numprune.errors import NumpruneError
from numprune.eval.lm_tasks import PAPER_TASKS, parse_tasks
from numprune.eval.zeroshot import AVERAGE_TASK, evaluate_zeroshot, result_rows
from numprune.results import COLUMNS, append_rows, read_rows

WORDS = ["yes", "no", "red", "blue", "green", "A", "B", "C", "D", "Question", "Answer", ":", "?", "_", ".", "####"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[EOS]", "[PAD]", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="[EOS]", pad_token="[PAD]")


def yes_model(tok, favour: str = "yes", margin: float = 8.0):
    """Random LLaMA whose logits are the same everywhere: ``margin`` for ``favour``, 0 for every other token.

    Attention and MLP outputs are zeroed and every token embeds to the same vector, so the final hidden state
    is one constant; the final norm keeps only coordinate 0 and lm_head reads it for one row only.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.convert_tokens_to_ids(favour), 0] = margin
    return model


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _mc(key_field, question_field, answers):
    """ARC/OBQA docs: choices red/yes/blue/green labelled A-D; the model always picks B ("yes")."""
    return [
        {
            question_field: f"Question {i} ?",
            "choices": {"text": ["red", "yes", "blue", "green"], "label": ["A", "B", "C", "D"]},
            key_field: a,
        }
        for i, a in enumerate(answers)
    ]


# task -> expected headline metric for the data written below
EXPECTED = {
    "boolq": 3 / 5,  # "yes" (label 1) in 3 of 5 docs
    "piqa": 2 / 4,  # the solution "yes" is the gold one in 2 of 4 docs
    "hellaswag": 1 / 3,  # ending "yes" is gold in 1 of 3 docs
    "winogrande": 3 / 4,  # both options tie: option 1 wins, gold in 3 of 4 docs
    "arc_easy": 2 / 3,  # answerKey B ("yes") in 2 of 3 docs
    "arc_challenge": 1 / 4,
    "openbookqa": 2 / 2,
    "mmlu": 2 / 4,  # letters tie -> "A" everywhere; gold A in 2/3 (algebra) and 0/1 (anatomy): weighted 2/4
    "gsm8k": 0.0,  # the model only ever says "yes"
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    _write(
        d / "boolq/validation.jsonl",
        [{"passage": "red blue", "question": "green", "label": y, "idx": i} for i, y in enumerate([1, 1, 0, 1, 0])],
    )
    _write(
        d / "piqa/validation.jsonl",
        [
            {"goal": "red", "sol1": "yes" if g == 0 else "no", "sol2": "no" if g == 0 else "yes", "label": lab}
            for g, lab in [(0, 0), (1, 1), (0, 1), (1, 0)]
        ],
    )
    _write(
        d / "hellaswag/validation.jsonl",
        [
            {
                "activity_label": "red",
                "ctx_a": "blue",
                "ctx_b": "green",
                "endings": ["red", "yes", "blue", "green"],
                "label": lab,
                "ind": i,
            }
            for i, lab in enumerate(["1", "0", "3"])
        ],
    )
    _write(
        d / "winogrande/validation.jsonl",
        [
            {"sentence": "red _ blue green .", "option1": "yes", "option2": "no", "answer": a}
            for a in ["1", "1", "2", "1"]
        ],
    )
    _write(d / "arc_easy/test.jsonl", _mc("answerKey", "question", ["B", "A", "B"]))
    _write(d / "arc_challenge/test.jsonl", _mc("answerKey", "question", ["C", "A", "B", "D"]))
    _write(d / "openbookqa/test.jsonl", _mc("answerKey", "question_stem", ["B", "B"]))
    mmlu = [("abstract_algebra", a) for a in (0, 0, 1)] + [("anatomy", 2)]
    _write(
        d / "mmlu/test.jsonl",
        [{"question": "red ?", "subject": s, "choices": ["a", "b", "c", "d"], "answer": a} for s, a in mmlu],
    )
    _write(
        d / "mmlu/dev.jsonl",
        [
            {"question": "blue ?", "subject": s, "choices": ["a", "b", "c", "d"], "answer": 1}
            for s in ("abstract_algebra", "anatomy")
            for _ in range(5)
        ],
    )
    _write(d / "gsm8k/test.jsonl", [{"question": "red ?", "answer": "blue #### 4"}])
    _write(d / "gsm8k/train.jsonl", [{"question": f"blue {i} ?", "answer": "green #### 2"} for i in range(6)])
    return d


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def scores(task_dir, tok):
    torch.set_num_threads(1)
    return {s.task: s for s in evaluate_zeroshot(yes_model(tok), tok, "all", data_dir=task_dir)}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_known_answer(scores, task):
    assert scores[task].value == pytest.approx(EXPECTED[task], abs=1e-9)


def test_metric_convention_and_shots(scores):
    metrics = {t: scores[t].metric for t in PAPER_TASKS}
    assert metrics == {
        "boolq": "acc",
        "piqa": "acc",
        "hellaswag": "acc_norm",
        "winogrande": "acc",
        "arc_easy": "acc",
        "arc_challenge": "acc_norm",
        "openbookqa": "acc_norm",
    }
    assert {t: scores[t].num_fewshot for t in scores} == {
        **dict.fromkeys(PAPER_TASKS, 0),
        "mmlu": 5,
        "gsm8k": 5,
        AVERAGE_TASK: 0,
    }
    assert all(scores[t].source.startswith("local:") for t in EXPECTED)
    assert scores["mmlu"].n_samples == 4 and scores["boolq"].n_samples == 5


def test_average_is_mean_of_the_seven(scores):
    avg = scores[AVERAGE_TASK]
    assert avg.value == pytest.approx(sum(EXPECTED[t] for t in PAPER_TASKS) / 7)
    assert "mmlu" not in json.dumps(avg.metrics) and len(avg.metrics) == 7


def test_favouring_the_other_answer_flips_boolq(task_dir, tok):
    """Wiring check: the score follows the model, not the data alone."""
    (s,) = evaluate_zeroshot(yes_model(tok, favour="no"), tok, "boolq", data_dir=task_dir)
    assert s.value == pytest.approx(2 / 5)


def test_limit_and_shot_override(task_dir, tok):
    (s,) = evaluate_zeroshot(yes_model(tok), tok, ["boolq"], data_dir=task_dir, limit=2, num_fewshot={"boolq": 1})
    assert s.n_samples == 2 and s.num_fewshot == 1
    with pytest.raises(NumpruneError):
        evaluate_zeroshot(yes_model(tok), tok, ["boolq"], data_dir=task_dir, num_fewshot={"piqa": 1})


def test_rows_land_in_results_schema(scores, tmp_path):
    csv = tmp_path / "r.csv"
    append_rows(csv, result_rows(list(scores.values()), model="tiny", limit=None))
    rows = {r["eval_dataset"]: r for r in read_rows(csv)}
    assert set(rows) == set(scores) and set(next(iter(rows.values()))) == set(COLUMNS)
    for task, r in rows.items():
        assert float(r["value"]) == pytest.approx(scores[task].value)
        opts, vers = json.loads(r["options"]), json.loads(r["versions"])
        assert opts["num_fewshot"] == scores[task].num_fewshot and r["metric"] == scores[task].metric
        assert vers["lm_eval"] and vers["lm_eval"] != "unknown"
        if task != AVERAGE_TASK:
            assert vers["task"] == scores[task].task_version != ""


def test_parse_tasks():
    assert parse_tasks("paper") == list(PAPER_TASKS)
    assert parse_tasks("arc_c,obqa,arc-c") == ["arc_challenge", "openbookqa"]
    with pytest.raises(NumpruneError):
        parse_tasks("wikitext")


def test_missing_split_files_are_an_error(tmp_path, tok):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "train.jsonl").write_text("")
    with pytest.raises(NumpruneError, match="evaluation split"):
        evaluate_zeroshot(yes_model(tok), tok, "boolq", data_dir=tmp_path)


def test_cli_on_a_saved_model(task_dir, tok, tmp_path, capsys):
    model_dir = tmp_path / "m"
    yes_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    csv = tmp_path / "r.csv"
    argv = ["zeroshot", "--model", str(model_dir), "--tasks", "boolq,arc_c", "--data-dir", str(task_dir)]
    assert main([*argv, "--results", str(csv)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["task"] for x in lines] == ["boolq", "arc_challenge"]
    assert lines[0]["value"] == pytest.approx(EXPECTED["boolq"])  # the reloaded model keeps its answers
    assert [r["eval_dataset"] for r in read_rows(csv)] == ["boolq", "arc_challenge"]


def test_cli_on_a_model_pruned_by_numprune(task_dir, tok, tmp_path, capsys):
    """A pruned, saved model evaluates through the CLI and its rows say how it was pruned."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from numprune import prune_, save_pruned

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    plan = prune_(model, ratio=0.3, calibration=torch.randint(0, len(tok), (4, 32)), progress=False)
    out = save_pruned(model, tmp_path / "pruned", plan, tokenizer=tok)
    csv = tmp_path / "r.csv"
    assert main(["zeroshot", "--model", str(out), "--tasks", "piqa", "--data-dir", str(task_dir),
                 "--limit", "2", "--results", str(csv)]) == 0  # fmt: skip
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert line["task"] == "piqa" and line["n_samples"] == 2 and 0.0 <= line["value"] <= 1.0
    (row,) = read_rows(csv)
    assert row["method"] == "numerical" and float(row["ratio"]) == 0.3 and row["model_hash"]
    assert float(row["ratio_achieved"]) == pytest.approx(plan.achieved["params_ratio"], abs=1e-6)
    assert int(row["params_after"]) < int(row["params_before"]) and json.loads(row["options"])["limit"] == 2
    assert json.loads(row["options"])["compensation"] == plan.options["compensation"]  # every pruning option


def test_hub_task_offline_says_what_to_do(tok, monkeypatch):
    """Without local files a task falls back to the hub; offline, that must fail with a usable message."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NumpruneError, match="--data-dir"):
        evaluate_zeroshot(yes_model(tok), tok, "piqa")
