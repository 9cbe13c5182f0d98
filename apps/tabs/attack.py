"""The Attack tab: any attack of the registry `erasers.attacks.ATTACKS` against any model, over a prompt
set; the adversarial prompts, the target and attacked images with the judge's verdicts, and the attack
success rate with its count and 95% Wilson interval. The quick budget fields shown are those the attack's
config has; every other field of its config is listed in the settings box with its value (its toy budget
on the toy model) when the attack is picked, and the box takes `key = value` lines for what the user
changes. Per-prompt attacks run prompt after prompt with live images; attacks over the whole set (CCE,
Ring-A-Bell ...) run once through `erasers.attacks.run_many`. No list of attacks is kept here."""

import html
import json
from dataclasses import dataclass, fields, replace

import gradio as gr

from erasers import attacks, check_settings
from studio.judges import JUDGES
from studio.loading import is_toy
from studio.sampling import Cancelled, check_prompt
from studio.stats import Rate

from ..runner import Job
from ..shared import ORIGINAL, PICKERS, decode
from ..ui import as_float, as_int, friendly, idle, lines, loss_frame, progress, status, streamed
from .common import Picked

_UA, _RT, _NA = attacks.UnlearnDiffAtkConfig(), attacks.RandomTokensConfig(), attacks.NoAttackConfig()
# the app's budget fields: config field -> (form field, what the page calls it, lowest value)
BUDGET = {
    "num_tokens": ("num_tokens", "prefix tokens", 1),
    "num_timesteps": ("timesteps", "attack timesteps", 1),
    "iterations": ("iters", "attack steps per timestep", 1),
    "draws": ("draws", "random draws", 0),
}
QUICK = set(BUDGET) | {"num_inference_steps", "guidance_scale"}  # fields with a box of their own


@dataclass
class AttackForm(Picked):
    victim: str = ORIGINAL
    concept: str = "triangle"
    prompts_text: str = "a red triangle"
    attack: str = "unlearndiffatk"
    num_tokens: int = _UA.num_tokens
    iters: int = _UA.iterations
    timesteps: int = _UA.num_timesteps
    draws: int = _RT.draws
    steps: int = _NA.num_inference_steps
    guidance: float = _NA.guidance_scale
    seed: int = 0
    judge_name: str = "toy"
    settings: str = ""  # the attack's other config fields, key = value per line (blank: its defaults)


def attack_overrides(attack: str, steps, guidance, **budget) -> dict:
    """The fields of the attack's config from the app's budget fields (those the config has; None: its default)."""
    has = {f.name for f in fields(attacks.make_config(attack))}  # an unknown attack fails here, naming the known ones
    cfg = {"num_inference_steps": as_int(steps, "sampling steps", 1), "guidance_scale": as_float(guidance, "guidance")}
    for name, value in budget.items():
        if name in has and value is not None:
            cfg[name] = as_int(value, BUDGET[name][1], BUDGET[name][2])
    return {k: v for k, v in cfg.items() if k in has}


def budget_fields(attack):
    """Which budget fields an attack uses: those its config has."""
    has = {f.name for f in fields(attacks.make_config(attack))}
    return [gr.update(visible=name in has) for name in BUDGET]


def attack_label(name: str) -> str:
    """What the page calls a registered attack: its label and what it needs."""
    spec = attacks.get(name)
    needs = "gradients of the attacked model" if spec.access == "white-box" else "prompts only" if spec.access == "black-box" else "nothing"
    return f"{spec.label} ({needs})"


def base_config(name: str, toy: bool = True):
    """The config an attack starts from: its toy budget on the toy model where its config has one (`toy()`),
    else its defaults; the quick fields and the settings box go on top."""
    cls = attacks.get(name).config
    return cls.toy() if toy and callable(getattr(cls, "toy", None)) else cls()


def settings_text(name: str, toy: bool = True) -> str:
    """The attack's config fields that have no box of their own, as 'key = value' lines (JSON values)."""
    config = base_config(name, toy)
    return "\n".join(f"{f.name} = {json.dumps(getattr(config, f.name), default=str)}" for f in fields(config) if f.name not in QUICK)


def parse_settings(name: str, text: str) -> dict:
    """'key = value' lines -> {field: value} (JSON values; anything else a string), checked against the
    attack's config: an unknown field or a value of the wrong type is a clear error."""
    out = {}
    for n, line in enumerate(lines(text), 1):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"attack settings line {n} ({line!r}) is not 'key = value', e.g. 'lr = 0.01'")
        value = value.strip()
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    if out:
        check_settings(attacks.get(name).config, out, name)
    return out


def attack_info(name: str) -> str:
    """One line about the attack: what it needs, its unit of cost, and the first line of its config's doc."""
    spec = attacks.get(name)
    doc = ((spec.config.__doc__ or "").strip().splitlines() or [""])[0]
    unit = "per prompt" if spec.unit == "prompt" else "once for the whole prompt set"
    needs = "; it uses the original model, the one picked at the top" if spec.needs_original else ""
    return f"**{html.escape(spec.label, quote=False)}** ({spec.access}, cost {unit}{needs}). {html.escape(doc, quote=False)}"


def picked(attack, toy=True):
    """What changes when an attack is picked: the quick fields it has, its settings (shown greyed, as the
    box's placeholder: the box holds only what the user changes), its description."""
    return [*budget_fields(attack), gr.update(value="", placeholder=settings_text(attack, toy)), attack_info(attack)]


def toy_prompts(concept, n=10):
    from studio.toyworld.captions import prompts_for
    from studio.toyworld.grammar import concept as toy_concept

    c = toy_concept((concept or "").strip() or "triangle")
    return "\n".join(p for p, _ in prompts_for(c.name, "direct", as_int(n, "number of prompts", 1)))


class AttackTab:
    name, title = "attack", "Attack"
    outputs = ("status", "gallery", "table", "asr", "plot")

    def __init__(self, studio):
        self.studio = studio
        self.toy = is_toy(getattr(studio, "default_model", "toy"))

    def layout(self) -> dict:
        from erasers.evaluate import EvalConfig

        f, c, n_fill = AttackForm(), {}, EvalConfig().attack_prompts
        with gr.Row():
            with gr.Column(scale=2):
                c["victim"] = gr.Dropdown(
                    self.studio.tab_choices({"erased": {}}, PICKERS["attack.victim"]),
                    value=f.victim,
                    label="Model to attack",
                    allow_custom_value=True,
                    elem_id="attack-model",
                    info="the target images come from the model picked at the top",
                )
                with gr.Row():
                    c["concept"] = gr.Textbox(f.concept, label="Concept the judge looks for", scale=2, elem_id="attack-concept")
                    c["judge_name"] = gr.Dropdown(list(JUDGES), value=f.judge_name, label="Judge", scale=1)
                c["prompts_text"] = gr.Textbox(
                    f.prompts_text,
                    lines=4,
                    label="Prompts",
                    elem_id="attack-prompts",
                    info="one per line; with several, the attack success rate is computed over them",
                )
                c["fill"] = gr.Button(f"Fill in {n_fill} toy-world prompts for this concept", size="sm", elem_id="attack-fill")
                choices = [(attack_label(a), a) for a in attacks.ATTACKS]
                c["attack"] = gr.Dropdown(choices, value=f.attack, label="Attack", elem_id="attack-attack")
                c["attack_info"] = gr.Markdown(attack_info(f.attack), elem_id="attack-info")
                with gr.Row():
                    c["num_tokens"] = gr.Number(f.num_tokens, label="Prefix tokens (k)", elem_id="attack-tokens")
                    c["timesteps"] = gr.Number(f.timesteps, label="Timesteps", elem_id="attack-timesteps")
                    c["iters"] = gr.Number(f.iters, label="Steps per timestep", elem_id="attack-iters")
                    c["draws"] = gr.Number(f.draws, label="Random draws", visible=False, elem_id="attack-draws")
                with gr.Row():
                    c["steps"] = gr.Number(f.steps, label="Sampling steps", elem_id="attack-steps")
                    c["guidance"] = gr.Number(f.guidance, label="Guidance scale")
                    c["seed"] = gr.Number(f.seed, label="Seed")
                c["settings"] = gr.Textbox(
                    f.settings,
                    placeholder=settings_text(f.attack, self.toy),
                    lines=4,
                    max_lines=12,
                    label="Attack settings",
                    info="the other fields of the attack's config and their values (its toy budget on the toy model); "
                    "type key = value lines to change some",
                    elem_id="attack-settings",
                )
                with gr.Row():
                    c["run"] = gr.Button("Attack", variant="primary", elem_id="attack-run")
                    c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="attack-cancel")
            with gr.Column(scale=3):
                c["status"] = gr.HTML(
                    idle("Pick the model to attack and a prompt, then press Attack."), label="Attack status", elem_id="attack-status"
                )
                c["asr"] = gr.Markdown("", label="Attack success rate", elem_id="attack-asr")
                c["gallery"] = gr.Image(
                    label="Target (original model) and attacked images",
                    show_label=False,
                    format="png",
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    visible=False,
                    elem_id="attack-gallery",
                )
                c["table"] = gr.Dataframe(
                    headers=["prompt", "adversarial prompt", "shown before", "shown after", "UNet evals"],
                    label="Adversarial prompts",
                    interactive=False,
                    wrap=True,
                    elem_id="attack-table",
                    column_widths=["26%", "38%", "11%", "11%", "14%"],
                )
                c["plot"] = gr.LinePlot(
                    x="step",
                    y="loss",
                    title="Attack loss (gradient steps)",
                    height=200,
                    label="Attack loss",
                    show_label=False,
                    x_axis_format="d",
                    visible=False,
                    elem_id="attack-plot",
                )
        return c

    def wire(self, page, light: dict, compute: dict) -> None:
        c = page.tab(self.name)
        outputs = page.outputs(self.name, self.outputs)
        inputs = page.form_inputs(self.name, AttackForm)
        c["run"].click(
            streamed(self.run, outputs, AttackForm),
            [page["state"]],
            list(outputs.values()),
            inputs_kwargs=inputs,
            api_name="attack",
            **compute,
        )
        c["cancel"].click(self.studio.canceller("attack"), None, None, api_name="cancel_attack", **light)
        c["fill"].click(friendly(toy_prompts), [c["concept"]], [c["prompts_text"]], api_name="toy_prompts", **light)
        budget = [c[BUDGET[name][0]] for name in BUDGET]
        c["attack"].change(
            lambda a: picked(a, self.toy), [c["attack"]], [*budget, c["settings"], c["attack_info"]], api_visibility="private", **light
        )

    def run(self, form, state, session):
        prompts = lines(form.prompts_text)
        if not prompts:
            raise ValueError("type at least one prompt to attack with, e.g. 'a red triangle' (one per line)")
        concept = (form.concept or "").strip()
        if not concept:
            raise ValueError("type the concept the judge should look for, e.g. 'triangle'")
        if form.judge_name == "toy":
            from studio.toyworld.grammar import concept as toy_concept

            concept = toy_concept(concept).name  # a clear error for words the toy judge does not know
        steps, guidance, seed = as_int(form.steps, "sampling steps", 1), as_float(form.guidance, "guidance"), as_int(form.seed, "seed")
        budget = {name: getattr(form, field) for name, (field, _, _) in BUDGET.items()}
        cfg = {**attack_overrides(form.attack, steps, guidance, **budget), **parse_settings(form.attack, form.settings)}
        spec = attacks.get(form.attack)
        config = replace(base_config(form.attack, self.toy), **cfg)  # bad settings fail before any work
        yield {
            "status": status(0, 1, "Loading the models ..."),
            "gallery": gr.update(value=None, visible=False),
            "table": None,
            "asr": "",
            "plot": gr.update(value=None, visible=False),
        }
        original, _ = self.studio.resolve(ORIGINAL, form.model, form.text_encoder, state)
        pipe, label = self.studio.resolve(form.victim, form.model, form.text_encoder, state)
        for p in prompts:
            check_prompt(pipe.tokenizer, p)
        judge = self.studio.judge(form.judge_name)

        def work(emit, cancel):
            if spec.run is None:  # an attack over the whole prompt set: one run_many, its events as they come
                run = attacks.run_many(
                    form.attack,
                    pipe,
                    prompts,
                    [seed] * len(prompts),
                    lambda images: judge.shows(images, concept),
                    config,
                    original=original,
                    concept=concept,
                    callback=lambda info: emit(("event", info.get("prompt_index", 1) - 1, info)),
                    cancel=cancel,
                    progress=False,
                )
                for i, res in enumerate(run.results):
                    emit(("target", i, {"prompt": res.prompt, "image": None}))
                    emit(("result", i, res))
                return run
            results = []
            for i, prompt in enumerate(prompts):
                target = attacks.target_latents(original, prompt, seed=seed, num_inference_steps=steps, guidance_scale=guidance)
                emit(("target", i, {"prompt": prompt, "image": decode(original, target)}))
                res = attacks.run_attack(
                    form.attack,
                    pipe,
                    prompt,
                    target,
                    lambda images: judge.shows(images, concept),
                    config=config,
                    seed=seed,
                    callback=lambda info, i=i: emit(("event", i, info)),
                    cancel=cancel,
                    progress=False,
                )
                results.append(res)
                emit(("result", i, res))
            return results

        with self.studio.cancels.running(session, "attack") as cancel:
            yield from self.stream(Job(work, cancel, name="studio-attack"), form.attack, label, prompts, concept)

    def stream(self, job, attack, label, prompts, concept):
        losses, results, targets, current, latest = [], [], [], {}, None
        try:
            for batch in job.stream():
                changed = False
                for kind, i, payload in batch:
                    if kind == "target":
                        current, changed = {"prompt": payload["prompt"], "target": payload["image"]}, True
                    elif kind == "result":
                        results.append(payload)
                        targets.append(current.get("target"))
                        current, latest, changed = {}, None, True
                    else:
                        latest = payload
                        if "loss" in payload:
                            losses.append(payload["loss"])
                        if "image" in payload and "success" in payload:  # an image the judge looked at
                            adv = payload.get("text") or payload.get("adversarial_prompt") or payload.get("prompt")
                            current.update(image=payload["image"], ok=payload["success"], adv=adv if isinstance(adv, str) else "")
                            changed = True
                n = min(len(results) + 1, len(prompts))
                upd = {
                    "status": progress(
                        f"{attack} on {label}, prompt {n} / {len(prompts)}", latest, job.seconds, part=(len(results), len(prompts))
                    )
                }
                if changed:
                    gallery = attack_grid(results, targets, current, concept)
                    upd["gallery"] = gr.update(value=gallery, visible=gallery is not None)
                    upd["table"] = attack_table(results)
                if losses and batch:
                    upd["plot"] = gr.update(value=loss_frame(list(range(1, len(losses) + 1)), losses), visible=True)
                yield upd
            out = job.result
            setup = out.setup_unet_evals if isinstance(out, attacks.AttackRun) else 0
            results = out.results if isinstance(out, attacks.AttackRun) else out
        except Cancelled:
            yield {
                "status": status(len(results), len(prompts), f"Cancelled after {len(results)} of {len(prompts)} prompts.", "cancelled"),
                "asr": asr_text(results, attack, label) if results else "",
            }
            return
        yield {
            "status": status(1, 1, f"{attack} on {label}: {len(results)} prompt(s) in {job.seconds:.0f} s.", "done"),
            "gallery": gr.update(value=attack_grid(results, targets, {}, concept), visible=True),
            "table": attack_table(results),
            "asr": asr_text(results, attack, label, setup),
        }


def attack_grid(results, targets, current, concept):
    """One row per prompt: the original model's image (the attack's target) and the attacked model's image of
    the adversarial prompt, with the judge's verdict; the running prompt last."""
    from studio.images import make_grid

    rows = [(r.prompt, t, r.image, r.success, r.adversarial_prompt) for r, t in zip(results, targets)]
    if current.get("target") is not None:
        rows.append(
            (current.get("prompt", ""), current["target"], current.get("image"), current.get("ok"), current.get("adv", "") + " (running)")
        )
    if not rows:
        return None
    images, labels, captions = [], [], []
    for prompt, target, image, ok, adv in rows:
        images += [target, image]
        if adv and adv != prompt:
            labels.append(f"{prompt}  |  attack: {adv}")
        else:
            labels.append(f"{prompt}  |  shown without an attack" if ok else prompt)
        captions += ["", "" if image is None else f"{concept}: {'yes' if ok else 'no'}"]
    first = next((im for row in rows for im in row[1:3] if im is not None), None)
    cell = 128 if first is None or max(first.size) <= 64 else 192
    return make_grid(images, len(rows), 2, row_labels=labels, col_labels=["target (original)", "attacked"], captions=captions, cell=cell)


def attack_table(results):
    import pandas as pd

    rows = [[r.prompt, r.adversarial_prompt, "yes" if r.pre_success else "no", "yes" if r.success else "no", r.unet_evals] for r in results]
    return pd.DataFrame(rows, columns=["prompt", "adversarial prompt", "shown before", "shown after", "UNet evals"])


def asr_text(results, attack, label, setup_unet_evals: int = 0) -> str:
    """The attack success rate with its count and 95% Wilson interval, the pre-attack rate, and the cost."""
    a = attacks.asr(results)
    rate, pre = Rate(a["pre_successes"] + a["post_successes"], a["n"]), Rate(a["pre_successes"], a["n"])
    evals = sum(r.unet_evals for r in results) + setup_unet_evals
    setup = f", {setup_unet_evals:,} of them once for the whole set" if setup_unet_evals else ""
    return (
        f"**Attack success rate {rate}** over {a['n']} prompt(s) ({attack} on {html.escape(label)}); "
        f"{a['pre_successes']} showed the concept without any attack (pre-attack rate {pre}), "
        f"{a['post_successes']} more after the attack. Cost: {evals:,} UNet evaluations{setup}. "
        "The interval is the 95% Wilson interval: with few prompts it is wide."
    )
