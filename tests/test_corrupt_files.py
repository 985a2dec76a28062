"""Damaged checkpoint files end in one error line, never a traceback, a hang or silent garbage.

Fixed-seed corruptions of a tiny GPT-2 saved in every format Triptych reads (model.safetensors,
a sharded safetensors index, pytorch_model.bin, a converted Orbax checkpoint and a training
workdir) go through the readers in process. Each case's outcome is decided independently of the
code under test: a corruption that leaves a valid file (a flipped bit in float data, a flipped
bit in header metadata that nothing reads) must load, with the reference's tree and shapes;
everything else must raise `UserError` with a one-line message. For safetensors headers the
verdict comes from parsing the damaged header with Python's json; for Orbax files from Orbax
itself (it must fail, or restore the same tree). A dozen cases per command then go through each
CLI's `main`, which must print one `error:` line, return 2 and leave no output behind.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import numpy as np
import pytest
from flax.core import meta

import models
from models import hf
from models.errors import UserError
from train import checkpoint

SEED = 45
OK, ERR = "loads", "error"


@dataclasses.dataclass
class Case:
    kind: str  # what was done, for the counts
    base: str  # which pristine directory it starts from
    mutate: object  # (directory) -> None
    expect: str  # OK or ERR


def _tree_shapes(params) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in flat}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One tiny GPT-2 written in every format; (root, reference shapes)."""
    import torch
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("pristine")
    config = models.get_config("gpt2-tiny")
    params = models.build(config).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    params = jax.tree.map(np.asarray, meta.unbox(params))
    hf.save_pretrained(config, params, root / "hf")
    checkpoint.save_params(root / "conv", dataclasses.asdict(config), params)
    tensors = hf.read_state_dict(str(root / "hf"))
    for name in ("bin", "sharded"):
        (root / name).mkdir()
        shutil.copy(root / "hf" / "config.json", root / name)
    torch.save({k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, root / "bin" / _BIN)
    names = sorted(tensors)
    shards = {"model-1.safetensors": names[::2], "model-2.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(root / "sharded" / shard))
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (root / "sharded" / _INDEX).write_text(json.dumps(index))
    ckpt = checkpoint.Checkpointer(root / "workdir" / "checkpoints", async_save=False)
    saved = {"resolved_model": config.to_dict(), "run": {}}
    ckpt.save(1, {"params": params, "step": np.int32(1)}, config=saved)
    ckpt.close()
    (root / "workdir" / "config.json").write_text(json.dumps(saved, default=str))
    return root, _tree_shapes(params)


_ST, _BIN, _INDEX = "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"
_STATE = "checkpoints/1/state"


# Safetensors ------------------------------------------------------------------------------------


def _split(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _pack(header, data: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _entries(raw_header: bytes):
    """The tensor entries of a header (what a reader uses), or None when it is not JSON."""
    try:
        parsed = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    return {k: v for k, v in parsed.items() if k != "__metadata__"}


def _rewrite(file: Path, edit) -> None:
    header, data = _split(file.read_bytes())
    result = edit(header, data)
    file.write_bytes(_pack(*result) if isinstance(result, tuple) else _pack(result, data))


def _set_bytes(file: Path, edit) -> None:
    raw = bytearray(file.read_bytes())
    file.write_bytes(bytes(edit(raw)))


def _tensor_names(header: dict) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def _header_edits(rng: random.Random, header: dict) -> list[tuple[str, object]]:
    """(kind, edit(header, data)) pairs that break the header's promises one at a time."""
    names = _tensor_names(header)
    edits = [
        ("unknown dtype", partial(_put, name=rng.choice(names), dtype=t))
        for t in ("F8", "Q4", "float32", "")
    ]
    for _ in range(3):
        edits += [
            ("reversed offsets", partial(_reverse, name=rng.choice(names))),
            (
                "offsets past the end",
                partial(_past_end, name=rng.choice(names), by=rng.randrange(1, 10**6)),
            ),
            ("shape disagrees with bytes", partial(_grow, name=rng.choice(names))),
            ("missing tensor", partial(_drop, name=rng.choice(names))),
            (
                "extra entry without bytes",
                partial(_extra_entry, name=f"extra.{rng.randrange(10**6)}"),
            ),
        ]
    edits += [
        ("transposed shape", partial(_put, name=names[names.index(_QKV)], shape=[96, 32])),
        ("overlapping offsets", partial(_overlap, first=names[0], second=names[1])),
        *[("header not an object", partial(_replace, value=v)) for v in ([], "x", 1, None)],
        ("extra tensor with bytes (ignored)", partial(_add, name="extra.buffer")),
    ]
    return edits


_QKV = "transformer.h.0.attn.c_attn.weight"


def _put(header, data, name, **fields):
    header[name] = {**header.get(name, {}), **fields}
    return header


def _reverse(header, data, name):
    return _put(header, data, name, data_offsets=header[name]["data_offsets"][::-1])


def _past_end(header, data, name, by):
    return _put(header, data, name, data_offsets=[header[name]["data_offsets"][0], len(data) + by])


def _grow(header, data, name):
    return _put(header, data, name, shape=[*header[name]["shape"], 2])


def _extra_entry(header, data, name):
    return _put(
        header, data, name, dtype="F32", shape=[4], data_offsets=[len(data), len(data) + 16]
    )


def _overlap(header, data, first, second):
    return _put(header, data, second, data_offsets=header[first]["data_offsets"])


def _replace(header, data, value):
    return value


def _drop(header, data, name):
    start, end = header.pop(name)["data_offsets"]
    for info in header.values():
        if "data_offsets" in info and info["data_offsets"][0] >= end:
            info["data_offsets"] = [o - (end - start) for o in info["data_offsets"]]
    return header, data[:start] + data[end:]


def _add(header, data, name):
    header[name] = {"dtype": "F32", "shape": [4], "data_offsets": [len(data), len(data) + 16]}
    return header, data + np.arange(4, dtype=np.float32).tobytes()


def _safetensors_cases(rng: random.Random, raw: bytes) -> list[Case]:
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    size = len(raw)

    def at(kind, edit, expect=ERR):
        def mutate(d, edit=edit):
            edit(d / _ST)

        return Case(kind, "hf", mutate, expect)

    cases = [
        at("empty file", lambda f: f.write_bytes(b"")),
        at("deleted file", lambda f: f.unlink()),
        at("300 random bytes", partial(Path.write_bytes, data=rng.randbytes(300))),
    ]
    for cut in [rng.randrange(1, 8 + n) for _ in range(10)] + [
        rng.randrange(8 + n, size) for _ in range(20)
    ]:
        cases.append(at("truncated", lambda f, c=cut: f.write_bytes(f.read_bytes()[:c])))
    for extra in (1, 8, 4096):
        cases.append(
            at("trailing bytes", lambda f, e=extra: f.write_bytes(f.read_bytes() + b"\0" * e))
        )
    lengths = [size - 7, size, 2**64 - 1, 2**32, *(rng.randrange(size, 2**40) for _ in range(4))]
    lengths += [rng.randrange(0, n) for _ in range(4)] + [n - 8, n + 8]
    for length in lengths:
        cases.append(
            at(
                "header length wrong",
                lambda f, v=length: _set_bytes(f, lambda b: struct.pack("<Q", v) + b[8:]),
            )
        )
    for _ in range(40):
        pos, bit = rng.randrange(8, 8 + n), 1 << rng.randrange(8)
        flipped = bytearray(raw[8 : 8 + n])
        flipped[pos - 8] ^= bit
        same = _entries(bytes(flipped)) == _entries(raw[8 : 8 + n])
        cases.append(
            at(
                "header bit flip",
                lambda f, p=pos, b=bit: _set_bytes(f, lambda r: _xor(r, p, b)),
                OK if same else ERR,
            )
        )
    for _ in range(20):
        pos, bit = rng.randrange(8 + n, size), 1 << rng.randrange(8)
        cases.append(
            at("data bit flip", lambda f, p=pos, b=bit: _set_bytes(f, lambda r: _xor(r, p, b)), OK)
        )
    for bad in (b"\xff", b"\xc3(", b"\xe2\x82", b"\x80", b"\xed\xa0\x80"):
        pos = 8 + rng.randrange(2, n - 4)
        cases.append(
            at(
                "non-UTF-8 header",
                lambda f, p=pos, v=bad: _set_bytes(f, lambda r: r[:p] + v + r[p + len(v) :]),
            )
        )
    for kind, edit in _header_edits(rng, header):
        expect = OK if "ignored" in kind else ERR
        cases.append(at(kind, lambda f, e=edit: _rewrite(f, e), expect))
    return cases


def _garble(rng: random.Random):
    """Replaces a file's bytes with as many random ones (drawn once, so reapplied the same)."""
    seed = rng.random()
    return lambda raw: random.Random(seed).randbytes(len(raw))


def _cut(rng: random.Random):
    """Truncates a file at a random point (drawn once)."""
    fraction = rng.random()
    return lambda raw: raw[: int(len(raw) * fraction)]


def _xor(raw: bytearray, pos: int, bit: int) -> bytearray:
    raw[pos] ^= bit
    return raw


# config.json, .bin and shard indexes -------------------------------------------------------------


def _config_edit(change):
    def mutate(d):
        file = d / "config.json"
        file.write_text(json.dumps(change(json.loads(file.read_text()))))

    return mutate


def _bytes_of(name, make):
    def mutate(d):
        file = d / name
        file.write_bytes(make(file.read_bytes()))

    return mutate


class _RunsCode:
    """A pickle that would create a file if unpickled with code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _other_cases(rng: random.Random, marker: Path) -> list[Case]:
    import torch

    cases = []
    for base in ("hf", "bin", "sharded"):
        for kind, make in (
            ("empty file", lambda b: b""),
            ("truncated", _cut(rng)),
            ("garbled", _garble(rng)),
            ("non-UTF-8", lambda b: b"\xff\xfe" + b),
            ("not an object", lambda b: b"[1, 2]"),
        ):
            cases.append(Case(f"config.json {kind}", base, _bytes_of("config.json", make), ERR))
    for kind, change in (
        ("missing model_type", lambda c: {k: v for k, v in c.items() if k != "model_type"}),
        ("unknown model_type", lambda c: {**c, "model_type": "nosuch"}),
        ("sizes disagree (n_embd)", lambda c: {**c, "n_embd": 48}),
        ("sizes disagree (n_layer)", lambda c: {**c, "n_layer": 3}),
        ("fewer layers than the weights", lambda c: {**c, "n_layer": 1}),
        ("sizes disagree (vocab)", lambda c: {**c, "vocab_size": 100}),
        ("sizes disagree (positions)", lambda c: {**c, "n_positions": 32}),
        ("heads do not divide", lambda c: {**c, "n_head": 5}),
    ):
        cases.append(Case(f"config.json {kind}", "hf", _config_edit(change), ERR))
    cases.append(Case("config.json deleted", "hf", lambda d: (d / "config.json").unlink(), ERR))
    for kind, make in (
        ("empty file", lambda b: b""),
        ("garbled", _garble(rng)),
        ("truncated", lambda b: b[: len(b) // 3]),
        ("truncated", lambda b: b[: len(b) - 100]),
        ("truncated", lambda b: b[:50]),
        ("code-running pickle", lambda b: _pickled(_RunsCode(str(marker)))),
        ("code-running pickle (zip)", lambda b: _torch_saved(torch, _RunsCode(str(marker)))),
        ("not a state dict", lambda b: _torch_saved(torch, [torch.zeros(2)])),
    ):
        cases.append(Case(f".bin {kind}", "bin", _bytes_of(_BIN, make), ERR))
    shard = "model-2.safetensors"
    for kind, mutate in (
        ("index garbled", _bytes_of(_INDEX, _garble(rng))),
        ("index empty", _bytes_of(_INDEX, lambda b: b"")),
        ("index truncated", _bytes_of(_INDEX, lambda b: b[: len(b) // 2])),
        ("index not an object", _bytes_of(_INDEX, lambda b: b"[]")),
        ("index without weight_map", _bytes_of(_INDEX, lambda b: b'{"metadata": {}}')),
        ("index points nowhere", _bytes_of(_INDEX, lambda b: b.replace(b"model-2", b"model-9"))),
        ("index points outside", _bytes_of(_INDEX, lambda b: b.replace(b"model-2", b"../x/m"))),
        ("index lists a tensor its shard lacks", _index_extra),
        ("shard deleted", lambda d: (d / shard).unlink()),
        ("shard truncated", _bytes_of(shard, lambda b: b[: len(b) // 2])),
        ("shard garbled", _bytes_of(shard, _garble(rng))),
    ):
        cases.append(Case(kind, "sharded", mutate, ERR))
    return cases


def _pickled(obj) -> bytes:
    import pickle

    return pickle.dumps(obj)


def _torch_saved(torch, obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _index_extra(d):
    index = json.loads((d / _INDEX).read_text())
    index["weight_map"]["transformer.h.9.ln_1.weight"] = "model-1.safetensors"
    (d / _INDEX).write_text(json.dumps(index))


# Orbax ------------------------------------------------------------------------------------------


def _orbax_verdict(tree_dir: Path, shapes: dict, subtree: str | None) -> str:
    """What Orbax itself makes of a (damaged) PyTree directory: OK only if it restores the
    reference's tree and shapes."""
    import orbax.checkpoint as ocp

    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = ckptr.metadata(tree_dir).item_metadata.tree
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            restored = ckptr.restore(
                tree_dir, args=ocp.args.PyTreeRestore(item=tree, restore_args=args)
            )
    except Exception:  # noqa: BLE001 - any failure of the library is a verdict
        return ERR
    restored = restored[subtree] if subtree else restored
    return OK if _tree_shapes(restored) == shapes else ERR


def _orbax_cases(rng: random.Random, root: Path, shapes: dict) -> list[Case]:
    cases = []
    for base, tree in (("conv", "params"), ("workdir", _STATE)):
        source = root / base / tree
        files = sorted(p.relative_to(root / base) for p in source.rglob("*") if p.is_file())
        mutations = []
        for rel in files:
            for kind, make in (
                ("empty", lambda b: b""),
                ("truncated", _cut(rng)),
                ("garbled", _garble(rng)),
            ):
                mutations.append((f"orbax {kind}", rel, make))
            mutations.append(("orbax deleted", rel, None))
        for rel in rng.choices(files, k=12 if base == "conv" else 6):
            pos, bit = rng.randrange((root / base / rel).stat().st_size), 1 << rng.randrange(8)
            mutations.append(
                ("orbax bit flip", rel, lambda b, p=pos, m=bit: bytes(_xor(bytearray(b), p, m)))
            )
        for kind, rel, make in mutations:
            mutate = _orbax_mutation(rel, make)
            scratch = root / "verdict"
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.copytree(root / base, scratch)
            mutate(scratch)
            subtree = "params" if base == "workdir" else None
            verdict = _orbax_verdict(scratch / tree, shapes, subtree)
            cases.append(Case(kind, base, mutate, verdict))
    for base, file in (
        ("conv", checkpoint.MODEL_CONFIG_FILE),
        ("workdir", "checkpoints/1/config/metadata"),
    ):
        for kind, make in (
            ("empty", lambda b: b""),
            ("truncated", lambda b: b[: len(b) // 2]),
            ("garbled", _garble(rng)),
            ("non-UTF-8", lambda b: b"\xff" + b),
            ("not an object", lambda b: b"[]"),
        ):
            cases.append(Case(f"model config {kind}", base, _bytes_of(file, make), ERR))
    for kind, change in (
        ("unknown field", lambda c: {**c, "nosuch": 1}),
        ("sizes disagree (d_model)", lambda c: {**c, "d_model": 48}),
        ("sizes disagree (num_layers)", lambda c: {**c, "num_layers": 3}),
        ("sizes disagree (vocab)", lambda c: {**c, "vocab_size": 100}),
        ("wrong type", lambda c: {**c, "num_heads": "four"}),
    ):
        cases.append(
            Case(
                f"model config {kind}",
                "conv",
                _json_edit(checkpoint.MODEL_CONFIG_FILE, change),
                ERR,
            )
        )
        cases.append(
            Case(
                f"model config {kind}",
                "workdir",
                _json_edit(
                    "checkpoints/1/config/metadata",
                    lambda c, f=change: {**c, "resolved_model": f(c["resolved_model"])},
                ),
                ERR,
            )
        )
    cases.append(Case("step directory emptied", "workdir", _emptied("checkpoints/1"), ERR))
    cases.append(
        Case("state directory deleted", "workdir", lambda d: shutil.rmtree(d / _STATE), ERR)
    )
    cases.append(Case("params directory emptied", "conv", _emptied("params"), ERR))
    return cases


def _orbax_mutation(rel: Path, make):
    def mutate(d):
        file = d / rel
        if make is None:
            file.unlink()
        else:
            file.write_bytes(make(file.read_bytes()))

    return mutate


def _json_edit(rel, change):
    def mutate(d):
        (d / rel).write_text(json.dumps(change(json.loads((d / rel).read_text()))))

    return mutate


def _emptied(rel):
    def mutate(d):
        shutil.rmtree(d / rel)
        (d / rel).mkdir()

    return mutate


# Running the cases ------------------------------------------------------------------------------


def _read(base: str, directory: Path):
    if base in ("conv", "workdir"):
        return checkpoint.load_params(directory)[1]
    return hf.load_pretrained(directory)[1]


class _Hang(Exception):
    pass


def _outcome(case: Case, directory: Path, shapes: dict) -> str | None:
    """None when the case behaved as expected, else what went wrong."""

    def alarm(*_):
        raise _Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    try:
        params = _read(case.base, directory)
    except UserError as e:
        text = str(e)
        if case.expect == OK:
            return f"refused a valid file: {text}"
        if "\n" in text or not text.strip():
            return f"message is not one line: {text!r}"
        return None
    except _Hang:
        return "hang"
    except Exception as e:  # noqa: BLE001 - every other exception is the bug under test
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if case.expect == ERR:
        return "loaded silently"
    if _tree_shapes(params) != shapes:
        return "loaded a different tree"
    return None


@pytest.fixture(scope="module")
def cases(pristine):
    root, shapes = pristine
    rng = random.Random(SEED)
    marker = root / "pickle-ran-code"
    out = _safetensors_cases(rng, (root / "hf" / _ST).read_bytes())
    out += _other_cases(rng, marker)
    out += _orbax_cases(rng, root, shapes)
    return out


def test_corrupt_files_end_in_one_error_line(pristine, cases, tmp_path):
    root, shapes = pristine
    failures = collections.defaultdict(list)
    counts = collections.Counter()
    for i, case in enumerate(cases):
        directory = tmp_path / f"case{i}"
        shutil.copytree(root / case.base, directory)
        case.mutate(directory)
        counts[(case.kind, case.expect)] += 1
        problem = _outcome(case, directory, shapes)
        if problem:
            failures[case.kind].append(f"#{i}: {problem}")
        shutil.rmtree(directory)
    assert len(cases) >= 200
    assert not (root / "pickle-ran-code").exists(), "a pickle ran code while loading"
    assert sum(1 for c in cases if c.expect == OK) >= 20  # the valid corruptions are exercised
    report = {
        kind: (f"{len(v)} of {sum(n for (k, _), n in counts.items() if k == kind)}", v[0])
        for kind, v in failures.items()
    }
    assert not failures, "\n".join(f"{k}: {n} failed, e.g. {e}" for k, (n, e) in report.items())


def test_a_valid_checkpoint_loads_from_every_format(pristine):
    root, shapes = pristine
    for base in ("hf", "bin", "sharded", "conv", "workdir"):
        assert _tree_shapes(_read(base, root / base)) == shapes, base


# The commands ------------------------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def _command(base: str, source: Path, out: Path):
    """(main, argv) of one command reading `source` and writing `out`."""
    from train import convert, evaluate, predict

    if base in ("hf", "bin", "sharded"):
        return convert.main, ["--from-hf", str(source), "--to", str(out)]
    if base == "conv":
        return convert.main, ["--from", str(source), "--to-hf", str(out)]
    if base == "workdir-evaluate":
        return evaluate.main, ["--workdir", str(source)]
    return predict.main, ["--workdir", str(source), "some text"]


def _pick(cases: list[Case], bases: tuple[str, ...], n: int = 12) -> list[Case]:
    """`n` error cases of these bases, spread over their kinds."""
    chosen = [c for c in cases if c.base in bases and c.expect == ERR]
    by_kind = {c.kind: c for c in chosen}  # one of each kind first
    spread = list(by_kind.values()) + [c for c in chosen if c not in by_kind.values()]
    return spread[:n]


@pytest.mark.parametrize(
    "bases, command",
    [
        (("hf", "bin", "sharded"), "hf"),
        (("conv",), "conv"),
        (("workdir",), "workdir-evaluate"),
        (("workdir",), "workdir-predict"),
    ],
)
def test_commands_print_one_line_and_leave_nothing_behind(
    pristine, cases, tmp_path, capsys, bases, command
):
    root, _ = pristine
    problems = []
    for i, case in enumerate(_pick(cases, bases)):
        source, out = tmp_path / f"source{i}", tmp_path / f"out{i}"
        shutil.copytree(root / case.base, source)
        case.mutate(source)
        before = _snapshot(source)
        main, argv = _command(command, source, out)
        code = main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        if code != 2 or not lines or not lines[-1].startswith("error: ") or "Traceback" in err:
            problems.append(f"{case.kind}: exit {code}, stderr {err[-300:]!r}")
        if out.exists() or _snapshot(source) != before:
            problems.append(f"{case.kind}: left {out} behind or changed the source")
    assert not problems, "\n".join(problems)


def test_an_existing_output_directory_is_left_untouched(pristine, tmp_path, capsys):
    from train import convert

    root, _ = pristine
    source, out = tmp_path / "source", tmp_path / "out"
    shutil.copytree(root / "hf", source)
    (source / _ST).write_bytes(random.Random(SEED).randbytes(300))  # the reported file
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert convert.main(["--from-hf", str(source), "--to", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(source / _ST) in last, last
    assert _snapshot(out) == {"keep.txt": b"mine"}


RESUME_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "resume_v1"


def _train(*args: str) -> subprocess.CompletedProcess:
    """`python -m train ARGS` in a process of its own (its absl flags stay out of this one)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), TRIPTYCH_TCMALLOC="0")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    command = [sys.executable, "-m", "train", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("damage", ["manifest", "metadata"])
def test_resuming_from_a_damaged_checkpoint_is_one_line_and_keeps_it(tmp_path, damage):
    """`python -m train --workdir` of a run whose latest checkpoint is damaged: one error line
    naming the step, exit 2, and the checkpoint's files left as they were."""
    workdir = tmp_path / "run"
    shutil.copytree(RESUME_FIXTURE, workdir)
    step = workdir / "checkpoints" / "4"
    broken = (
        step / "state" / "manifest.ocdbt" if damage == "manifest" else step / "config" / "metadata"
    )
    broken.write_bytes(broken.read_bytes()[:40])
    before = _snapshot(workdir / "checkpoints")
    flags = json.loads((RESUME_FIXTURE / "expected_losses.json").read_text())["flags"]
    result = _train(*flags, "--workdir", str(workdir))
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert err[-1].startswith("error: ") and str(step) in err[-1], err[-3:]
    assert _snapshot(workdir / "checkpoints") == before


def test_init_from_a_damaged_checkpoint_is_one_line(pristine, cases, tmp_path):
    """`python -m train --config.init_from=DIR` with DIR damaged: one error line naming it, and
    the run's new workdir is gone again."""
    root, _ = pristine
    flags = json.loads((RESUME_FIXTURE / "expected_losses.json").read_text())["flags"]
    for i, case in enumerate(_pick(cases, ("hf", "conv"), n=2)):
        source = tmp_path / f"source{i}"
        shutil.copytree(root / case.base, source)
        case.mutate(source)
        before = _snapshot(source)
        run = tmp_path / f"run{i}"
        result = _train(*flags, "--workdir", str(run), f"--config.init_from={source}")
        err = result.stderr.strip().splitlines()
        assert result.returncode == 2, (case.kind, err[-3:])
        assert err[-1].startswith("error: ") and str(source) in err[-1], (case.kind, err[-3:])
        assert _snapshot(source) == before
        assert not (tmp_path / f"run{i}").exists()  # the new workdir is removed again
