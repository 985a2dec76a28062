"""lm-evaluation-harness (train/harness): the "triptych" model against lm-eval's own `hf` backend
on the same weights, exported with `models convert --to-hf`.

Tiny GPT-2, T5 and BART models (random weights, tokenizers trained here on CPython's bundled
documentation) run the example tasks through both backends with --log_samples; every
per-request log-likelihood agrees within 1e-4, every is_greedy flag and generation is identical
and the task metrics are equal. The traps that the `hf` backend handles (lm-eval #1297, #1465)
are asked directly: a context ending in a space, a continuation that begins with one or whose
first token merges with the context's end, an empty context and empty rolling document, a
context longer than the model. A 100-document task compiles at most one program per length
bucket, and bad input is one error line.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
lm_eval = pytest.importorskip("lm_eval")

import models  # noqa: E402
from train import convert  # noqa: E402
from train.harness import TASKS_DIR, TriptychLM, task_manager  # noqa: E402
from train.harness import __main__ as harness_cli  # noqa: E402

TOL = 1e-4
TASKS = ("triptych_choice", "triptych_perplexity", "triptych_generate")
TOKENIZERS = {
    "gpt2-tiny": ("bpe", "gpt"),
    "t5-tiny": ("unigram", "t5"),
    "bart-tiny": ("bpe", "bart"),
}
TOKENIZERS["bert-tiny"] = ("wordpiece", "bert")


def _corpus() -> list[str]:
    from pydoc_data.topics import topics

    lines = (line.strip() for text in list(topics.values())[:40] for line in text.splitlines())
    return [line for line in lines if line][:3000]


def _save(name: str, root: Path) -> Path:
    """A random tiny model of `name` with a tokenizer trained here, as a converted checkpoint."""
    import dataclasses

    from flax.core import meta

    from data.tokenizers import train_tokenizer
    from models.summary import dummy_inputs
    from train.checkpoint import save_params

    kind, family = TOKENIZERS[name]
    tok = train_tokenizer(_corpus(), kind=kind, family=family, vocab_size=500)
    head = "mlm" if family == "bert" else "lm"
    config = models.get_config(name, vocab_size=tok.vocab_size, head=head, dropout_rate=0.0,
                               attention_dropout_rate=0.0)  # fmt: skip
    params = models.build(config).init(jax.random.key(1), **dummy_inputs(config))["params"]
    params = jax.tree.map(np.asarray, meta.unbox(params))
    save_params(root / name, dataclasses.asdict(config), params)
    tok.save(str(root / name / "tokenizer"))
    return root / name


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """name -> (our converted checkpoint, its `--to-hf` export); each built once."""
    root, made = tmp_path_factory.mktemp("harness_models"), {}

    def make(name: str) -> tuple[Path, Path]:
        if name not in made:
            ours = _save(name, root)
            assert convert.main(["--from", str(ours), "--to-hf", f"{ours}-hf"]) == 0
            made[name] = (ours, Path(f"{ours}-hf"))
        return made[name]

    return make


# Parity through the two command lines -------------------------------------------------------------


def _hf_cli(hf_dir: Path, out: Path, tasks, backend: str, dtype: str) -> None:
    """lm-eval's own command line (`lm-eval run --model hf ...`), in this process."""
    from lm_eval import utils
    from lm_eval._cli import HarnessCLI

    utils._LOGGING_CONFIGURED = True  # no handler bound to this test's captured stderr
    cli = HarnessCLI()
    args = cli._parser.parse_args(
        ["run", "--model", "hf", "--model_args",
         f"pretrained={hf_dir},backend={backend},dtype={dtype}", "--device", "cpu",
         "--tasks", ",".join(tasks), "--include_path", str(TASKS_DIR), "--batch_size", "8",
         "--output_path", str(out), "--log_samples"]
    )  # fmt: skip
    cli.execute(args)


def _written(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(the results JSON, {task: its samples by doc}) that lm-eval wrote under `out`."""
    (results_file,) = glob.glob(str(out / "*" / "results_*.json"))
    results = json.loads(Path(results_file).read_text())
    samples = {}
    for task in results["results"]:
        (file,) = glob.glob(str(out / "*" / f"samples_{task}_*.jsonl"))
        rows = [json.loads(line) for line in Path(file).read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda r: r["doc_id"])
    return results, samples


def _compare_samples(ours: list[dict], theirs: list[dict], output_type: str) -> float:
    """Asserts the same requests, is_greedy flags and generations; returns the largest
    log-likelihood difference (lm-eval writes each response as strings)."""
    worst = 0.0
    assert [r["doc_id"] for r in ours] == [r["doc_id"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert a["arguments"] == b["arguments"]
        assert len(a["resps"]) == len(b["resps"])
        for (ra,), (rb,) in zip(a["resps"], b["resps"]):
            if output_type == "generate_until":
                assert ra == rb, (a["arguments"], ra, rb)
            elif output_type == "loglikelihood_rolling":
                worst = max(worst, abs(float(ra) - float(rb)))
            else:  # (loglikelihood, is_greedy)
                assert ra[1] == rb[1], (a["arguments"], ra, rb)
                worst = max(worst, abs(float(ra[0]) - float(rb[0])))
    return worst


def _compare_metrics(ours: dict, theirs: dict) -> None:
    for task, metrics in theirs["results"].items():
        for key, value in metrics.items():
            if key == "alias" or "stderr" in key:
                continue
            if "perplexity" in key or "bits_per_byte" in key:  # from the summed log-likelihoods
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-6), (task, key)
            else:
                assert ours["results"][task][key] == value, (task, key)


def _run_both(model_dir, name, tasks, backend, tmp_path, dtype="float32"):
    ours_dir, hf_dir = model_dir(name)
    argv = ["--model", str(ours_dir), "--tasks", ",".join(tasks), "--batch_size", "8",
            "--output_path", str(tmp_path / "ours"), "--log_samples"]  # fmt: skip
    assert harness_cli.main(argv) == 0
    _hf_cli(hf_dir, tmp_path / "hf", tasks, backend, dtype)
    (ours, our_samples), (theirs, their_samples) = (
        _written(tmp_path / "ours"),
        _written(tmp_path / "hf"),
    )
    assert sorted(ours["results"]) == sorted(theirs["results"]) == sorted(tasks)
    worst = {
        t: _compare_samples(our_samples[t], their_samples[t], theirs["configs"][t]["output_type"])
        for t in tasks
    }
    assert max(worst.values()) <= TOL, worst
    _compare_metrics(ours, theirs)
    return ours, worst


@pytest.mark.hf
def test_decoder_matches_the_hf_backend_on_every_output_type(model_dir, tmp_path, capsys):
    """The hf backend computes in float64 here: a 300-token document's log-likelihood summed
    in float32 carries about 1e-4 of torch's own rounding (measured: hf float32 against hf
    float64 7.6e-5, ours against hf float64 5e-6), the whole tolerance. The requests of the
    traps test below meet hf in float32, its default."""
    ours, worst = _run_both(model_dir, "gpt2-tiny", TASKS, "causal", tmp_path, "float64")
    table = capsys.readouterr().out
    for task in TASKS:
        assert task in table
    assert ours["configs"]["triptych_generate"]["output_type"] == "generate_until"
    print("largest log-likelihood difference per task:", worst)


@pytest.mark.hf
@pytest.mark.parametrize("name", ["t5-tiny", "bart-tiny"])
def test_encoder_decoders_match_the_hf_seq2seq_backend(model_dir, tmp_path, name):
    _, worst = _run_both(model_dir, name, ["triptych_choice"], "seq2seq", tmp_path)
    print(name, "largest log-likelihood difference:", worst)


# The traps, request by request --------------------------------------------------------------------


def _requests(kind: str, arguments) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


def _merging_pair(lm) -> tuple[str, str]:
    """A (context, continuation) whose first continuation token merges with the context's
    end when the two are encoded together."""
    for word in ("important", "operator", "statement", "variable", "function", "attribute"):
        for cut in range(2, len(word) - 1):
            context, continuation = f"The {word[:cut]}", f"{word[cut:]} is here"
            whole, alone = lm.tok_encode(context + continuation), lm.tok_encode(context)
            if whole[: len(alone)] != alone:
                return context, continuation
    raise AssertionError("no merging pair found for this tokenizer")


LONG = " ".join(["the parser reads every token of the statement"] * 20)


@pytest.mark.hf
def test_decoder_traps_match_the_hf_backend(model_dir):
    from lm_eval.models.huggingface import HFLM

    ours_dir, hf_dir = model_dir("gpt2-tiny")
    ours = TriptychLM(str(ours_dir), batch_size=4)
    theirs = HFLM(pretrained=str(hf_dir), device="cpu", batch_size=4, dtype="float32")
    assert ours.max_length == theirs.max_length == 64
    assert ours.prefix_token_id == theirs.prefix_token_id
    merging = _merging_pair(ours)
    pairs = [
        ("Question: is it red? Answer: ", "yes"),  # the context ends in a space
        ("Question: is it red? Answer:", " yes"),  # the continuation begins with one
        merging,  # its first token merges with the context's end
        ("", "Hello world"),  # an empty context: the prefix token stands in
        (LONG, " statement"),  # longer than the model: left-truncated
        ("x y z " * 12, "the parser reads every token of the statement"),  # both long
    ]
    generated = ours.generate_until(_requests("generate_until", [
        ("The value of", {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}),
        (LONG, {"until": ["."], "max_gen_toks": 10}),  # left-truncated to leave room
        ("Return the", {"until": ["the"], "max_gen_toks": 12}),
    ]))  # fmt: skip
    assert generated == theirs.generate_until(_requests("generate_until", [
        ("The value of", {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}),
        (LONG, {"until": ["."], "max_gen_toks": 10}),
        ("Return the", {"until": ["the"], "max_gen_toks": 12}),
    ]))  # fmt: skip
    pairs.append(("The value of", generated[0]))  # greedy by construction: is_greedy is True
    a = ours.loglikelihood(_requests("loglikelihood", pairs))
    b = theirs.loglikelihood(_requests("loglikelihood", pairs))
    assert [g for _, g in a] == [g for _, g in b]
    assert a[-1][1] is True
    np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], atol=TOL, rtol=0)
    sampling = {"until": ["\n"], "max_gen_toks": 6, "do_sample": True, "temperature": 1.0}
    sampled = [  # two fresh models with the same seed draw the same samples
        TriptychLM(str(ours_dir), batch_size=4, seed=7).generate_until(
            _requests("generate_until", [("The value of", sampling)] * 4)
        )
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    assert any(text != generated[0] for text in sampled[0])  # sampled, not greedy
    documents = [("",), ("Short.",), (LONG,), (" starts with a space",)]
    rolled = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", documents))
    expected = theirs.loglikelihood_rolling(_requests("loglikelihood_rolling", documents))
    assert rolled[0] == expected[0] == 0.0  # an empty document has nothing to predict
    np.testing.assert_allclose(rolled, expected, atol=TOL, rtol=0)


@pytest.mark.hf
@pytest.mark.parametrize("name", ["t5-tiny", "bart-tiny"])
def test_encoder_decoder_requests_match_the_hf_seq2seq_backend(model_dir, name):
    from lm_eval.models.huggingface import HFLM

    ours_dir, hf_dir = model_dir(name)
    ours = TriptychLM(str(ours_dir), batch_size=4)
    theirs = HFLM(pretrained=str(hf_dir), backend="seq2seq", device="cpu", batch_size=4,
                  dtype="float32")  # fmt: skip
    assert ours.backend == theirs.backend == "seq2seq"
    assert ours.tok_encode("Answer: yes") == theirs.tok_encode("Answer: yes")  # </s> framed
    pairs = [("Question: is it red? Answer: ", "yes"), ("Answer:", " no"), ("", "Hello"),
             (LONG, " statement")]  # fmt: skip
    a = ours.loglikelihood(_requests("loglikelihood", pairs))
    b = theirs.loglikelihood(_requests("loglikelihood", pairs))
    assert [g for _, g in a] == [g for _, g in b]
    np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], atol=TOL, rtol=0)


# Buckets ------------------------------------------------------------------------------------------


def test_a_100_document_task_compiles_one_program_per_bucket_at_most(model_dir, tmp_path):
    """100 questions of every length from 1 to 60 words: many batch shapes, few programs."""
    rng = np.random.default_rng(0)
    words = " ".join(_corpus()[:200]).split()
    with open(tmp_path / "lengths.jsonl", "w") as f:
        for i in range(100):
            n = int(rng.integers(1, 60))
            question = " ".join(words[i : i + n])
            f.write(json.dumps({"question": question, "choices": ["yes", "no"], "answer": 0}))
            f.write("\n")
    (tmp_path / "lengths.yaml").write_text(
        "task: lengths\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'lengths.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
    )
    lm = TriptychLM(str(model_dir("gpt2-tiny")[0]), batch_size=8)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=["lengths"], task_manager=task_manager(str(tmp_path))
    )
    assert results["results"]["lengths"]["acc,none"] >= 0.0
    batches = -(-200 // lm.batch_size)
    assert lm.scorer.buckets == (16, 32, 64)
    assert lm.scorer.compiled_programs() <= len(lm.scorer.buckets) < batches


# Bad input ----------------------------------------------------------------------------------------


def _sst2_dir(root: Path) -> Path:
    """A small SST-2 folder in GLUE's TSV layout (sentence<TAB>label under a header)."""
    root.mkdir()
    rows = {
        "train.tsv": [("a gripping , funny film . ", 1), ("dull and lifeless ", 0)],
        "dev.tsv": [("it 's a charming journey . ", 1), ("unflinchingly bleak ", 0),
                    ("the acting is worse ", 0), ("a \"small\" wonder ", 1)],
    }  # fmt: skip
    for name, lines in rows.items():
        body = "".join(f"{text}\t{label}\n" for text, label in lines)
        (root / name).write_text("sentence\tlabel\n" + body)
    return root


@pytest.mark.hf
def test_sst2_from_local_tsv_files_scores_as_the_hf_backend(model_dir, tmp_path, monkeypatch):
    """triptych_sst2 reads $SST2_DIR's dev.tsv (lm-eval's own sst2 prompt): every sentence is
    one document with two choices, and both backends score them alike."""
    monkeypatch.setenv("SST2_DIR", str(_sst2_dir(tmp_path / "sst2")))
    ours, _ = _run_both(model_dir, "gpt2-tiny", ["triptych_sst2"], "causal", tmp_path)
    samples = _written(tmp_path / "ours")[1]["triptych_sst2"]
    assert [int(s["target"]) for s in samples] == [1, 0, 0, 1]
    assert samples[3]["arguments"]["gen_args_1"] == {
        "arg_0": 'a "small" wonder\nQuestion: Is this sentence positive or negative?\nAnswer:',
        "arg_1": " positive",
    }
    assert samples[3]["doc"]["sentence"] == 'a "small" wonder'
    assert 0.0 <= ours["results"]["triptych_sst2"]["acc,none"] <= 1.0


def test_sst2_without_its_files_is_one_error_line(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SST2_DIR", str(tmp_path))
    argv = ["--model", str(model_dir("gpt2-tiny")[0]), "--tasks", "triptych_sst2"]
    _one_line(capsys, argv, "train.tsv", "SST2_DIR", str(tmp_path))


def _one_line(capsys, argv, *needles) -> None:
    code = harness_cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_bad_input_is_one_error_line(model_dir, tmp_path, capsys):
    gpt = str(model_dir("gpt2-tiny")[0])
    _one_line(capsys, ["--model", gpt, "--tasks", "no_such_task"], "unknown task", "no_such_task")
    _one_line(capsys, ["--model", str(model_dir("bert-tiny")[0]), "--tasks", "triptych_choice"],
              "encoder-only", "decoder or an encoder-decoder")  # fmt: skip
    missing = str(tmp_path / "no_tasks_here")
    _one_line(capsys, ["--model", gpt, "--tasks", "x", "--include_path", missing], missing)
    _one_line(capsys, ["--model", str(tmp_path / "nowhere"), "--tasks", "triptych_choice"],
              "--model", "no such directory")  # fmt: skip
    _one_line(capsys, ["--model", "nobody/no-such-model", "--tasks", "triptych_choice"],
              "nobody/no-such-model")  # fmt: skip
    _one_line(capsys, ["--model", gpt, "--tasks", "triptych_choice", "--log_samples"],
              "--output_path")  # fmt: skip


# The export ---------------------------------------------------------------------------------------


@pytest.mark.hf
@pytest.mark.parametrize("name", ["gpt2-tiny", "t5-tiny", "bart-tiny", "bert-tiny"])
def test_the_export_tokenizes_in_transformers_as_here(model_dir, name):
    from transformers import AutoConfig, AutoTokenizer

    from data.rows import special_frame
    from data.tokenizers import load_tokenizer

    ours_dir, hf_dir = model_dir(name)
    mine = load_tokenizer(str(ours_dir / "tokenizer"))
    theirs = AutoTokenizer.from_pretrained(str(hf_dir))
    for text in ["Question: Which animal barks?\nAnswer:", " two  spaces", "tab\there", "é ü"]:
        assert theirs.encode(text, add_special_tokens=False) == mine.encode(text).tolist()
        ids = mine.encode(text).tolist()
        assert theirs.decode(ids, skip_special_tokens=True) == mine.decode(ids)
    framed = theirs.encode("a b")  # add_special_tokens: the family's frame, as the harness's
    begin, _, end = special_frame(mine) if mine.family != "gpt" else ([], [], [])
    assert framed == [*begin, *mine.encode("a b").tolist(), *end]
    hf_config = AutoConfig.from_pretrained(str(hf_dir))
    assert hf_config.eos_token_id == theirs.eos_token_id == mine.eos_id
    assert hf_config.pad_token_id == theirs.pad_token_id == mine.pad_id


# During training --------------------------------------------------------------------------------


def test_live_parameters_score_as_the_saved_checkpoint(model_dir):
    """The `eval_harness` section's scorer on parameters sharded over a training mesh gives
    the saved checkpoint's metrics, and a second evaluation compiles nothing new."""
    from train import partitioning, reference
    from train.harness import live
    from train.harness.batching import place_params
    from train.tasks.loading import tokenizer_of

    ours_dir, _ = model_dir("gpt2-tiny")
    ref = reference.resolve(str(ours_dir))
    config, params = ref.load()
    mesh, rules = partitioning.make_mesh({"data": 2, "fsdp": 4}), partitioning.DEFAULT_RULES
    with partitioning.activate(mesh, rules):
        placed = place_params(config, params, mesh, rules)
    cfg = live.section()
    cfg.tasks, cfg.limit, cfg.batch_size = ["triptych_choice"], 8, 8
    harness = live.LiveHarness(
        cfg, config, tokenizer_of(ref), mesh=mesh, rules=rules, params=placed
    )
    metrics = harness(placed)
    programs = harness.lm.scorer.compiled_programs()
    assert harness(placed) == metrics and harness.lm.scorer.compiled_programs() == programs
    saved = lm_eval.simple_evaluate(
        model=TriptychLM(str(ours_dir), batch_size=8), tasks=["triptych_choice"], limit=8,
        task_manager=task_manager(),
    )  # fmt: skip
    assert metrics == live.flat_metrics(saved)
    assert set(metrics) == {
        "eval_harness/triptych_choice/acc",
        "eval_harness/triptych_choice/acc_norm",
    }
    assert live.due(cfg, 100) is False  # every_steps 0: never
    cfg.every_steps = 50
    assert live.due(cfg, 100) and not live.due(cfg, 101)


def test_a_training_run_logs_its_harness_tasks_as_its_checkpoints_score(tmp_path):
    """The `eval_harness` section in the loop: the tasks run every `every_steps` and after the
    last step, on the live parameters, and what metrics.jsonl logs equals lm-eval on the
    checkpoint saved at that step."""
    from configs import gpt_lm
    from train.harness import live
    from train.loop import train_and_evaluate

    config = gpt_lm.get_config("smoke")
    config.steps, config.sample_tokens, config.eval_every_steps = 5, 0, 0
    config.checkpoint_every_steps, config.keep_checkpoints = 2, 5
    config.eval_harness.tasks = ("triptych_choice",)
    config.eval_harness.every_steps, config.eval_harness.limit = 2, 8
    train_and_evaluate(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "eval_harness/triptych_choice/acc" in r}
    assert sorted(logged) == [2, 4, 5]
    for step in (2, 5):
        saved = lm_eval.simple_evaluate(
            model=TriptychLM(str(tmp_path / "run"), step=step), tasks=["triptych_choice"],
            limit=8, task_manager=task_manager(),
        )  # fmt: skip
        expected = live.flat_metrics(saved)
        assert {k: v for k, v in logged[step].items() if k in expected} == expected
    out = tmp_path / "hf"  # the model card's eval results carry the last step's
    assert convert.main(["--from", str(tmp_path / "run"), "--to-hf", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "triptych_choice (lm-evaluation-harness)" in card, card
    acc = logged[5]["eval_harness/triptych_choice/acc"]
    assert f"value: {acc}" in card, card


def test_a_harness_section_the_run_cannot_serve_is_one_line_before_training(tmp_path):
    from configs import bert_mlm, gpt_lm
    from models.errors import UserError
    from train.loop import train_and_evaluate

    cases = []
    config = gpt_lm.get_config("smoke")
    config.eval_harness.tasks, config.eval_harness.every_steps = ("no_such_task",), 2
    cases.append((config, ["eval_harness.tasks: unknown task", "no_such_task"]))
    config = bert_mlm.get_config("smoke")
    config.eval_harness.tasks, config.eval_harness.every_steps = ("triptych_choice",), 2
    cases.append((config, ["encoder-only"]))
    for config, needles in cases:
        with pytest.raises(UserError) as error:
            train_and_evaluate(config, tmp_path / "bad")
        text = str(error.value)
        assert all(n in text for n in needles) and "\n" not in text, text
        assert not (tmp_path / "bad").exists()


# Several processes --------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_write_the_results_of_one(model_dir, tmp_path):
    """2 processes x 1 device compute every request on the shared mesh and process 0 writes
    the results and samples files that 1 process x 2 devices writes."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TRIPTYCH_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(root), HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1")  # fmt: skip
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # launch.local sets its own
    harness = [sys.executable, "-m", "train.harness", "--model", str(model_dir("gpt2-tiny")[0]),
               "--tasks", ",".join(TASKS), "--log_samples", "--output_path"]  # fmt: skip
    one = subprocess.run([*harness, str(tmp_path / "one")], env=env, cwd=root, text=True,
                         capture_output=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "launch.local", "-n", "2", "--devices-per-process", "1", "--"]
    two = subprocess.run([*launch, *harness, str(tmp_path / "two")], env=env, cwd=root,
                         text=True, capture_output=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stdout[-3000:]
    assert two.stdout.count("|triptych_choice") == 1  # the table, from process 0 only
    (single, single_samples), (double, double_samples) = (
        _written(tmp_path / "one"),
        _written(tmp_path / "two"),
    )
    assert double["results"] == single["results"]
    for task in TASKS:
        assert [r["resps"] for r in double_samples[task]] == [
            r["resps"] for r in single_samples[task]
        ]


def test_requests_that_feed_the_model_the_same_input_share_a_row():
    from train.harness.rows import CANDIDATES, causal_rows, seq2seq_rows

    context = [5, 6, 7]
    answers = [(context, [t]) for t in range(10, 10 + CANDIDATES + 2)]  # one-token answers
    longer = [(context[:2], [7, 10]), (context, [10])]  # the same input, split elsewhere
    rows = causal_rows([*answers, *longer, ([1] * 70, [2])], max_length=64)
    assert [len(r.tokens) for r in rows] == [64, 3, 3]  # truncated, and sorted longest first
    first, second = rows[1], rows[2]
    assert first.tokens == second.tokens == context and len(first.lasts) == CANDIDATES
    assert sorted(i for r in rows for i, _, _ in r.asks) == list(range(len(answers) + 3))
    slot = second.lasts.index(10)  # the open row takes what the full one cannot
    assert {(10, 2, slot), (11, 1, slot)} <= set(second.asks)  # [5, 6] + [7, 10], [5, 6, 7] + [10]
    same = seq2seq_rows([([1, 2], [3]), ([1, 2], [3]), ([1, 2], [4])], max_length=64)
    assert [len(r.asks) for r in same] == [2, 1]


@pytest.mark.hf
def test_the_speed_report_times_both_backends(model_dir):
    from train.harness import speed

    ours_dir, hf_dir = model_dir("gpt2-tiny")
    report = speed.run(
        speed.argparse_namespace(
            model=str(ours_dir), hf=str(hf_dir), tasks="triptych_choice", limit=4, copies=1
        )  # fmt: skip
    )
    assert report["requests"] == 12  # 4 questions x 3 answers
    assert report["ours_requests_per_s"] > 0 and report["hf_requests_per_s"] > 0
    stages = report["ours_breakdown_s"]
    assert stages["programs_and_transfer_s"] <= stages["total_s"]
