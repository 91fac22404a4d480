"""The CLI: one clear line for bad input, nothing partial written, a working prune -> eval round trip."""

from __future__ import annotations

import json

import pytest

from numprune.cli import main
from tests.conftest import tiny_model


@pytest.fixture
def model_dir(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(127)} | {"[UNK]": 127}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "dense"
    tiny_model("llama", 2).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{(i * 7) % 127}" for i in range(3000)))
    return path, text


def prune_argv(model, text, out, *extra, ratio="0.2"):
    return [
        "prune",
        "--model",
        str(model),
        "--ratio",
        ratio,
        "--calib",
        str(text),
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--out",
        str(out),
        *extra,
    ]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_then_eval(model_dir, tmp_path, capsys):
    path, text = model_dir
    out = tmp_path / "pruned"
    argv = prune_argv(path, text, out, "--option", "head_scaling=none", ratio="0.3")
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    summary = json.loads(stdout)
    assert abs(summary["params_ratio"] - 0.3) < 0.05 and (out / "pruning_plan.json").exists()
    code, stdout, err = run(
        capsys, "eval", "--model", str(out), "--dataset", str(text), "--seqlen", "32", "--max-windows", "3"
    )
    row = json.loads(stdout)
    assert code == 0 and row["windows"] == 3 and row["tokens"] == 3 * 31 and row["ppl"] > 1
    assert row["params"] == summary["model_params_after"]


@pytest.mark.parametrize("method", ["slicegpt", "depth"])
def test_prune_then_eval_rewriting_methods(model_dir, tmp_path, capsys, method):
    """SliceGPT / depth through the CLI: the saved folder reloads for eval (sliced remote code, stock config)."""
    path, text = model_dir
    out = tmp_path / method
    code, stdout, err = run(capsys, *prune_argv(path, text, out, "--method", method, ratio="0.3"))
    assert code == 0, err
    summary = json.loads(stdout)
    assert abs(summary["params_ratio"] - 0.3) < 0.05 and method in summary["summary"]
    code, stdout, err = run(
        capsys, "eval", "--model", str(out), "--dataset", str(text), "--seqlen", "32", "--max-windows", "3"
    )
    assert code == 0, err
    assert json.loads(stdout)["params"] == summary["model_params_after"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ratio", "1.2"], "ratio must be in [0, 1)"),
        (["--ratio", "0.3", "--option", "bogus=1"], "unknown option bogus"),
        (["--ratio", "0.3", "--option", "lam=abc"], "lam must be float or None, got 'abc'"),
        (["--ratio", "0.3", "--option", "min_heads=1.5"], "min_heads must be int, got 1.5"),
        (["--ratio", "0.3", "--nsamples", "2", "--seqlen", "100000"], "too short"),
        (["--ratio", "0.3", "--calib", "nonexistent-corpus"], "unknown dataset"),
        (["--ratio", "0.3", "--option", "compensation=maybe"], "compensation must be one of"),
    ],
)
def test_bad_input_one_line_nothing_written(model_dir, tmp_path, capsys, extra, message):
    path, text = model_dir
    out = tmp_path / "pruned"
    argv = [
        "prune",
        "--model",
        str(path),
        "--calib",
        str(text),
        "--seqlen",
        "32",
        "--nsamples",
        "2",
        "--out",
        str(out),
        *extra,
    ]
    if "--calib" in extra:
        argv = argv[:3] + argv[5:]  # drop the default --calib
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("numprune: error:")]) == 1
    assert not out.exists() and not list(tmp_path.glob(".pruned*"))


def test_existing_output_refused_unless_overwrite(model_dir, tmp_path, capsys):
    path, text = model_dir
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    base = prune_argv(path, text, out)
    code, _, err = run(capsys, *base)
    assert code == 2 and "exists" in err and (out / "keep.txt").exists()
    code, _, err = run(capsys, *base, "--overwrite")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_interrupted_save_leaves_nothing(model_dir, tmp_path, monkeypatch, capsys):
    path, text = model_dir
    import numprune.save as save

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(save.PruningPlan, "save", boom)
    out = tmp_path / "pruned"
    code, _, err = run(capsys, *prune_argv(path, text, out))
    assert code == 130 and "interrupted" in err
    assert not out.exists() and not list(tmp_path.glob(".pruned*"))


def test_save_after_a_killed_save_removes_its_leftover(tmp_path, model_dir, capsys):
    """SIGKILL in the middle of a save leaves ``.NAME.tmp-PID-*``; the next save to NAME removes it (and keeps
    the temporary folder of a save that is still running)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "pruned"
    code = (
        "import os, signal, sys\n"
        "from numprune.save import atomic_directory\n"
        "with atomic_directory(sys.argv[1]) as tmp:\n"
        "    (tmp / 'model.safetensors').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(out)])
    assert killed.returncode == -9
    (left,) = tmp_path.glob(".pruned.tmp-*")
    running = tmp_path / f".pruned.tmp-{os.getpid()}-other"  # this process: alive
    running.mkdir()
    path, text = model_dir
    assert run(capsys, *prune_argv(path, text, out))[0] == 0
    assert not left.exists() and running.exists() and (out / "config.json").exists()


def test_missing_model_folder_is_named(tmp_path, model_dir, capsys):
    _, text = model_dir
    code, _, err = run(capsys, *prune_argv(tmp_path / "no" / "such" / "folder", text, tmp_path / "out"))
    assert code == 2 and f"model folder {tmp_path}/no/such/folder does not exist" in err and "hub" not in err


def test_model_without_o_proj_is_refused(tmp_path, capsys, model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, text = model_dir
    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128)).save_pretrained(path)
    for f in (model_dir[0]).glob("tokenizer*"):
        (path / f.name).write_bytes(f.read_bytes())
    code, _, err = run(capsys, *prune_argv(path, text, tmp_path / "o"))
    assert code == 2 and "unsupported architecture 'gpt2'" in err
