"""The app through its API (gradio_client against the launched server): every tab on the toy model with
tiny budgets, streaming, cancel, private sessions, readable errors, and what the server exposes."""

import json
import re
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, toy_model

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")  # inside gradio's queue, with pandas 3
SAMPLE = ROOT / "assets" / "samples" / "red-triangle.png"
# tiny budgets: every call below takes seconds on a 2-core CPU
ERASE = dict(
    concept_text="a triangle",
    method="esd-x",
    iterations=2,
    num_inference_steps=3,
    sample_steps=3,
    preview_every=1,
    ev_seeds=1,
    ev_prompts=1,
    attack="unlearndiffatk",
    attack_prompts=1,
    attack_timesteps=1,
    attack_iters=2,
)
ATTACK = dict(attack="unlearndiffatk", timesteps=2, iters=2, steps=3)
EDIT = dict(steps=3, inner_steps=2)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from apps.studio_app import build_app, launch_kwargs

    model, judge = toy_model()
    outputs = tmp_path_factory.mktemp("app-outputs")
    demo = build_app(outputs, model, judge_path=judge, device="cpu")
    _, url, _ = demo.launch(prevent_thread_lock=True, **launch_kwargs())
    yield SimpleNamespace(url=url, outputs=outputs, model=model)
    demo.close()


class Session:
    """One browser session: a gradio_client `Client` plus the output labels of each endpoint."""

    def __init__(self, url):
        self.client = Client(url, verbose=False)
        self.api = self.client.view_api(print_info=False, return_format="dict")["named_endpoints"]

    def submit(self, api_name, **kwargs):
        return self.client.submit(api_name=api_name, **kwargs)

    def named(self, api_name, result) -> dict:
        """{output label: value}; `gr.update` dicts become their value (labels and choices under 'label:props')."""
        labels = [r["label"] for r in self.api[api_name]["returns"]]
        result = result if isinstance(result, (list, tuple)) else [result]
        out = {}
        for label, value in zip(labels, result):
            if isinstance(value, dict) and value.get("__type__") == "update":
                out[label + ":props"] = value
                value = value.get("value")
            out[label] = value
        return out

    def run(self, api_name, **kwargs) -> dict:
        job = self.submit(api_name, **kwargs)
        out = self.named(api_name, job.result(timeout=300))
        out["_updates"] = len(job.outputs())
        return out


def error_of(session, api_name, **kwargs) -> str:
    with pytest.raises(AppError) as info:
        session.run(api_name, **kwargs)
    return str(info.value)


@pytest.fixture(scope="module")
def erased(app):
    """One short erasure (with its evaluation), shared by the tests that use an erased model."""
    s = Session(app.url)
    t0 = time.time()
    out = s.run("/erase", **ERASE)
    out["_seconds"] = time.time() - t0
    key = out["Model to attack:props"]["value"]
    assert key.startswith("session:")
    return SimpleNamespace(session=s, out=out, key=key)


# ----------------------------------------------------------------------------- server


def test_server_is_local_and_serves_no_repo_files(app):
    import httpx

    assert app.url.startswith("http://127.0.0.1:")
    config = httpx.get(app.url + "config").json()
    assert config.get("analytics_enabled") is False
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"erase", "cancel_erase", "save_model", "export_encoder", "attack", "edit", "generate", "check_model"} <= names
    for path in (ROOT / "README.md", ROOT / "apps" / "studio_app.py", Path("/etc/passwd"), SAMPLE):
        r = httpx.get(f"{app.url}gradio_api/file={path}")
        assert r.status_code in (403, 404), f"{path} is served ({r.status_code})"
    assert "googleapis" not in httpx.get(app.url + "theme.css").text  # no web fonts from the network


def test_a_server_side_path_is_not_read_as_an_upload(app):
    """A raw API call naming a file on the server (not uploaded) is refused before the handler runs."""
    import httpx

    s = Session(app.url)
    params = s.api["/edit"]["parameters"]
    data = [p.get("parameter_default") for p in params]
    data[[p["parameter_name"] for p in params].index("image")] = {"path": str(SAMPLE), "meta": {"_type": "gradio.FileData"}}
    event = httpx.post(app.url + "gradio_api/call/edit", json={"data": data}).json()["event_id"]
    reply = httpx.get(f"{app.url}gradio_api/call/edit/{event}", timeout=60).text
    assert "event: error" in reply and "not uploaded by a user" in reply and "event: complete" not in reply


def test_server_makes_no_outside_connections(tmp_path, monkeypatch):
    """Build, launch and use a second app while every socket connection and name lookup is recorded."""
    import socket

    import httpx

    from apps.studio_app import build_app, launch_kwargs

    model, judge = toy_model()
    seen, lookups = [], []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: (seen.append(address), connect(self, address))[1])
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: (seen.append(address), connect_ex(self, address))[1])
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: (lookups.append(host), getaddrinfo(host, *a, **k))[1])
    demo = build_app(tmp_path, model, judge_path=judge, device="cpu")
    _, url, _ = demo.launch(prevent_thread_lock=True, **launch_kwargs())
    try:
        assert httpx.get(url).status_code == 200
        Session(url).run("/generate", prompts_text="a red triangle", seeds_text="0", steps=2)
    finally:
        demo.close()
    local = ("127.0.0.1", "::1", "localhost")
    assert seen  # the recorder saw the local connections (client to server)
    assert not [a for a in seen if isinstance(a, tuple) and a[0] not in local], seen
    assert not [h for h in lookups if h not in local and h is not None], lookups


def test_cli_registers_studio_app():
    from studio.cli import build_parser

    args = build_parser().parse_args(["app", "--port", "7999"])
    assert (args.host, args.port, args.model, args.outputs) == ("127.0.0.1", 7999, "toy", "outputs")
    assert args.fn.__module__ == "apps.cli"


# ----------------------------------------------------------------------------- tabs


def test_generate_streams_and_draws_a_grid(app):
    from PIL import Image

    s = Session(app.url)
    job = s.submit("/generate", prompts_text="a red triangle\na blue circle", seeds_text="0-1", steps=8)
    out = s.named("/generate", job.result(timeout=120))
    grid = Image.open(out["The model above"])
    assert grid.width > 2 * 128 and grid.height > 2 * 128  # 2 prompts x 2 seeds, 32 px images drawn at 128 px
    assert out["The model above:props"]["label"].startswith("original:")
    assert out["Compared model:props"]["visible"] is False  # nothing to compare with
    assert "same seeds" in out["Generate status"] and "job done" in out["Generate status"]
    assert len(job.outputs()) >= 3  # loading, progress while sampling, final


def test_erase_streams_progress_and_shows_grid_report(erased):
    out = erased.out
    assert "job done" in out["Erase status"] and "esd-x: 2 steps" in out["Erase status"]
    assert [row[0] for row in out["Training loss"]["data"]] == [1, 2]  # the live loss curve, one point per step
    assert "after step 2" in out["Preview:props"]["label"]
    from PIL import Image

    grid = Image.open(out["Before / after on fixed seeds"])
    assert grid.width > grid.height  # 4 seeds across, original and erased rows
    assert "erasure success" in out["Evaluation"] and "ASR" in out["Evaluation"]
    assert Path(out["Original / erased / attacked (with the judge's verdicts)"]).is_file()
    assert out["Concept the judge looks for"] == "triangle"  # the Attack tab is filled in for the next step
    assert out["_updates"] >= 4
    assert erased.out["_seconds"] < 120


def test_attack_the_erased_model_over_a_prompt_set(erased):
    s = erased.session
    out = s.run("/attack", victim=erased.key, concept="triangle", prompts_text="a red triangle\na striped blue triangle", **ATTACK)
    table = out["Adversarial prompts"]
    assert [row[0] for row in table["data"]] == ["a red triangle", "a striped blue triangle"]
    for prompt, adversarial, before, *_ in table["data"]:
        # decoded prefix tokens + the prompt; the prompt itself when its own image already showed the concept
        assert adversarial == prompt if before == "yes" else adversarial.endswith(" " + prompt) and "</w>" not in adversarial
    assert "Attack success rate" in out["Attack success rate"] and "over 2 prompt(s)" in out["Attack success rate"]
    assert Path(out["Target (original model) and attacked images"]).is_file()
    assert "erased: a triangle · esd-x" in out["Attack status"]
    pre = sum(row[2] == "yes" for row in table["data"])  # a prompt whose own image shows the concept needs no attack
    steps = len(out["Attack loss"]["data"]) if out["Attack loss"] else 0
    assert steps <= 2 * 2 * 2 and (steps > 0 or pre == 2)  # at most timesteps x steps per timestep x prompts (it stops on success)


def test_attack_baseline_on_the_original(app):
    s = Session(app.url)
    out = s.run("/attack", victim="original", concept="circle", prompts_text="a red circle", attack="random", draws=2, steps=3)
    assert len(out["Adversarial prompts"]["data"]) == 1 and "random on original" in out["Attack status"]


def test_edit_sample_with_prompt_to_prompt_options(app):
    s = Session(app.url)
    out = s.run(
        "/edit",
        image=handle_file(str(SAMPLE)),
        source="a red triangle",
        target="a blue triangle",
        method="null-text",
        blend="triangle",
        reweight="blue=2",
        cross=0.6,
        self_steps=0.4,
        **EDIT,
    )
    assert "Reconstruction PSNR" in out["Edit status"]
    assert out["Reconstruction:props"]["label"].endswith(" dB")
    for label in ("Input", "Reconstruction", "Edit", "Local blend"):
        assert Path(out[label]).is_file(), label
    assert "replace mode" in out["Edit details"] and "128x128, resized to 32x32" in out["Edit details"]


def test_edit_with_the_targets_on_the_empty_null(app):
    out = Session(app.url).run(
        "/edit",
        image=handle_file(str(SAMPLE)),
        source="a red triangle",
        target="a blue triangle",
        method="null-text",
        target_null="empty",
        **EDIT,
    )
    assert "The targets' null: empty." in out["Edit details"] and Path(out["Edit"]).is_file()


def test_edit_with_the_erased_model_and_refine(erased):
    s = erased.session
    out = s.run(
        "/edit",
        choice=erased.key,
        image=handle_file(str(SAMPLE)),
        source="a red triangle",
        target="a striped red triangle",
        method="negative-prompt",
        **EDIT,
    )
    assert "refine mode" in out["Edit details"] and "erased: a triangle" in out["Edit details"]
    assert Path(out["Edit"]).is_file()


def test_generate_original_vs_erased_same_seeds(erased):
    out = erased.session.run("/generate", compare=erased.key, prompts_text="a red triangle", seeds_text="3, 4", steps=3)
    assert Path(out["The model above"]).is_file() and Path(out["Compared model"]).is_file()
    assert "erased: a triangle · esd-x" in out["Compared model:props"]["label"]
    assert "same seeds on both sides" in out["Generate status"]


def test_save_lists_the_model_and_export_needs_a_text_encoder(erased, app):
    s = erased.session
    out = s.run("/save_model")
    folders = list((app.outputs / "models").glob("*/erasure.json"))
    relative = str(folders[0].parent.relative_to(app.outputs))
    assert len(folders) == 1 and relative in out["Saved and exported"]
    assert str(app.outputs) not in out["Saved and exported"]  # the page shows paths relative to the output folder
    import httpx

    assert httpx.get(f"{app.url}gradio_api/file={folders[0]}").status_code in (403, 404)  # the output folder is not served
    values = [v for _, v in out["Model:props"]["choices"]]
    assert f"saved:{relative}" in values  # the top model picker lists it, relative to the output folder
    assert not [v for v in values if str(app.outputs) in v]
    # ESD changed the UNet: nothing to export, and the page says why
    assert "changes the UNet" in error_of(s, "/export_encoder")


def test_doco_needs_an_anchor_and_erases_with_one(app):
    s = Session(app.url)
    tiny = dict(
        concept_text="a triangle",
        method="doco",
        iterations=2,
        warmup_steps=1,
        num_anchor_images=2,
        evaluate_on=False,
        sample_steps=2,
        preview_every=0,
        more_json='{"batch_size": 1, "anchor_steps": 2, "anchor_batch_size": 2}',
    )
    assert "DoCo needs anchor prompts" in error_of(s, "/erase", **tiny)
    out = s.run("/erase", anchor_text="a square", **tiny)
    assert "doco: 2 steps" in out["Erase status"]
    settings = s.client.predict("doco", "official", api_name="/erase_settings")
    assert "anchor" in settings[0]["value"]


def test_advunlearn_exports_a_plug_in_encoder(app):
    s = Session(app.url)
    out = s.run(
        "/erase",
        concept_text="a triangle",
        method="advunlearn",
        iterations=2,
        warmup_iterations=1,
        attack_steps=1,
        num_inference_steps=2,
        more_json='{"retain_batch": 1}',
        evaluate_on=False,
        sample_steps=2,
        preview_every=0,
    )
    assert "advunlearn: 2 steps" in out["Erase status"]
    out = s.run("/export_encoder")
    archive = out["Download"]
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
    assert any(n.endswith("config.json") for n in names) and any(n.endswith(".safetensors") for n in names)
    assert list((app.outputs / "encoders").glob("*/config.json"))
    refreshed = Session(app.url).run("/refresh_models")
    assert any("encoders" in label for label, _ in refreshed["Plug-in text encoder:props"]["choices"])


# ----------------------------------------------------------------------------- cancel, sessions, errors


def test_cancel_stops_the_work(app):
    s = Session(app.url)
    job = s.submit(
        "/erase", concept_text="a circle", method="esd-x", iterations=100_000, num_inference_steps=3, preview_every=0, evaluate_on=False
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any("esd-x" in str(o[0]) and "/100000" in str(o[0]) for o in job.outputs()):
        time.sleep(0.2)
    assert job.outputs(), "no progress was streamed"
    t0 = time.time()
    s.client.predict(api_name="/cancel_erase")
    out = s.named("/erase", job.result(timeout=60))
    assert "Cancelled at step" in out["Erase status"]
    assert time.time() - t0 < 20
    time.sleep(0.5)
    assert not [t for t in threading.enumerate() if t.name == "studio-erase" and t.is_alive()], "the erasure kept running"


def test_two_sessions_get_their_own_results(app, erased):
    from PIL import Image

    def pixels(path):
        return Image.open(path).convert("RGB").tobytes()

    a, b = Session(app.url), Session(app.url)
    ja = a.submit("/generate", prompts_text="a green star", seeds_text="0", steps=3)
    jb = b.submit("/generate", prompts_text="a purple cross", seeds_text="0", steps=3)
    ra, rb = a.named("/generate", ja.result(timeout=120)), b.named("/generate", jb.result(timeout=120))
    # each session got the grid of its own prompt: the same as drawing it alone (same seed), not the other's
    alone = Session(app.url).run("/generate", prompts_text="a green star", seeds_text="0", steps=3)
    assert pixels(ra["The model above"]) == pixels(alone["The model above"]) != pixels(rb["The model above"])
    # another session neither lists nor can use this session's erased model
    choices = [v for _, v in b.run("/refresh_models")["Model to attack:props"]["choices"]]
    assert erased.key not in choices
    assert "not in this browser session" in error_of(b, "/attack", victim=erased.key, **ATTACK)


@pytest.mark.parametrize(
    "api_name, kwargs, expected",
    [
        ("/generate", dict(prompts_text="   "), "type a prompt first"),
        ("/generate", dict(seeds_text="a, b"), "seeds must be whole numbers"),
        ("/erase", dict(concept_text=""), "type the concept to erase"),
        ("/erase", dict(concept_text="a " + "very " * 80 + "red triangle"), "CLIP takes at most 77"),
        ("/erase", dict(concept_text="a triangle", more_json="{oops"), "not valid JSON"),
        ("/edit", dict(image=None), "upload an image first"),
        ("/edit", dict(image="NOT_AN_IMAGE"), "is not a readable image"),
        ("/edit", dict(image=str(SAMPLE), source=""), "type a source prompt"),
        ("/attack", dict(concept="dragon"), "unknown toy-world concept"),
        ("/check_model", dict(model="/no/such/model"), "no model at /no/such/model"),
        ("/check_model", dict(model=str(ROOT / "README.md")), "not a checkpoint this loader knows"),
    ],
)
def test_bad_input_gets_a_readable_error(app, tmp_path, api_name, kwargs, expected):
    if kwargs.get("image") == "NOT_AN_IMAGE":
        notes = tmp_path / "notes.png"
        notes.write_text("this is text, not a picture")
        kwargs = {**kwargs, "image": handle_file(str(notes))}
    elif isinstance(kwargs.get("image"), str):
        kwargs = {**kwargs, "image": handle_file(kwargs["image"])}
    message = error_of(Session(app.url), api_name, **kwargs)
    assert expected in message
    assert "Traceback" not in message and 'File "' not in message


@pytest.mark.parametrize(
    "api_name, kwargs, expected",
    [
        # guidance NaN or inf: black or unguided images otherwise
        ("/generate", dict(guidance="nan"), "guidance must be a finite number, got 'nan'"),
        ("/generate", dict(guidance="inf"), "guidance must be a finite number"),
        ("/erase", dict(guidance="-inf"), "guidance must be a finite number"),
        ("/attack", dict(guidance="nan"), "guidance must be a finite number"),
        ("/edit", dict(image=str(SAMPLE), guidance="nan"), "guidance must be a finite number"),
        # steps 0 or negative
        ("/generate", dict(steps=0), "steps must be at least 1, got 0"),
        ("/generate", dict(steps=-5), "steps must be at least 1, got -5"),
        ("/erase", dict(sample_steps=0), "sampling steps must be at least 1"),
        ("/attack", dict(steps=-1), "sampling steps must be at least 1"),
        ("/edit", dict(image=str(SAMPLE), steps=0), "steps must be at least 1"),
        # no seeds
        ("/generate", dict(seeds_text=" "), "give at least one seed"),
        ("/erase", dict(ev_seeds=0), "seeds per prompt must be at least 1, got 0"),
        # an empty source prompt
        ("/edit", dict(image=str(SAMPLE), source="   "), "type a source prompt"),
        # settings fields of the wrong type: the fields and 'More settings'
        ("/erase", dict(lr="abc"), "Learning rate must be a number, got 'abc'"),
        ("/erase", dict(iterations=1.5), "Iterations must be a whole number, got 1.5"),
        ("/erase", dict(more_json='{"lr": "abc"}'), "lr must be a number, got 'abc'"),
        ("/erase", dict(more_json='{"iterations": 1.5}'), "iterations must be a whole number, got 1.5"),
        ("/erase", dict(more_json='{"seed": "zero"}'), "seed must be a whole number, got 'zero'"),
        ("/erase", dict(more_json='{"no_such_setting": 1}'), "esd-x has no setting no_such_setting"),
        ("/erase", dict(method="doco", anchor_text="a square", more_json='{"hflip": "no"}'), "hflip must be true or false, got 'no'"),
        ("/attack", dict(iters=2.5), "attack steps per timestep must be a whole number, got 2.5"),
        ("/attack", dict(attack="random", draws="many"), "random draws must be a whole number, got 'many'"),
        ("/edit", dict(image=str(SAMPLE), inner_steps=0.5), "null-text inner steps must be a whole number"),
        ("/edit", dict(image=str(SAMPLE), method="null-text", target_null="source"), "target null must be one of shared, empty"),
        # the prompt-to-prompt syntax of inversion.options (WORD=SCALE; the old 'word: scale' is refused)
        ("/edit", dict(image=str(SAMPLE), reweight="blue: 2"), "write WORD=SCALE pairs separated by commas"),
        ("/edit", dict(image=str(SAMPLE), blend="red |"), "words on both sides of one bar"),
    ],
)
def test_bad_values_get_one_line_errors_before_any_work(app, api_name, kwargs, expected):
    s = Session(app.url)
    if isinstance(kwargs.get("image"), str):
        kwargs = {**kwargs, "image": handle_file(kwargs["image"])}
    job = s.submit(api_name, **kwargs)
    with pytest.raises(AppError) as info:
        job.result(timeout=120)
    message = str(info.value)
    assert expected in message and "\n" not in message.strip() and "Traceback" not in message
    # refused before any work: the only status shown is the error itself (no "Loading ...")
    statuses = [o[0] for o in job.outputs() if o and isinstance(o[0], str)]
    assert statuses and all("Error:" in t for t in statuses), statuses


def test_a_tiny_image_is_edited_with_a_warning(app, tmp_path):
    from PIL import Image

    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (215, 35, 35)).save(dot)
    out = Session(app.url).run("/edit", image=handle_file(str(dot)), source="a red triangle", target="a blue triangle", **EDIT)
    assert "upscaled to 32x32" in out["Edit details"] and "Reconstruction PSNR" in out["Edit status"]


def test_a_library_value_error_during_a_job_is_one_line(app):
    s = Session(app.url)
    job = s.submit("/edit", image=handle_file(str(SAMPLE)), source="a red triangle", target="a blue triangle", blend="dragon", **EDIT)
    with pytest.raises(AppError) as info:
        job.result(timeout=120)
    message = str(info.value)
    assert "dragon" in message and "\n" not in message.strip() and "Traceback" not in message
    assert "job error" in job.outputs()[-1][0]


def test_an_error_replaces_the_previous_done(app):
    """A failed job's status says Error in place of the previous job's Done (not a toast above a stale Done)."""
    s = Session(app.url)
    ok = s.run("/generate", prompts_text="a red triangle", seeds_text="0", steps=2)
    assert "job done" in ok["Generate status"]
    job = s.submit("/generate", prompts_text="a red triangle", seeds_text="0", steps=0)
    with pytest.raises(AppError):
        job.result(timeout=60)
    last = job.outputs()[-1]
    assert "job error" in last[0] and "Error: steps must be at least 1" in last[0] and "job done" not in last[0]


def test_config_carries_no_absolute_server_paths(app, erased):
    import httpx

    erased.session.run("/save_model")
    s = Session(app.url)
    choices = s.run("/refresh_models")
    values = [v for _, v in choices["Model:props"]["choices"]] + [v for _, v in choices["Model to attack:props"]["choices"]]
    assert any(v.startswith("saved:models/") for v in values)  # saved models are listed, relative to the output folder
    config = httpx.get(app.url + "config").text + json.dumps(choices, default=str)
    assert str(app.outputs) not in config
    assert str(Path(app.outputs).resolve()) not in config


def test_pickles_are_never_loaded_and_the_message_fits_the_app(app, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    message = error_of(Session(app.url), "/check_model", model=str(ckpt))
    assert "never loads pickle" in message and "--allow-pickle" not in message and "allow_pickle" not in message


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """An app built as if it listened on 0.0.0.0 (it is launched on 127.0.0.1 for the test), with one --allow-root."""
    from apps.studio_app import build_app, launch_kwargs

    model, judge = toy_model()
    outputs, allowed = tmp_path_factory.mktemp("remote-outputs"), ROOT / "assets"
    demo = build_app(outputs, model, judge_path=judge, device="cpu", host="0.0.0.0", allow_roots=[allowed])
    _, url, _ = demo.launch(prevent_thread_lock=True, **launch_kwargs())
    yield SimpleNamespace(url=url, outputs=outputs)
    demo.close()


def test_a_remote_facing_app_loads_models_only_from_allowed_roots(remote, tmp_path):
    s = Session(remote.url)
    (tmp_path / "model.ckpt").write_bytes(b"x")
    refused = {}
    for spec in ("/no/such/model", "/etc", str(ROOT / "README.md"), str(tmp_path / "model.ckpt"), "../../etc", "~"):
        refused[spec] = error_of(s, "/check_model", model=spec)
    # one answer whatever the path is: nothing tells a remote user whether it exists
    answers = {m.replace(repr(spec), "SPEC") for spec, m in refused.items()}
    assert len(answers) == 1, refused
    assert "--allow-root" in answers.pop()
    assert "no model at" not in " ".join(refused.values()) and "not a checkpoint" not in " ".join(refused.values())
    # a hub id that cannot load says no more than a refused path; an allowed root loads
    assert "could not load 'nobody/no-such-model'" in error_of(s, "/check_model", model="nobody/no-such-model")
    assert "Loaded" in s.client.predict(str(ROOT / "assets" / "toy-model"), "", api_name="/check_model")
    # the tab pickers take custom values: the same rule
    assert "--allow-root" in error_of(s, "/generate", compare="/etc", prompts_text="a red triangle", seeds_text="0", steps=1)
    assert "not a folder inside the output folder" in error_of(s, "/generate", compare="encoder:/etc", seeds_text="0", steps=1)


def test_cli_app_options(monkeypatch, capsys):
    import os

    import huggingface_hub.constants

    import apps.studio_app
    from studio.cli import build_parser

    args = build_parser().parse_args(["app", "--host", "0.0.0.0", "--allow-root", "/data/a", "--allow-root", "/data/b", "--offline"])
    assert (args.allow_root, args.offline) == (["/data/a", "/data/b"], True)
    built = {}

    class Demo:
        def launch(self, **kwargs):
            built["launch"] = kwargs

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(apps.studio_app, "build_app", lambda outputs, model, **kw: built.update(kw) or Demo())
    assert args.fn(args) == 0
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # --offline: the hub is never reached
    assert built["host"] == "0.0.0.0" and built["allow_roots"] == ["/data/a", "/data/b"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["app", "--help"])
    assert "HF_HUB_OFFLINE" in capsys.readouterr().out  # the help says what the app does with hub ids


@pytest.mark.parametrize(
    "event, shown, share",
    [
        ({"stage": "esd-x", "step": 3, "total": 12, "loss": 0.5}, "esd-x 3/12 (25%) · loss 0.5", 25.0),
        ({"step": 6, "total": 12, "loss": 0.25}, "working 6/12 (50%) · loss 0.25", 50.0),  # an eraser's older shape
        ({"i": 4, "t": 801, "x": object(), "denoised": object()}, "working 5", 0.0),  # sampling's older shape, no total
        ({"stage": "utility", "done": 2, "total": 4}, "utility 2/4 (50%)", 50.0),  # the evaluation's older shape
        ({"stage": "eval", "i": -1, "success": True, "image": object()}, "eval 0 · success True", 0.0),
    ],
)
def test_one_progress_renderer_for_every_event_shape(event, shown, share):
    from apps.ui import progress

    html_text = progress("Job", event, 10.0)
    assert f"Job: {shown} · 10 s" in html_text.replace("&amp;", "&")
    assert f"width:{share:.1f}%" in html_text
    assert "object at" not in html_text  # heavy values (images, latents) are never printed


def test_erase_tab_starts_from_the_toy_preset_and_budget_on_the_toy_model():
    """On the toy model the Erase form starts from what fits a CPU: the toy preset and evaluation budget."""
    from apps.tabs.erase import EraseForm, toy_defaults
    from erasers import EVAL_BUDGETS

    official, toy = EraseForm(), toy_defaults(EraseForm())
    budget = EVAL_BUDGETS["toy"]
    assert official.preset == "official" and toy.preset == "toy"
    assert (toy.ev_seeds, toy.ev_prompts, toy.attack_prompts) == (budget["seeds"], budget["prompts_per_form"], budget["attack_prompts"])
    assert toy.attack_iters == budget["attack_overrides"]["iterations"] < official.attack_iters
    assert toy.attack_timesteps == len(budget["attack_overrides"]["timesteps"]) < official.attack_timesteps


# ----------------------------------------------------------------------------- the Probe tab


def test_probe_tab_runs_a_registered_probe_beside_the_oracle_and_the_original(app):
    from PIL import Image

    from studio.toyworld.oracle import oracle_path

    has_oracle = (oracle_path("triangle") / "oracle.json").is_file()
    s = Session(app.url)
    out = s.run("/probe", erased="original", concept="triangle", probe="completion", budget="small")
    report = out["Probe report"]
    assert "done" in out["Probe status"] and "## completion" in report
    assert "| original |" in report and ("| oracle |" in report) == has_oracle
    assert re.search(r"\d+% \(\d+/2\) \[\d+, \d+\]", report)  # every rate with its count and Wilson interval (2 renders, small budget)
    grids = out["What each model drew"]
    assert len(grids) == 1 + has_oracle and [g["caption"] for g in grids] == ["original", "oracle"][: len(grids)]
    image = grids[0]["image"]
    assert Image.open(image if isinstance(image, str) else image["path"]).width > 128
    assert out["_updates"] >= 3  # loading, progress, final


def test_probe_tab_distance_of_the_erased_model(erased):
    from studio.toyworld.oracle import oracle_path

    if not (oracle_path("triangle") / "oracle.json").is_file():
        pytest.skip("the triangle oracle is not shipped")
    out = erased.session.run("/probe", erased=erased.key, concept="triangle", probe="distance", budget="small")
    report = out["Probe report"]
    assert "concept KID x1000 to oracle" in report and "retain KID x1000 to original" in report
    for row in ("| erased |", "| oracle |", "| original |"):
        assert row in report
    assert "erased: a triangle · esd-x" in report  # the erased model by its label, never a server path


def test_probe_tab_relearning_cancels_and_bad_input_is_one_line(app):
    s = Session(app.url)
    job = s.submit(
        "/probe", erased="original", concept="triangle", probe="relearning", budget="default", with_oracle=False, with_original=False
    )
    deadline = time.time() + 120  # until the job streams a progress line ("sampling 3/50", "relearning 2/200"): it is running
    while time.time() < deadline and not any(re.search(r"\b\d+/\d+ \(", str(o[0])) for o in job.outputs()):
        time.sleep(0.2)
    assert job.outputs(), "no progress was streamed"
    s.client.predict(api_name="/cancel_probe")
    out = s.named("/probe", job.result(timeout=120))
    assert "Cancelled after 0 of 1" in out["Probe status"]
    time.sleep(0.5)
    assert not [t for t in threading.enumerate() if t.name == "studio-probe" and t.is_alive()], "the probe kept running"
    for kwargs, expected in [
        (dict(probe="nope"), "nope is not in the list of choices"),  # the page's dropdowns refuse it before the handler
        (dict(concept="dark"), "is a background"),
        (dict(budget="huge"), "huge is not in the list of choices"),
        (dict(probe="relearning", k=0), "relearning images (k) must be at least 1"),
    ]:
        message = error_of(s, "/probe", **kwargs)
        assert expected in message and "Traceback" not in message


def test_probe_tab_plans_before_loading_anything(tmp_path):
    """What the tab will run, checked without loading a model: the registry's probe, the budget, the oracle, the component."""
    from apps.shared import Studio
    from apps.tabs.probe import ProbeForm, ProbeTab
    from studio.toyworld.oracle import oracle_path

    tab = ProbeTab(Studio(tmp_path))
    state = {"erased": {"k1": {"label": "erased: triangle · esd-u", "method": "esd-u"}}}
    with pytest.raises(ValueError, match="unknown probe 'nope'"):
        tab.plan(ProbeForm(probe="nope"), state)
    with pytest.raises(ValueError, match="unknown budget 'huge'"):
        tab.plan(ProbeForm(budget="huge"), state)
    concept, name, config, models, component, note = tab.plan(
        ProbeForm(erased="session:k1", probe="relearning", k=16, concept="wedge"), state
    )
    assert (concept, name, config.images, component) == ("triangle", "relearning", 16, "unet")  # a synonym; what ESD-u changed
    shipped = (oracle_path("triangle") / "oracle.json").is_file()
    assert [m[0] for m in models] == ["erased", "oracle", "original"] if shipped else ["erased", "original"]
    *_, models, component, note = tab.plan(ProbeForm(probe="completion", concept="striped", with_original=False), state)
    assert component is None and [m[0] for m in models] == ["original"] + (
        ["oracle"] if (oracle_path("striped") / "oracle.json").is_file() else []
    )
    assert "no oracle" in note.lower() or len(models) == 2
