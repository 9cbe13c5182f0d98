"""Batch erasure: several concepts, each with its method and config, from Python or a TOML job file.

    studio erase --job job.toml

```toml
model = "toy"              # base model of every concept (a concept may override it)
out = "outputs/batch"      # each concept writes <out>/<name>/{model, plugin, eval, checkpoint}
evaluate = false           # robustness report after each concept (toy-world concepts)

[[concept]]
name = "triangle"
prompts = ["a triangle"]
method = "advunlearn"      # any of erasers.METHODS
preset = "toy"             # "official" (the paper's defaults) or "toy"
export = true              # also write a plug-in text encoder (text-encoder methods)
config = { iterations = 200 }

[[concept]]
name = "shapes"            # several concepts into one encoder: list all their prompts
prompts = ["a triangle", "a star"]
method = "advunlearn"
```

Each concept runs with atomic checkpoints in `<out>/<name>/checkpoint`; when it has finished, a
`done.json` is written last. Running the job again skips finished concepts (nothing is redone)
and resumes an interrupted one from its checkpoint (nothing is lost).
"""

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from studio.checkpoint import atomic_write_text

from . import METHODS, PRESETS, Concept, erase, get_config


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


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-") or "concept"


def _line_of(text: str, index: int, key: str | None) -> int:
    """1-based line of `key` inside the index-th [[concept]] table (or of the table header)."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if line.strip().startswith("[[concept]]")]
    if index >= len(headers):
        return 1
    start = headers[index]
    end = headers[index + 1] if index + 1 < len(headers) else len(lines)
    if key:
        for i in range(start, end):
            if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]) or lines[i].strip().startswith(f"[concept.{key}]"):
                return i + 1
    return start + 1


def parse_job(path) -> tuple[dict, list]:
    """Read and validate a job file: (settings, entries). Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise JobFileError(f"no job file at {path}")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise JobFileError(f"{path}: not valid TOML: {e}") from e
    unknown_top = set(data) - {"model", "out", "evaluate", "concept", "device"}
    if unknown_top:
        key = sorted(unknown_top)[0]
        line = next((i + 1 for i, ln in enumerate(text.splitlines()) if re.match(rf"\s*\[*{re.escape(key)}", ln)), 1)
        raise JobFileError(f"{path}, line {line}: unknown setting {key!r}; a job file has model, out, evaluate, device and [[concept]] tables")
    concepts = data.get("concept")
    if not concepts or not isinstance(concepts, list):
        raise JobFileError(f"{path}: no [[concept]] tables; add one per concept to erase")
    entries, names = [], set()
    fields_ok = {"name", "prompts", "method", "preset", "config", "anchors", "retain", "model", "export"}
    for i, c in enumerate(concepts):
        def fail(key, message):
            raise JobFileError(f"{path}, line {_line_of(text, i, key)}: {message}")

        for key in c:
            if key not in fields_ok:
                fail(key, f"unknown key {key!r} in [[concept]]; use {', '.join(sorted(fields_ok))}")
        prompts = c.get("prompts")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            fail("prompts", "each [[concept]] needs prompts = [\"...\"] with at least one non-empty prompt")
        method = c.get("method", "esd-x")
        if method not in METHODS:
            fail("method", f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        preset = c.get("preset", "official")
        if preset not in PRESETS:
            fail("preset", f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        config = c.get("config", {})
        if not isinstance(config, dict):
            fail("config", "config must be a table, e.g. config = { iterations = 100 }")
        try:
            get_config(method, preset, config)
        except ValueError as e:
            fail("config", str(e))
        name = _slug(c.get("name") or prompts[0])
        if name in names:
            fail("name", f"two concepts are named {name!r}; give each a distinct name")
        names.add(name)
        entries.append(
            JobEntry(name, list(prompts), method, preset, dict(config), list(c.get("anchors", [])), list(c.get("retain", [])), c.get("model"), bool(c.get("export", False)))
        )
    settings = {"model": data.get("model", "toy"), "out": data.get("out", "outputs/batch"), "evaluate": bool(data.get("evaluate", False)), "device": data.get("device")}
    return settings, entries


def erase_batch(entries: list, out, model: str = "toy", *, evaluate: bool = False, device=None, callback=None, cancel=None, progress=True) -> list:
    """Erase each entry into `<out>/<name>/`; finished ones are skipped, an interrupted one resumes.

    Returns one dict per entry: name, status ("done" now, or "skipped" as finished before), folder, stats.
    """
    from studio.loading import load_pipeline

    out = Path(out)
    summary = []
    for entry in entries:
        folder = out / entry.name
        done = folder / "done.json"
        config = get_config(entry.method, entry.preset, entry.config)
        signature = {"method": entry.method, "prompts": entry.prompts, "config": json.loads(json.dumps(config.__dict__, default=str))}
        if done.is_file():
            info = json.loads(done.read_text())
            if info.get("signature") == signature:
                summary.append({"name": entry.name, "status": "skipped", "folder": str(folder), "stats": info.get("stats")})
                continue
            raise JobFileError(f"{folder} holds a finished run with other settings; delete it or rename the concept")
        base = entry.model or model
        pipe = load_pipeline(base, device=device)
        concept = Concept(entry.prompts, anchors=entry.anchors, retain=entry.retain, name=entry.name)
        cb = (lambda info, name=entry.name: callback({"concept": name, **info})) if callback else None
        result = erase(pipe, concept, entry.method, config=config, checkpoint_dir=folder / "checkpoint", callback=cb, cancel=cancel, progress=progress)
        result.save(folder / "model", pipe, base_model=base)
        report_md = None
        if evaluate:
            from studio.judges import get_judge

            from .evaluate import EvalConfig, evaluate as run_eval, toy_spec, write_report
            from .cli import _concept_name

            ecfg = EvalConfig()
            report = run_eval(load_pipeline(base, device=device), pipe, toy_spec(_concept_name(entry.prompts), ecfg), get_judge("toy"), ecfg, progress=progress)
            write_report(report, folder / "eval")
            report_md = (folder / "eval" / "report.md").read_text()
        if entry.export:
            from .export import export_from_erased

            export_from_erased(folder / "model", folder / "plugin", evaluation=report_md)
        atomic_write_text(done, json.dumps({"signature": signature, "stats": result.stats}, indent=2))
        summary.append({"name": entry.name, "status": "done", "folder": str(folder), "stats": result.stats})
    return summary


def run_job(path, resume: bool = True) -> int:
    settings, entries = parse_job(path)
    out = Path(settings["out"])
    if not resume:
        import shutil

        for e in entries:
            shutil.rmtree(out / e.name, ignore_errors=True)
    summary = erase_batch(entries, out, settings["model"], evaluate=settings["evaluate"], device=settings["device"])
    for s in summary:
        stats = s["stats"] or {}
        print(f"{s['name']:20s} {s['status']:8s} {s['folder']}  ({stats.get('steps', '?')} steps, {stats.get('seconds', '?')} s)")
    return 0
