"""A probe of bad and edge inputs across five groups (issue 24): ops, data, config, training faults, command line.

Every case says what a careful tool must do — refuse with one clear error, or give the right result — and is
classified as:

- ``ok``: it did;
- ``crash``: the process died of a signal (run in a forked child: ops cases);
- ``traceback``: an exception escaped that is not a user error (the CLI printed a traceback; an API raised
  something other than the documented error);
- ``wrong``: a silently wrong result — a mistake accepted (exit 0, no error), a valid input refused, a result that
  differs from the reference, or an error that hides what is wrong (e.g. names no file);
- ``rule``: the mistake was refused, but not as one line with exit code 1 (argparse's usage block, exit 2).

Run it against any checkout (it uses only interfaces that existed before issue 24's fixes, so the same cases
measure before and after)::

    PYTHONPATH=. python tests/support/probe.py [--groups cli,data,config,training,ops] [--json out.json] [-v]

``tests/test_probe.py`` runs every group and requires every case to be ``ok`` (the ops group, owned by the
kernels' work, checks masked attention's mask safety and every op's NaN/Inf policy against its reference).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

STATUSES = ("ok", "crash", "traceback", "wrong", "rule")


@dataclass
class Case:
    group: str
    name: str
    run: Callable[["Env"], tuple[str, str]]  # -> (status, detail)


@dataclass
class Env:
    root: Path
    data: Path = None  # tiny Co-AVS set (4 classes)
    config: Path = None  # tiny.yaml (3 steps)
    run: Path = None  # a finished 3-step run
    clip: Path = None  # one clip folder (frames/, audio.wav)
    other_classes: Path = None  # a set with 3 classes
    renamed_classes: Path = None  # a set with the same number of classes, another name
    counter: list = field(default_factory=lambda: [0])

    def fresh(self, name: str) -> Path:
        self.counter[0] += 1
        return self.root / "work" / f"{name}-{self.counter[0]}"

    def run_copy(self) -> Path:
        target = self.fresh("run")
        shutil.copytree(self.run, target)
        (target / ".lock").unlink(missing_ok=True)
        return target


# ------------------------------------------------------------------------------------------------ outcomes
def _cli(argv, expect_error: bool = True, check: Callable[[int, str, str], str | None] | None = None,
         patches: Callable[[], contextlib.AbstractContextManager] | None = None) -> tuple[str, str]:
    """Runs ``coavs ARGV`` in this process. A mistake must be one ``coavs ...: error:`` line and exit 1; a valid
    command exit 0; ``check(code, out, err)`` returns what is wrong, or None."""
    from coavs.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), (patches() if patches else
                                                                                 contextlib.nullcontext()):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # escaped main: a traceback for the user
        return "traceback", f"{type(exc).__name__}: {str(exc)[:160]}"
    text = err.getvalue().strip()
    if "Traceback" in text:
        return "traceback", text.splitlines()[-1][:160]
    problem = check(code, out.getvalue(), text) if check else None
    if problem:
        return "wrong", problem
    if not expect_error:
        return ("ok", "") if code == 0 else ("wrong", f"exit {code}: {text[-160:]}")
    if code == 0:
        return "wrong", "accepted (exit 0)"
    last = text.splitlines()[-1] if text else ""
    if code != 1 or "usage:" in text or not (last.startswith("coavs") and ": error: " in last):
        return "rule", f"exit {code}: {last[:140]}"
    return "ok", last[:160]


def _api(call: Callable[[], object], errors: tuple[type, ...] = (), check: Callable[[object], str | None] = None
         ) -> tuple[str, str]:
    """Runs ``call``. ``errors``: the documented refusals (then any of them is ok, and success is wrong);
    ``check(result)``: what is wrong with a result, or None."""
    try:
        result = call()
    except errors as exc:
        return ("ok", f"{type(exc).__name__}: {str(exc)[:140]}") if errors else ("traceback", str(exc))
    except Exception as exc:
        kind = "wrong" if errors == () else "traceback"
        return kind, f"{type(exc).__name__}: {str(exc)[:160]}"
    if errors:
        return "wrong", f"accepted: {str(result)[:120]}"
    problem = check(result) if check else None
    return ("wrong", problem) if problem else ("ok", "")


def _user_error() -> type:
    from coavs.errors import UserError

    return UserError


# ------------------------------------------------------------------------------------------------ set-up
TINY_MODEL = {"preset": "small", "hidden_dim": 32, "num_layers": 2, "ffn_dim": 64, "num_heads": 4,
              "backbone_widths": [8, 8, 16, 16], "audio_channels": [4, 8], "num_clusters": 2}


def tiny_config(data: Path, cache: Path) -> dict:
    return {"data": {"root": str(data), "audio": "logmel", "batch_size": 2, "num_workers": 0, "cache_dir": str(cache)},
            "model": dict(TINY_MODEL), "loss": {"num_points": 64}, "optim": {"lr": 1e-3, "warmup_steps": 2},
            "debias": {"strategy": "none"}, "stages": [{"epochs": 1}], "eval": {"split": ""},
            "run": {"device": "cpu", "progress": False, "log_every": 1, "threads": 1, "max_steps": 3}}


def make_env(root: Path) -> Env:
    from coavs.cli import main
    from coavs.data.synth import SynthConfig, generate

    env = Env(root=root)
    small = dict(num_clips=16, frames_per_clip=2, image_size=32, silent_prob=0.2, eval_silent_prob=0.5,
                 split_fractions=(0.5, 0.25, 0.25), seed=11)
    env.data = root / "tiny"
    generate(env.data, SynthConfig(classes=("violin", "dog", "car", "bird"), **small))
    env.other_classes = root / "three"
    generate(env.other_classes, SynthConfig(classes=("violin", "dog", "car"), **small))
    env.renamed_classes = root / "renamed"
    generate(env.renamed_classes, SynthConfig(classes=("violin", "dog", "car", "siren"), **small))
    env.config = root / "tiny.yaml"
    env.config.write_text(yaml.safe_dump(tiny_config(env.data, root / "cache")))
    env.run = root / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(env.config), "--out", str(env.run)]) == 0
    env.clip = next(p for p in sorted((env.data / "synth").iterdir()) if (p / "audio.wav").is_file())
    (root / "work").mkdir()
    return env


# ------------------------------------------------------------------------------------------------ CLI group
COUNTS = {"max_clips", "limit", "batch_size", "workers", "steps", "seeds", "clusters", "iters", "max_steps",
          "examples", "max_markers", "clips", "frames", "size", "sample_rate"}
NON_NEGATIVE = {"seed", "max_problems", "alpha"}
FRACTIONS = {"silent_prob": (0, 1), "eval_silent_prob": (0, 1), "keep": (0, 1), "min_instance_fraction": (0, 1)}


def base_argv(env: Env, words: tuple[str, ...]) -> list | None:
    """A command line that runs (quickly) as given; the cases add one bad argument to it."""
    command = " ".join(words)
    table = {
        "info": ["info"],
        "fit-markers": ["fit-markers", "--data", env.data, "--clusters", "2", "--out", env.fresh("m") / "m.pt",
                        "--quiet"],
        "synth": ["synth", env.fresh("synth"), "--clips", "4", "--size", "16", "--frames", "1", "--quiet"],
        "verify": ["verify", env.data, "--quiet"],
        "train": ["train", env.config, "--out", env.fresh("train"), "--no-progress"],
        "eval": ["eval", env.run, "--split", "val", "--quiet", "--no-bias", "--device", "cpu"],
        "gate": ["gate", env.run_copy(), "--split", "val", "--device", "cpu"],
        "predict": ["predict", env.run, "--frames", env.clip / "frames", "--audio", env.clip / "audio.wav", "--out",
                    env.fresh("pred"), "--device", "cpu"],
        "bench": ["bench", "--list"],
        "demo": ["demo", "--quick", "--out", env.fresh("demo")],
        "ablate": ["ablate", "--data", env.data, "--out", env.fresh("ablate"), "--variants", "vanilla", "--steps", "1",
                   "--quiet", "--device", "cpu"],
    }
    if words[0] == "analyze":
        return ["analyze", words[1], env.run, "--split", "val", "--quiet", "--out", env.fresh("analysis"),
                "--device", "cpu"]
    return table.get(command) or _placeholder_argv(words)


def _placeholder_argv(words: tuple[str, ...]) -> list:
    """A command this probe has no working command line for (added later): its required arguments get
    placeholders (a missing path, or 1), so only the argument checks are probed."""
    from coavs.cli import build_parser

    parser = dict(_walk(build_parser()))[words]
    argv = list(words)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
            continue
        if not action.option_strings and action.nargs not in ("?", "*"):
            argv.append("/nonexistent/probe-placeholder")
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], "1" if action.type in (int, float) else "/nonexistent/probe-placeholder"]
    return argv


def _walk(parser, prefix=()):
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, parser
        return
    for name, sub in subparsers[0].choices.items():
        yield from _walk(sub, prefix + (name,))


def cli_cases() -> list[Case]:
    from coavs.cli import build_parser

    cases = []
    for words, parser in _walk(build_parser()):
        command = " ".join(words)
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            option, dest = action.option_strings[0], action.dest
            bad: list[str] = []
            if action.type is float:
                bad += ["nan", "inf", "-inf"]
            if action.type in (int, float) and dest in COUNTS:
                bad += ["-1", "0"]
            elif action.type in (int, float) and dest in NON_NEGATIVE:
                bad += ["-1"]
            elif action.type is float and dest in FRACTIONS:
                bad += ["-0.5", "1.5"]
            if action.type in (int, float):
                bad += ["many"]
            if action.choices:
                bad += ["no-such-choice"]
            if dest == "device":
                bad += ["tpu", "cuda:x", ""]
            for value in bad:
                cases.append(Case("cli", f"{command} {option}={value}",
                                  lambda env, w=words, o=option, v=value: _cli(base_argv(env, w) + [f"{o}={v}"])))
        cases.append(Case("cli", f"{command} --no-such-option",
                          lambda env, w=words: _cli(base_argv(env, w) + ["--no-such-option"])))
        required = [a for a in parser._actions if (a.required or not a.option_strings) and a.dest != "help"
                    and not isinstance(a, argparse._SubParsersAction) and a.nargs not in ("?", "*")]
        if required:
            cases.append(Case("cli", f"{command} (required arguments missing)", lambda env, w=words: _cli(list(w))))
    cases += specific_cli_cases()
    return cases


def _json_is_strict(code, out, err):
    def refuse(token):
        raise ValueError(token)
    try:
        json.loads(out, parse_constant=refuse)
    except ValueError as exc:
        return f"stdout is not strict JSON ({exc})"
    return None


def _corrupt_last_clip(env: Env) -> Path:
    """A copy of the tiny set whose last listed clip has a damaged frame."""
    target = env.fresh("corrupt")
    shutil.copytree(env.data, target)
    with open(target / "metadata.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    frame = next((target / last["label"] / last["uid"] / "frames").iterdir())
    frame.write_bytes(b"not an image")
    return target


def specific_cli_cases() -> list[Case]:
    cases = [
        Case("cli", "eval --max-clips 0 --json (NaN metrics)",
             lambda env: _cli(["eval", env.run, "--split", "val", "--quiet", "--max-clips", "0", "--json"])),
        Case("cli", "eval --max-clips -1 (drops the last clip)",
             lambda env: _cli(["eval", env.run, "--split", "val", "--quiet", "--max-clips", "-1", "--no-bias"])),
        Case("cli", "gate --max-clips -1 (moves tau)",
             lambda env: _cli(["gate", env.run_copy(), "--max-clips", "-1", "--device", "cpu"])),
        Case("cli", "verify --limit -1 on a set with a damaged last clip",
             lambda env: _cli(["verify", _corrupt_last_clip(env), "--limit", "-1", "--quiet"])),
        Case("cli", "verify --limit 0",
             lambda env: _cli(["verify", env.data, "--limit", "0", "--quiet"])),
        Case("cli", "eval --alpha -1", lambda env: _cli(["eval", env.run, "--split", "val", "--quiet", "--alpha", "-1",
                                                         "--modes", "debias", "--no-bias"])),
        Case("cli", "eval --alpha nan", lambda env: _cli(["eval", env.run, "--split", "val", "--quiet", "--alpha",
                                                          "nan", "--modes", "debias", "--no-bias"])),
        Case("cli", "eval --data (3 classes)", lambda env: _cli(["eval", env.run, "--data", env.other_classes,
                                                                 "--split", "val", "--quiet", "--no-bias"])),
        Case("cli", "eval --data (another class name)",
             lambda env: _cli(["eval", env.run, "--data", env.renamed_classes, "--split", "val", "--quiet",
                               "--no-bias"])),
        Case("cli", "predict --vggish on a log-mel model", _predict_vggish_on_logmel),
        Case("cli", "bench --out FILE", _bench_out_file),
        Case("cli", "bench --out below a file", _bench_out_below_file),
        Case("cli", "gate RUN --split test", lambda env: _cli(["gate", env.run, "--split", "test"])),
        Case("cli", "eval --out strict JSON", _eval_out_strict),
        Case("cli", "eval --json strict", lambda env: _cli(["eval", env.run, "--split", "val", "--quiet", "--json"],
                                                           expect_error=False, check=_json_is_strict)),
        Case("cli", "synth folder permissions", _synth_permissions),
        Case("cli", "train run.compile=maybe", lambda env: _cli(["train", env.config, "--out", env.fresh("t"),
                                                                 "--set", "run.compile=maybe"])),
        Case("cli", "train --set optim.lr=1e-4 (a valid float)",
             lambda env: _cli(["train", env.config, "--out", env.fresh("t"), "--set", "optim.lr=1e-4"],
                              expect_error=False)),
        Case("cli", "train --set loss.class_weight=-1",
             lambda env: _cli(["train", env.config, "--out", env.fresh("t"), "--set", "loss.class_weight=-1"])),
        Case("cli", "train --set eval.max_clips=0",
             lambda env: _cli(["train", env.config, "--out", env.fresh("t"), "--set", "eval.max_clips=0",
                               "--set", "eval.split=val"])),
        Case("cli", "demo --seeds 2 --help (documented option)", _demo_has_seeds),
    ]
    return cases


def _predict_vggish_on_logmel(env):
    features = env.fresh("vgg")
    features.mkdir()
    np.save(features / "c.npy", np.zeros((2, 128), np.float32))
    status, detail = _cli(["predict", env.run, "--frames", env.clip / "frames", "--vggish", features / "c.npy",
                           "--out", env.fresh("pred"), "--device", "cpu"])
    if status == "ok" and "vggish" not in detail.lower():
        return "wrong", f"hides the mismatch: {detail}"
    return status, detail


def _bench_out_file(env):
    target = env.fresh("benchfile")
    target.write_text("x")
    return _cli(["bench", "assign", "--quick", "--out", target])


def _bench_out_below_file(env):
    target = env.fresh("benchfile")
    target.write_text("x")
    return _cli(["bench", "assign", "--quick", "--out", target / "sub"])


def _eval_out_strict(env):
    out = env.fresh("rows")

    def check(code, stdout, err):
        def refuse(token):
            raise ValueError(token)
        try:
            json.loads(out.read_text(), parse_constant=refuse)
        except (ValueError, OSError) as exc:
            return f"--out is not strict JSON ({exc})"
        return None
    return _cli(["eval", env.run, "--split", "val", "--quiet", "--out", out], expect_error=False, check=check)


def _synth_permissions(env):
    target = env.fresh("perm")
    previous = os.umask(0o022)
    try:
        status, detail = _cli(["synth", target, "--clips", "3", "--size", "16", "--frames", "1", "--quiet"],
                              expect_error=False)
    finally:
        os.umask(previous)
    mode = os.stat(target).st_mode & 0o777 if target.exists() else None
    if status == "ok" and mode != 0o755:
        return "wrong", f"folder mode {oct(mode)} under umask 022"
    return status, detail


def _demo_has_seeds(env):
    from coavs.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["demo"]
    options = {o for a in sub._actions for o in a.option_strings}
    return ("ok", "") if "--seeds" in options else ("wrong", "coavs demo has no --seeds (python -m coavs.demo has)")


# ------------------------------------------------------------------------------------------------ data group
def data_cases() -> list[Case]:
    from coavs.data.errors import DataError

    cases = []
    for kind in ("avss", "s4", "ms3"):
        for split in ("training", "Train", "", "tests", "all", "validation"):
            cases.append(Case("data", f"open_dataset({kind}, {split!r})",
                              lambda env, k=kind, s=split: _api(lambda: _open(env, k, s), (ValueError,))))
        for where in ("another split", "the same split"):
            cases.append(Case("data", f"{kind}: a clip listed twice ({where})",
                              lambda env, k=kind, w=where: _api(lambda: _duplicate(env, k, w), (DataError,))))
    for value in ("nan", "inf", "-inf"):
        cases.append(Case("data", f"VGGish .npy holding {value}",
                          lambda env, v=value: _api(lambda: _vggish(env, np.full((2, 128), float(v), np.float32)),
                                                    (DataError,))))
    for name, array in (("no rows", np.zeros((0, 128), np.float32)), ("64 columns", np.zeros((2, 64), np.float32)),
                        ("strings", np.array(["a"] * 128)), ("1-D", np.zeros(128, np.float32))):
        cases.append(Case("data", f"VGGish .npy with {name}",
                          lambda env, a=array: _api(lambda: _vggish(env, a), (DataError,))))
    cases.append(Case("data", "VGGish .npy [T,1,128] (AVSBench's own layout, valid)",
                      lambda env: _api(lambda: _vggish(env, np.zeros((2, 1, 128), np.float32)),
                                       check=lambda r: None if tuple(r.shape[1:]) == (128,) else f"shape {r.shape}")))
    for damage in ("missing frame", "truncated wav", "corrupt mask", "NaN wav"):
        cases.append(Case("data", f"{damage}", lambda env, d=damage: _api(lambda: _damaged(env, d), (DataError,))))
    cases.append(Case("data", "decode cache disk full names the file", _cache_full))
    for limit in (-1, 0):
        cases.append(Case("data", f"verify_dataset(limit={limit})",
                          lambda env, n=limit: _api(lambda: _verify(env, n), (ValueError, _user_error()))))
    for umask in (0o022, 0o077, 0o002):
        cases.append(Case("data", f"synth under umask {oct(umask)}", lambda env, u=umask: _synth_mode(env, u)))
    return cases


def _layout(env: Env, kind: str) -> Path:
    from tests.support.datasets import make_ms3, make_s4

    if kind == "avss":
        target = env.fresh("avss")
        shutil.copytree(env.data, target)
        return target
    return (make_s4 if kind == "s4" else make_ms3)(env.fresh(kind))


def _open(env, kind, split):
    from coavs.data import open_dataset

    return len(open_dataset(_layout(env, kind), split))


def _duplicate(env, kind, where):
    from coavs.data import open_dataset

    root = _layout(env, kind)
    meta = root / {"avss": "metadata.csv", "s4": "s4_meta_data.csv", "ms3": "ms3_meta_data.csv"}[kind]
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    first = dict(rows[0])
    first["split"] = first["split"] if where == "the same split" else ("test" if first["split"] != "test" else "val")
    with open(meta, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [first])
    return [len(open_dataset(root, split)) for split in ("train", "val", "test")]


def _vggish(env, array):
    from coavs.data import open_dataset

    folder = env.fresh("vggish")
    folder.mkdir()
    data = open_dataset(env.data, "train", audio="vggish", vggish_dir=folder)
    for uid in data.uids:
        np.save(folder / f"{uid}.npy", np.zeros((2, 128), np.float32))
    np.save(folder / f"{data.uids[0]}.npy", array)
    return data[0]["audio"]


def _damaged(env, damage):
    from coavs.data import open_dataset

    root = _layout(env, "avss")
    data = open_dataset(root, "train")
    record = data.records[0]
    if damage == "missing frame":
        record.frame_paths[0].unlink()
    elif damage == "truncated wav":
        record.audio_path.write_bytes(record.audio_path.read_bytes()[:30])
    elif damage == "corrupt mask":
        next(p for p in record.mask_paths if p is not None).write_bytes(b"junk")
    else:
        from scipy.io import wavfile
        wavfile.write(record.audio_path, 16000, np.full(32000, np.nan, np.float32))
    return open_dataset(root, "train")[0]


def _cache_full(env):
    from coavs.data.cache import ClipCache

    cache = ClipCache(env.fresh("cache"), {"kind": "probe"})
    real = np.save

    def full(file, array, allow_pickle=False):
        file.write(b"\x93NUMPY partial")
        raise OSError("18432 requested and 8160 written")

    np.save = full
    try:
        cache.put("clip", "sig", "frames", np.zeros(10))
    except Exception as exc:
        text = str(exc)
        if str(cache.root) in text:
            return "ok", text[:140]
        return "wrong", f"names no file: {text[:120]}"
    finally:
        np.save = real
    return "wrong", "no error"


def _verify(env, limit):
    from coavs.data.verify import verify_dataset

    return verify_dataset(env.data, deep=False, limit=limit).ok


def _synth_mode(env, umask):
    from coavs.data.synth import SynthConfig, generate

    target = env.fresh("modes")
    previous = os.umask(umask)
    try:
        generate(target, SynthConfig(num_clips=3, frames_per_clip=1, image_size=16))
    finally:
        os.umask(previous)
    mode = os.stat(target).st_mode & 0o777
    return ("ok", "") if mode == 0o777 & ~umask else ("wrong", f"mode {oct(mode)} under umask {oct(umask)}")


# ------------------------------------------------------------------------------------------------ config group
# (override, expected): False = must be refused with a ConfigError; otherwise the value the config must hold.
CONFIG_VALUES = [
    *[(f"loss.{k}={v}", False) for k in ("class_weight", "mask_weight", "dice_weight", "no_object_weight",
                                          "audio_class_weight") for v in ("-1", ".nan", ".inf")],
    *[(f"loss.num_points={v}", False) for v in ("0", "-5")],
    *[(f"eval.max_clips={v}", False) for v in ("0", "-1")],
    ("eval.batch_size=0", False), ("eval.every=-1", False),
    *[(f"gate.max_clips={v}", False) for v in ("0", "-1")], ("gate.keep=0", False), ("gate.threshold=2", False),
    ("run.seed=-1", False), ("run.max_steps=0", False), ("run.log_every=0", False), ("run.checkpoint_every=-1", False),
    ("run.threads=0", False), ("run.compile=maybe", False), ("run.compile=1", False), ("run.device=tpu", False),
    ("run.precision=fp8", False),
    *[(f"optim.lr={v}", False) for v in ("0", "-1e-4", ".nan", "'fast'")],
    ("optim.debias_lr_scale=0", False), ("optim.weight_decay=-0.1", False), ("optim.betas=[0.9, 1.0]", False),
    ("optim.betas=[0.9]", False), ("optim.warmup_steps=-1", False), ("optim.grad_clip=-1", False),
    ("optim.backbone_lr_scale=-1", False), ("optim.schedule=step", False),
    ("stages=[{epochs: 0}]", False), ("stages=[]", False), ("stages=[{epochs: 1, lr_scale: -1}]", False),
    ("data.batch_size=0", False), ("data.frames_per_clip=-1", False), ("data.num_workers=-1", False),
    ("data.image_size=0", False), ("data.num_frames=0", False), ("data.batch_size=2.5", False),
    ("data.batch_size=true", False), ("data.split=training", False), ("data.audio=mp3", False),
    ("negatives.ratio=-1", False), ("negatives.ratio=.nan", False), ("debias.alpha=-1", False),
    ("debias.weight=-1", False), ("debias.strategy=maybe", False), ("model.dropout=1.5", False),
    ("model.marker_threshold=2", False), ("model.hidden_dim=0", False), ("data.nonsense=1", False),
    *[(f"optim.lr={v}", float(v)) for v in ("1e-4", "5E-3", "1.5e-3", "0.001", "2e-2")],
    ("optim.weight_decay=1e-2", 0.01), ("loss.class_weight=0", 0.0), ("eval.max_clips=1", 1),
    ("run.compile=aot_eager", "aot_eager"), ("run.seed=0", 0),
]


def config_cases() -> list[Case]:
    cases = [Case("config", f"--set {o}", lambda env, o=o, e=e: _config(o, e)) for o, e in CONFIG_VALUES]
    for name, text, ok in (
            ("yaml lr: 1e-4", "optim:\n  lr: 1e-4\n", 1e-4),
            ("yaml lr: 5E-3", "optim:\n  lr: 5E-3\n", 5e-3),
            ("yaml key twice", "optim:\n  lr: 0.1\n  lr: 0.2\n", False),
            ("yaml section twice", "optim:\n  lr: 0.1\noptim:\n  lr: 0.2\n", False),
            ("yaml flow key twice", "optim: {lr: 0.1, lr: 0.2}\n", False),
            ("yaml list item key twice", "stages:\n  - epochs: 1\n    epochs: 2\n", False),
            ("yaml tabs", "optim:\n\tlr: 0.1\n", False),
            ("yaml top-level list", "- 1\n- 2\n", False)):
        cases.append(Case("config", name, lambda env, t=text, ok=ok, n=name: _config_file(env, t, ".yaml", ok)))
    for name, text, ok in (("json key twice", '{"optim": {"lr": 0.1, "lr": 0.2}}', False),
                           ("json NaN", '{"optim": {"lr": NaN}}', False),
                           ("json valid", '{"optim": {"lr": 1e-4}}', 1e-4)):
        cases.append(Case("config", name, lambda env, t=text, ok=ok: _config_file(env, t, ".json", ok)))
    return cases


def _config(override: str, expected):
    """``expected``: False for a value that must be refused, else the value the config must hold."""
    from coavs.training.config import TrainConfig

    if expected is False:
        return _api(lambda: TrainConfig.from_dict({}, [override]), (_user_error(),))
    section, name = override.partition("=")[0].split(".")

    def check(config):
        value = getattr(getattr(config, section), name)
        return None if value == expected else f"{section}.{name} = {value!r}, expected {expected!r}"
    return _api(lambda: TrainConfig.from_dict({}, [override]), check=check)


def _config_file(env, text, suffix, lr):
    """``lr``: False for a file that must be refused, else the optim.lr it must give."""
    from coavs.training.config import TrainConfig

    path = env.fresh("config").with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if lr is False:
        return _api(lambda: TrainConfig.from_file(path), (_user_error(),))
    return _api(lambda: TrainConfig.from_file(path),
                check=lambda c: None if c.optim.lr == lr else f"optim.lr = {c.optim.lr!r}, expected {lr}")


# ------------------------------------------------------------------------------------------------ training faults
def training_cases() -> list[Case]:
    cases = [
        Case("training", "resume with a checkpoint of another seed", lambda env: _copied_checkpoint(env, seed=1)),
        Case("training", "resume with a checkpoint of the same config, other folder",
             lambda env: _copied_checkpoint(env, seed=0)),
        Case("training", "disk full while writing a checkpoint", lambda env: _checkpoint_full(env, short=False)),
        Case("training", "short write while writing a checkpoint", lambda env: _checkpoint_full(env, short=True)),
        Case("training", "decode-cache disk full during training", _training_cache_full),
        Case("training", "resume without config.json", _resume_without_config),
        Case("training", "resume with a damaged config.json", _resume_bad_config),
        Case("training", "train into a folder that holds a run", lambda env: _cli(["train", env.config, "--out",
                                                                                   env.run_copy()])),
        Case("training", "resume an empty folder", lambda env: _cli(["train", "--resume", "--out", env.fresh("e")])),
    ]
    for damage in ("truncated", "empty", "random", "malicious"):
        cases.append(Case("training", f"resume from a {damage} checkpoint", lambda env, d=damage: _bad_resume(env, d)))
        cases.append(Case("training", f"eval of a {damage} checkpoint", lambda env, d=damage: _bad_eval(env, d)))
    return cases


def _stopped_run(env, seed: int) -> Path:
    from coavs.cli import main

    target = env.fresh(f"stopped{seed}")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(env.config), "--out", str(target), "--max-steps", "1", "--set",
                     f"run.seed={seed}"]) == 0
    return target


def _copied_checkpoint(env, seed):
    run, donor = _stopped_run(env, 0), _stopped_run(env, seed)
    shutil.copy(donor / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    return _cli(["train", "--resume", "--out", run])


class _Disk:
    """A file that takes ``room`` bytes, then fails (ENOSPC) or writes short."""

    def __init__(self, path, mode, room, short):
        self.file, self.room, self.short = open(path, mode), room, short  # noqa: SIM115

    def write(self, data):
        data = bytes(data)
        self.file.write(data[:self.room])
        if len(data) > self.room:
            written, self.room = self.room, 0
            if self.short:
                return written
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def _checkpoint_full(env, short):
    from coavs.training import checkpoint as ckpt

    run = _stopped_run(env, 0)
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()

    @contextlib.contextmanager
    def full_disk():
        ckpt.open = lambda path, mode="r", *a, **k: _Disk(path, mode, 4096, short)
        try:
            yield
        finally:
            del ckpt.open

    status, detail = _cli(["train", "--resume", "--out", run], patches=full_disk)
    if last.read_bytes() != before:
        try:
            ckpt.load(last)
            survived = "replaced by another checkpoint"
        except Exception:
            survived = "replaced by a damaged file"
        return ("wrong" if status in ("ok", "wrong") else status), f"the previous checkpoint was {survived}; {detail}"
    return status, detail


def _training_cache_full(env):
    config = yaml.safe_load(env.config.read_text())
    config["data"]["cache_dir"] = str(env.fresh("cache"))
    path = env.fresh("cfg").with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    real = np.save

    @contextlib.contextmanager
    def full():
        def failing(file, array, allow_pickle=False):
            file.write(b"\x93NUMPY")
            raise OSError("18432 requested and 8160 written")
        np.save = failing
        try:
            yield
        finally:
            np.save = real

    status, detail = _cli(["train", path, "--out", env.fresh("t")], patches=full)
    if status == "ok" and "cache" not in detail:
        return "wrong", f"names no cache path: {detail}"
    return status, detail


def _resume_without_config(env):
    run = _stopped_run(env, 0)
    (run / "config.json").unlink()
    return _cli(["train", "--resume", "--out", run])


def _resume_bad_config(env):
    run = _stopped_run(env, 0)
    (run / "config.json").write_text("{not json")
    return _cli(["train", "--resume", "--out", run])


def _bad_resume(env, damage):
    from tests.support.cli import bad_checkpoint

    run = env.run_copy()
    good = env.fresh("good.pt")
    shutil.copy(run / "checkpoints" / "last.pt", good)
    bad_checkpoint(damage, run / "checkpoints" / "last.pt", good)
    return _cli(["train", "--resume", "--out", run])


def _bad_eval(env, damage):
    from tests.support.cli import bad_checkpoint

    path = bad_checkpoint(damage, env.fresh("bad") / "model.pt", env.run / "checkpoints" / "last.pt")
    return _cli(["eval", path, "--split", "val", "--quiet"])


# ------------------------------------------------------------------------------------------------ ops group
def _same(a, b, rtol=1e-4, atol=1e-5) -> str | None:
    """None when ``a`` and ``b`` agree: same NaN and ±Inf positions, close finite values."""
    if a is None or b is None:
        return None if a is None and b is None else "one gradient is None"
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return f"NaN at different places ({int(torch.isnan(a).sum())} vs {int(torch.isnan(b).sum())})"
    if not torch.equal(torch.isinf(a) & (a > 0), torch.isinf(b) & (b > 0)) or \
            not torch.equal(torch.isinf(a) & (a < 0), torch.isinf(b) & (b < 0)):
        return "Inf at different places"
    finite = torch.isfinite(a)
    if finite.any() and not torch.allclose(a[finite], b[finite], rtol=rtol, atol=atol):
        return f"differ by up to {float((a[finite] - b[finite]).abs().max()):.3g}"
    return None


def _attention_case(kind: str):
    """Native masked attention on a hostile input against the policy reference (the ``reference`` backend: the
    non-finite policy of ``coavs.ops.reference.masked_attention_forward``/``_backward``) on the clean mask that
    the input's bits describe. A hand-built mask's bits past N are ignored and its occupancy is not read (a
    check of bit values would be a host read per call), so such a mask must give the clean mask's result."""
    def run():
        import importlib

        from coavs.ops import use_backend

        mca = importlib.import_module("coavs.ops.masked_cross_attention")  # the module, not the function

        g = torch.Generator().manual_seed(0)
        b, h, q, n, d = 1, 2, 4, 40, 8
        tensors = [torch.randn(b, h, q, d, generator=g), torch.randn(b, h, n, d, generator=g),
                   torch.randn(b, h, n, d, generator=g)]
        visible = torch.rand(b, q, n, generator=g) > 0.3
        mask = mca.pack_visibility(visible)
        if kind == "NaN in q":
            tensors[0][0, 0, 1, 2] = math.nan
        elif kind == "Inf in k":
            tensors[1][0, 1, 3, 0] = math.inf
        elif kind == "1e30 inputs":
            tensors[0] = tensors[0] * 1e30
        elif kind == "bits set for keys >= N":
            bits = mask.bits.clone()
            bits[..., -1] |= torch.tensor(-(1 << 31), dtype=torch.int32)  # key 63 of a 40-key mask
            mask = mca.AttentionMask(bits, torch.ones_like(mask.occupancy), n)
        elif kind == "~bits":
            mask = mca.AttentionMask(~mask.bits, torch.ones_like(mask.occupancy), n)
            visible = ~visible
        elif kind == "zeroed occupancy with bits set":
            mask = mca.AttentionMask(mask.bits, torch.zeros_like(mask.occupancy), n)
        results = []
        for backend, attn_mask in (("native", mask), ("reference", mca.pack_visibility(visible))):
            leaves = [t.clone().requires_grad_(True) for t in tensors]
            try:
                with use_backend(backend):
                    out = mca.masked_cross_attention(*leaves, attn_mask, None)
                    out.sum().backward()
            except (ValueError, TypeError) as exc:
                return "wrong", f"{backend} refused a mask it must serve: {str(exc)[:120]}"
            results.append([out] + [t.grad for t in leaves])
        for name, x, y in zip(("out", "grad q", "grad k", "grad v"), *results):
            problem = _same(x, y)
            if problem:
                return "wrong", f"{name}: {problem} (native vs the policy reference)"
        return "ok", ""
    return run


def _debias_case(kind: str):
    def run():
        from coavs.ops import debias_logits, reference, use_backend

        g = torch.Generator().manual_seed(0)
        mask, cls = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 5, generator=g)
        mb, cb = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 5, generator=g)
        alpha = 1.0
        if kind == "NaN in mask":
            mask[0, 0, 0, 0] = math.nan
        elif kind == "Inf in biased class logits":
            cb[1, 2, 3] = math.inf
        elif kind in ("alpha -1", "alpha nan"):
            alpha = -1.0 if kind == "alpha -1" else math.nan
            try:
                debias_logits(mask, cls, mb, cb, alpha=alpha)
            except ValueError as exc:
                return "ok", f"refused: {exc}"
            return "wrong", f"accepted alpha={alpha}"
        leaves = [t.clone().requires_grad_(True) for t in (mask, cls, mb, cb)]
        refs = [t.clone().requires_grad_(True) for t in (mask, cls, mb, cb)]
        with use_backend("native"):
            got = debias_logits(*leaves, alpha=alpha, strategy="uncertainty")
        with use_backend("reference"):
            want = debias_logits(*refs, alpha=alpha, strategy="uncertainty")
        (got[0].sum() + got[1].sum()).backward()
        (want[0].sum() + want[1].sum()).backward()
        for name, x, y in (("mask", got[0], want[0]), ("cls", got[1], want[1]),
                           *[(f"grad {i}", a.grad, r.grad) for i, (a, r) in enumerate(zip(leaves, refs))]):
            problem = _same(x, y)
            if problem:
                return "wrong", f"{name}: {problem} (native vs reference)"
        return "ok", ""
    return run


def _semantic_case(kind: str):
    def run():
        from coavs.ops import semantic_inference, use_backend

        g = torch.Generator().manual_seed(0)
        mask, cls = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 5, generator=g)
        if kind == "NaN mask logit":
            mask[0, 1, 2, 2] = math.nan
        elif kind == "Inf class logit":
            cls[0, 0, 1] = math.inf
        elif kind == "no query":
            mask, cls = mask[:, :0], cls[:, :0]
        results = []
        for backend in ("native", "reference"):
            with use_backend(backend):
                try:
                    results.append(semantic_inference(mask, cls, size=(8, 8), mode="binary"))
                except ValueError as exc:
                    results.append(exc)
        if all(isinstance(r, Exception) for r in results):
            return "ok", f"refused: {results[0]}"
        if any(isinstance(r, Exception) for r in results):
            return "wrong", f"backends disagree: {results}"
        problem = _same(results[0], results[1])
        return ("wrong", f"{problem} (native vs reference)") if problem else ("ok", "")
    return run


def _assign_case(kind: str):
    def run():
        from coavs.ops import assign_queries, use_backend

        g = torch.Generator().manual_seed(0)
        scores, audio, feat = torch.rand(2, 3, generator=g), torch.randn(2, 8, generator=g), torch.randn(6, 8)
        dilation = 2
        if kind == "NaN score":
            scores[0, 1] = math.nan
        elif kind == "S·d > Q":
            dilation = 3
        elif kind == "dilation 0":
            dilation = 0
        outs = []
        for backend in ("native", "reference"):
            with use_backend(backend):
                try:
                    outs.append(assign_queries(scores, audio, feat, dilation, soft=True))
                except ValueError as exc:
                    outs.append(exc)
        if kind in ("S·d > Q", "dilation 0"):
            return ("ok", "refused") if all(isinstance(o, Exception) for o in outs) else ("wrong", "accepted")
        if any(isinstance(o, Exception) for o in outs):
            return "traceback", str(outs)
        for name in ("queries", "gate", "active"):
            problem = _same(getattr(outs[0], name).float(), getattr(outs[1], name).float())
            if problem:
                return "wrong", f"{name}: {problem}"
        return "ok", ""
    return run


def _matching_case(kind: str):
    def run():
        from coavs.ops import matching_cost, use_backend

        g = torch.Generator().manual_seed(0)
        logits, targets = torch.randn(1, 4, 16, generator=g), (torch.rand(1, 2, 16, generator=g) > 0.5).float()
        cls, labels = torch.randn(1, 4, 4, generator=g), torch.tensor([[1, 2]])
        allowed = torch.ones(1, 4, 2, dtype=torch.bool)
        if kind == "NaN mask logit":
            logits[0, 1, 3] = math.nan
        elif kind == "no target":
            targets, labels, allowed = targets[:, :0], labels[:, :0], allowed[:, :, :0]
        outs = []
        for backend in ("native", "reference"):
            with use_backend(backend):
                outs.append(matching_cost(logits, targets, cls, labels, allowed, None))
        problem = _same(outs[0], outs[1])
        return ("wrong", problem) if problem else ("ok", "")
    return run


def ops_cases() -> list[Case]:
    cases = []
    for kind in ("NaN in q", "Inf in k", "1e30 inputs", "bits set for keys >= N", "~bits",
                 "zeroed occupancy with bits set"):
        cases.append(Case("ops", f"masked_cross_attention: {kind}", lambda env, k=kind: _forked(_attention_case(k))))
    for kind in ("NaN in mask", "Inf in biased class logits", "alpha -1", "alpha nan"):
        cases.append(Case("ops", f"debias_logits: {kind}", lambda env, k=kind: _forked(_debias_case(k))))
    for kind in ("NaN mask logit", "Inf class logit", "no query"):
        cases.append(Case("ops", f"semantic_inference: {kind}", lambda env, k=kind: _forked(_semantic_case(k))))
    for kind in ("NaN score", "S·d > Q", "dilation 0"):
        cases.append(Case("ops", f"assign_queries: {kind}", lambda env, k=kind: _forked(_assign_case(k))))
    for kind in ("NaN mask logit", "no target"):
        cases.append(Case("ops", f"matching_cost: {kind}", lambda env, k=kind: _forked(_matching_case(k))))
    return cases


def _forked_child(function, queue):
    try:
        queue.put(function())
    except Exception as exc:
        queue.put(("traceback", f"{type(exc).__name__}: {str(exc)[:160]}"))


def _forked(function) -> tuple[str, str]:
    """``function()`` in a forked child, so that a kernel that corrupts memory kills the child, not the probe."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_forked_child, args=(function, queue))
    child.start()
    child.join(120)
    if child.exitcode is None:
        child.kill()
        return "crash", "hung"
    if child.exitcode != 0:
        return "crash", f"exit code {child.exitcode}"
    return queue.get(timeout=5)


# ------------------------------------------------------------------------------------------------ running
GROUPS = {"cli": cli_cases, "data": data_cases, "config": config_cases, "training": training_cases, "ops": ops_cases}


def run_probe(groups=tuple(GROUPS), root: Path | None = None, verbose: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    os.environ.setdefault("COAVS_CACHE", str(Path(root or tempfile.gettempdir()) / "coavs-probe-cache"))
    owned = root is None
    root = Path(tempfile.mkdtemp(prefix="coavs-probe-")) if owned else Path(root)
    try:
        env = make_env(root)
        results = []
        for group in groups:
            for case in GROUPS[group]():
                try:
                    status, detail = case.run(env)
                except Exception as exc:  # the probe's own set-up failed: report, do not stop
                    status, detail = "traceback", f"probe: {type(exc).__name__}: {exc}"
                    if verbose:
                        traceback.print_exc()
                results.append({"group": group, "case": case.name, "status": status, "detail": detail})
                if verbose:
                    print(f"{status:9s} {group:8s} {case.name}: {detail}", file=sys.__stderr__, flush=True)
        return results
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def summary(results: list[dict]) -> str:
    lines = [f"{'group':10s} {'cases':>5s} " + " ".join(f"{s:>9s}" for s in STATUSES)]
    for group in [*dict.fromkeys(r["group"] for r in results), "all"]:
        rows = [r for r in results if group in ("all", r["group"])]
        counts = Counter(r["status"] for r in rows)
        lines.append(f"{group:10s} {len(rows):5d} " + " ".join(f"{counts[s]:9d}" for s in STATUSES))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default=",".join(GROUPS))
    parser.add_argument("--json", type=Path, help="write every case's result here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case as it runs")
    args = parser.parse_args(argv)
    results = run_probe(tuple(g for g in args.groups.split(",") if g), verbose=args.verbose)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(summary(results))
    for r in results:
        if r["status"] != "ok":
            print(f"  {r['status']:9s} {r['group']:8s} {r['case']}: {r['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
