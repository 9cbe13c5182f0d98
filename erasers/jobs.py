"""Batch erasure: several concepts, each with its method and config, from Python or a TOML job file.

    studio erase --job job.toml              # run (or resume) every concept
    studio erase --job job.toml --restart    # delete the concepts' folders (only the studio's own) and run again

```toml
model = "toy"              # base model of every concept (a concept may override it)
out = "outputs/batch"      # each concept writes <out>/<name>/{model, plugin, eval, checkpoint}
evaluate = false           # robustness report after each concept (toy-world concepts; the toy budget on the toy model)
device = "cpu"             # optional: cuda, mps or cpu

[[concept]]
name = "triangle"          # the folder's name: lower case letters, digits and "-" (default: from the first prompt)
prompts = ["a triangle"]   # a list of prompts (one string is one prompt)
method = "advunlearn"      # any of erasers.METHODS
preset = "toy"             # one of erasers.PRESETS: "official" (the paper's defaults) or "toy" (default on the toy model)
export = true              # also write a plug-in text encoder (text-encoder methods); true or false
config = { iterations = 200 }   # fields of the method's config dataclass, checked by name and type
anchors = ["a square"]     # optional: what the concept should become (ESD erase_from, DoCo)
retain = ["a circle"]      # optional: prompts whose outputs must not change
model = "toy"              # optional: this concept's base model
stop_when = { target_rate = 0.05, min_retained = 0.9, check_every = 10 }   # optional: erase until erased

[[concept]]
name = "shapes"            # several concepts into one encoder: list all their prompts
prompts = ["a triangle", "a star"]
method = "advunlearn"
```

The whole file is checked before anything runs; an error names the file and line. Each concept
runs with atomic checkpoints in `<out>/<name>/checkpoint`; when it has finished, a `done.json` is
written last. Running the job again skips finished concepts (nothing is redone) and resumes an
interrupted one from its checkpoint (nothing is lost).
`stop_when` (iterative methods) stops a concept's training when its held-in check images show the concept at
most `target_rate` of the time, or keeps the last weights that met the utility guard (`min_retained`; false:
no guard); the config's iterations are the ceiling. On the toy model the check prompts are the toy world's
held-in ones (`erasers.stopping.toy_stop_when`); elsewhere the concept's prompts and `retain` prompts, judged
by `judge` (e.g. "nudenet"). What it did lands in the concept's erasure.json and done.json. Concept folders are marked as the studio's
own (`.erasure-studio`); a folder that is not is never written into, and `--restart` deletes only
marked folders.
"""

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from studio.checkpoint import atomic_write_text
from studio.paths import inside, slug

from . import METHODS, PRESETS, erase, get_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class JobFileError(ValueError):
    """A job file that cannot run; the message names the file and line."""


@dataclass
class JobEntry:
    name: str
    prompts: list
    method: str = "esd-x"
    preset: str = "official"
    config: dict = field(default_factory=dict)
    anchors: list = field(default_factory=list)
    retain: list = field(default_factory=list)
    model: str | None = None
    export: bool = False
    stop_when: dict | None = None  # target_rate, min_retained, check_every, judge (erasers.stopping)


SETTINGS = {"model": str, "out": str, "evaluate": bool, "device": str}  # top-level keys and their types
CONCEPT_KEYS = {"name", "prompts", "method", "preset", "config", "anchors", "retain", "model", "export", "stop_when"}
STOP_KEYS = {"target_rate": (int, float), "min_retained": (int, float, bool), "check_every": int, "judge": str}
TYPE_NAMES = {str: 'a string in quotes ("...")', bool: "true or false (no quotes)"}


def _line_of(text: str, index: int | None, key: str | None) -> int:
    """1-based line of `key` inside the index-th [[concept]] table (or of the table header); with
    `index=None`, of a top-level key."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if line.strip().startswith("[[concept]]")]
    if index is None:
        stop = headers[0] if headers else len(lines)
        return next((i + 1 for i in range(stop) if key and re.match(rf"\s*\[*{re.escape(key)}\b", lines[i])), 1)
    if index >= len(headers):
        return 1
    start = headers[index]
    end = headers[index + 1] if index + 1 < len(headers) else len(lines)
    if key:
        for i in range(start, end):
            if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]) or lines[i].strip().startswith(f"[concept.{key}]"):
                return i + 1
    return start + 1


def _prompt_list(value, key: str, fail, required: bool = False) -> list:
    """A list of non-empty prompts; a single string is one prompt (like `Concept`)."""
    if value is None and not required:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value) or (required and not value):
        example = 'prompts = ["a triangle"]' if key == "prompts" else f'{key} = ["a square"]'
        needs = "at least one non-empty prompt" if required else "a list of non-empty prompts"
        fail(key, f"{key} must be {needs}, e.g. {example}; got {value!r}")
    return [p.strip() for p in value]


def _typed(value, kind, key: str, fail):
    if value is not None and not isinstance(value, kind):
        fail(key, f"{key} must be {TYPE_NAMES[kind]}, got {value!r}")
    return value


def _read(path: Path) -> tuple[str, dict]:
    if not path.is_file():
        raise JobFileError(f"no job file at {path}")
    text = path.read_text()
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise JobFileError(f"{path}: not valid TOML: {e}") from e


def parse_job(path) -> tuple[dict, list]:
    """Read and validate a job file: (settings, entries). Errors name the file and line."""
    path = Path(path)
    text, data = _read(path)

    def fail_at(index):  # index of the [[concept]] table, None for the top level
        def fail(key, message):
            raise JobFileError(f"{path}, line {_line_of(text, index, key)}: {message}")

        return fail

    for key in data:
        if key not in SETTINGS and key != "concept":
            fail_at(None)(key, f"unknown setting {key!r}; a job file has {', '.join(SETTINGS)} and [[concept]] tables")
    settings = {"model": "toy", "out": "outputs/batch", "evaluate": False, "device": None}
    for key, kind in SETTINGS.items():
        settings[key] = _typed(data.get(key, settings[key]), kind, key, fail_at(None))
    concepts = data.get("concept")
    if not concepts or not isinstance(concepts, list) or not all(isinstance(c, dict) for c in concepts):
        raise JobFileError(f"{path}: no [[concept]] tables; add one per concept to erase")
    entries, names = [], set()
    for i, c in enumerate(concepts):
        entries.append(_entry(c, fail_at(i), settings, names))
    return settings, entries


def _entry(c: dict, fail, settings: dict, names: set) -> JobEntry:
    """One [[concept]] table, checked: keys, types, method, preset, config, name."""
    from studio.loading import is_toy
    from studio.toyworld.grammar import find_concept

    for key in c:
        if key not in CONCEPT_KEYS:
            fail(key, f"unknown key {key!r} in [[concept]]; use {', '.join(sorted(CONCEPT_KEYS))}")
    prompts = _prompt_list(c.get("prompts"), "prompts", fail, required=True)
    anchors = _prompt_list(c.get("anchors"), "anchors", fail)
    retain = _prompt_list(c.get("retain"), "retain", fail)
    method = _typed(c.get("method", "esd-x"), str, "method", fail)
    if method not in METHODS:
        fail("method", f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    model = _typed(c.get("model"), str, "model", fail)
    preset = _typed(c.get("preset", "toy" if is_toy(model or settings["model"]) else "official"), str, "preset", fail)
    if preset not in PRESETS:
        fail("preset", f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    config = c.get("config", {})
    if not isinstance(config, dict):
        fail("config", "config must be a table, e.g. config = { iterations = 100 }")
    try:
        get_config(method, preset, config)
    except ValueError as e:
        fail("config", str(e))
    export = _typed(c.get("export", False), bool, "export", fail)
    raw = _typed(c.get("name"), str, "name", fail) or prompts[0]
    name = slug(raw, empty="")  # the one slug of a concept's folder (as `studio erase` names it)
    if not name:
        fail("name", f'name {raw!r} has no letter or digit to name a folder with; give a plain name such as "triangle"')
    try:
        inside(settings["out"], name)
    except ValueError as e:
        fail("name", str(e))
    if name in names:
        fail("name", f"two concepts are named {name!r}; give each a distinct name")
    names.add(name)
    if settings["evaluate"] and find_concept(prompts) is None:
        fail("prompts", f"evaluate = true judges toy-world concepts, and {prompts!r} names none; drop evaluate or the concept")
    stop_when = _stop_when(c.get("stop_when"), method, prompts, retain, model or settings["model"], fail)
    return JobEntry(name, prompts, method, preset, dict(config), anchors, retain, model, export, stop_when)


def _stop_when(value, method: str, prompts: list, retain: list, model: str, fail) -> dict | None:
    """A [[concept]]'s `stop_when = { target_rate = 0.05, min_retained = 0.9, check_every = 10 }`, checked."""
    if value is None:
        return None
    from studio.loading import is_toy

    from . import Concept
    from .stopping import check_method, stop_when_for

    example = "stop_when = { target_rate = 0.05, min_retained = 0.9, check_every = 10 }"
    if not isinstance(value, dict):
        fail("stop_when", f"stop_when must be a table, e.g. {example}")
    for key, v in value.items():
        if key not in STOP_KEYS:
            fail("stop_when", f"unknown stop_when setting {key!r}; use {', '.join(STOP_KEYS)}")
        if not isinstance(v, STOP_KEYS[key]) or (key != "min_retained" and isinstance(v, bool)) or (v is True):
            fail("stop_when", f"stop_when {key} = {v!r} has the wrong type; e.g. {example}")
    if "target_rate" not in value:
        fail("stop_when", f"stop_when needs target_rate, e.g. {example}")
    guard = value.get("min_retained", 0.9)
    try:
        check_method(method)
        stop_when_for(
            is_toy(model),
            Concept(prompts, retain=retain),
            value["target_rate"],
            None if guard is False else guard,
            value.get("check_every", 10),
            judge=value.get("judge", "toy"),
        )
    except ValueError as e:
        fail("stop_when", str(e))
    return dict(value)


def erase_batch(
    entries: list, out, model: str = "toy", *, evaluate: bool = False, device=None, callback=None, cancel=None, progress=True
) -> list:
    """Erase each entry into `<out>/<name>/`; finished ones are skipped, an interrupted one resumes.

    Returns one dict per entry: name, status ("done" now, or "skipped" as finished before), folder, stats.
    Every concept folder is claimed before any training (`studio.cli.claim_folder`): a folder the studio
    did not write is refused, not overwritten.
    """
    from studio.cli import check_folder, claim_folder

    out = Path(out)
    folders = [out / entry.name for entry in entries if inside(out, entry.name)]  # inside() raises for a name that climbs out
    plan = []
    for entry, folder in zip(entries, folders):
        config = get_config(entry.method, entry.preset, entry.config)
        signature = {"method": entry.method, "prompts": entry.prompts, "config": json.loads(json.dumps(config.__dict__, default=str))}
        if entry.stop_when is not None:
            signature["stop_when"] = entry.stop_when
        done = folder / "done.json"
        if done.is_file():
            info = json.loads(done.read_text())
            if info.get("signature") != signature:
                raise JobFileError(f"{folder} holds a finished run with other settings; delete it or rename the concept")
        else:
            check_folder(folder)
        plan.append((entry, folder, config, signature))
    summary = []
    for entry, folder, config, signature in plan:
        done = folder / "done.json"
        if done.is_file():
            info = json.loads(done.read_text())
            summary.append({"name": entry.name, "status": "skipped", "folder": str(folder), "stats": info.get("stats")})
            continue
        claim_folder(folder)
        stats = _erase_entry(
            entry, folder, config, model, evaluate=evaluate, device=device, callback=callback, cancel=cancel, progress=progress
        )
        atomic_write_text(done, json.dumps({"signature": signature, "stats": stats}, indent=2))
        summary.append({"name": entry.name, "status": "done", "folder": str(folder), "stats": stats})
    return summary


def _erase_entry(entry: JobEntry, folder: Path, config, model: str, *, evaluate, device, callback, cancel, progress) -> dict:
    """Erase one concept into `folder` (model/, then eval/ and plugin/ when asked); returns its stats."""
    from studio.loading import load_pipeline

    from . import Concept

    base = entry.model or model
    pipe = load_pipeline(base, device=device)
    concept = Concept(entry.prompts, anchors=entry.anchors, retain=entry.retain, name=entry.name)
    concept.check(pipe.tokenizer)
    cb = (lambda info: callback({"concept": entry.name, **info})) if callback else None
    stop_when = None
    if entry.stop_when is not None:
        from studio.loading import is_toy

        from .stopping import stop_when_for

        s, guard = entry.stop_when, entry.stop_when.get("min_retained", 0.9)
        stop_when = stop_when_for(
            is_toy(base),
            concept,
            s["target_rate"],
            None if guard is False else guard,
            s.get("check_every", 10),
            judge=s.get("judge", "toy"),
        )
    result = erase(
        pipe,
        concept,
        entry.method,
        config=config,
        checkpoint_dir=folder / "checkpoint",
        callback=cb,
        cancel=cancel,
        progress=progress,
        stop_when=stop_when,
    )
    result.save(folder / "model", pipe, base_model=base)
    report_md = None
    if evaluate:
        from studio.judges import get_judge
        from studio.loading import is_toy
        from studio.toyworld.grammar import find_concept

        from . import eval_config
        from .evaluate import evaluate as run_eval
        from .evaluate import toy_spec, write_report

        ecfg, _ = eval_config("unlearndiffatk", "toy" if is_toy(base) else "official")
        original = load_pipeline(base, device=device)
        report = run_eval(original, pipe, toy_spec(find_concept(entry.prompts), ecfg), get_judge("toy"), ecfg, progress=progress)
        write_report(report, folder / "eval")
        report_md = (folder / "eval" / "report.md").read_text()
    if entry.export:
        from .export import export_from_erased

        export_from_erased(folder / "model", folder / "plugin", evaluation=report_md)
    return result.stats


def restart(entries: list, out) -> list:
    """Delete the concept folders of `entries` under `out` so that they run from scratch (`--restart`).

    Only folders the studio marked as its own are deleted; any other existing folder is refused
    before anything is deleted. Returns the folders deleted."""
    from studio.cli import is_own

    folders = [Path(out) / e.name for e in entries if inside(out, e.name)]
    foreign = [f for f in folders if f.exists() and not is_own(f)]
    if foreign:
        raise JobFileError(
            f"--restart deletes only folders the studio made; {foreign[0]} has no studio marker: delete it yourself or change out"
        )
    deleted = [f for f in folders if f.exists()]
    for f in deleted:
        shutil.rmtree(f)
    return deleted


def run_job(path, resume: bool = True) -> int:
    """`studio erase --job FILE [--restart]`: check the file and every output folder, then erase."""
    from studio.cli import ensure_writable

    settings, entries = parse_job(path)
    out = ensure_writable(settings["out"])
    if not resume:
        for folder in restart(entries, out):
            print(f"--restart: deleted {folder}")
    summary = erase_batch(entries, out, settings["model"], evaluate=settings["evaluate"], device=settings["device"])
    for s in summary:
        stats = s["stats"] or {}
        stop = stats.get("stop") or {}
        why = f", stopped: {stop['reason']} at step {stop['step']}, weights of step {stop['kept_step']}" if stop else ""
        print(f"{s['name']:20s} {s['status']:8s} {s['folder']}  ({stats.get('steps', '?')} steps, {stats.get('seconds', '?')} s{why})")
    return 0
