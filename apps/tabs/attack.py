"""The Attack tab: an attack from `erasers.attacks.ATTACKS` against any model, over a prompt set; the
adversarial prompts, the target and attacked images with the judge's verdicts, and the attack success
rate. The budget fields shown are those the attack's config has."""

import html
from dataclasses import dataclass, fields

import gradio as gr

from erasers import attacks
from studio.judges import JUDGES
from studio.sampling import Cancelled, check_prompt

from ..runner import Job
from ..shared import ORIGINAL, PICKERS, decode
from ..ui import as_float, as_int, friendly, idle, lines, loss_frame, progress, status, streamed
from .common import ATTACK_LABELS, Picked

_UA, _RT, _NA = attacks.UnlearnDiffAtkConfig(), attacks.RandomTokensConfig(), attacks.NoAttackConfig()
# the app's budget fields: config field -> (form field, what the page calls it, lowest value)
BUDGET = {
    "num_tokens": ("num_tokens", "prefix tokens", 1),
    "num_timesteps": ("timesteps", "attack timesteps", 1),
    "iterations": ("iters", "attack steps per timestep", 1),
    "draws": ("draws", "random draws", 0),
}


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
                choices = [(ATTACK_LABELS.get(a, (a, a))[0], a) for a in attacks.ATTACKS]
                c["attack"] = gr.Dropdown(choices, value=f.attack, label="Attack", elem_id="attack-attack")
                with gr.Row():
                    c["num_tokens"] = gr.Number(f.num_tokens, label="Prefix tokens (k)", elem_id="attack-tokens")
                    c["timesteps"] = gr.Number(f.timesteps, label="Timesteps", elem_id="attack-timesteps")
                    c["iters"] = gr.Number(f.iters, label="Steps per timestep", elem_id="attack-iters")
                    c["draws"] = gr.Number(f.draws, label="Random draws", visible=False, elem_id="attack-draws")
                with gr.Row():
                    c["steps"] = gr.Number(f.steps, label="Sampling steps", elem_id="attack-steps")
                    c["guidance"] = gr.Number(f.guidance, label="Guidance scale")
                    c["seed"] = gr.Number(f.seed, label="Seed")
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
        c["attack"].change(budget_fields, [c["attack"]], budget, api_visibility="private", **light)

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
        cfg = attack_overrides(form.attack, steps, guidance, **budget)
        attacks.make_config(form.attack, cfg)  # bad settings fail before any work
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
                    config=cfg,
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
            results = job.result
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
            "asr": asr_text(results, attack, label),
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
    cell = 128 if max(rows[0][1].size) <= 64 else 192
    return make_grid(images, len(rows), 2, row_labels=labels, col_labels=["target (original)", "attacked"], captions=captions, cell=cell)


def attack_table(results):
    import pandas as pd

    rows = [[r.prompt, r.adversarial_prompt, "yes" if r.pre_success else "no", "yes" if r.success else "no", r.unet_evals] for r in results]
    return pd.DataFrame(rows, columns=["prompt", "adversarial prompt", "shown before", "shown after", "UNet evals"])


def asr_text(results, attack, label) -> str:
    a = attacks.asr(results)
    return (
        f"**Attack success rate {a['asr']:.0%}** over {a['n']} prompt(s) ({attack} on {html.escape(label)}); "
        f"{a['pre_successes']} showed the concept without any attack (pre-attack rate {a['pre_asr']:.0%}), "
        f"{a['post_successes']} more after the attack."
    )
