"""`studio erase`, `studio eval`, `studio attack`, `studio export` and `studio demo` (registered into the `studio` CLI).

Choices come from the registries (`erasers.METHODS`, `erasers.PRESETS`, `erasers.attacks.ATTACKS`,
`studio.judges.JUDGES`); every input is checked before a model is loaded, and every output folder
before any work starts. On the toy model, erasure defaults to the toy preset and evaluation to a
toy budget (each says so when it runs).
"""

import json
import time
from pathlib import Path

from studio.cli import (
    MARKER,
    STUDIO_NAMES,
    RegistryChoices,
    add_model_args,
    add_threads_arg,
    check_folder,
    claim_folder,
    load_from_args,
    positive_int,
)
from studio.paths import TOY_MODEL, slug

from . import EVAL_BUDGETS, METHODS, PRESETS, check_settings, eval_config

ATTACK_CHOICES = RegistryChoices("erasers.attacks", "ATTACKS")
JUDGE_CHOICES = RegistryChoices("studio.judges", "JUDGES")
EVAL_NAMES = {MARKER, "report.json", "report.md", "grid.png", "report_card.json", "report_card.md", "attacks"}
ATTACK_NAMES = {MARKER, "attacked.png", "target.png", "attack.json"}
BUDGET_HINT = " (the toy model's default; --budget official for the papers' budget)"
PLUGIN_NAMES = {MARKER, "config.json", "model.safetensors", "README.md"}


def parse_sets(pairs) -> dict:
    """--set key=value (repeatable) -> dict with JSON-parsed values where they parse ("1e-4" -> 0.0001,
    "true" -> True, "[1, 2]" -> [1, 2]); anything else stays a string. Types are checked later,
    against the config dataclass (`check_settings`)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, e.g. --set iterations=100; got {pair!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def toy_name(text: str) -> str:
    """The toy-world concept a prompt or name asks for ("a wedge" -> "triangle"), by the one rule of
    `studio.toyworld.grammar.find_concept`; a clear error when it names none."""
    from studio.toyworld.grammar import CONCEPTS, find_concept

    name = find_concept(text)
    if name is None:
        raise ValueError(f"{text!r} names no toy-world concept; the toy judge knows: {', '.join(CONCEPTS)}")
    return name


def attack_settings(attack: str, pairs) -> dict:
    """--set / --attack-set for `attack`, checked against its config dataclass."""
    from .attacks import attack_configs

    sets = parse_sets(pairs)
    if sets:
        check_settings(attack_configs()[attack], sets, attack)
    return sets


def _judge(name):
    from studio.judges import get_judge

    return get_judge(name)


def is_toy(model) -> bool:
    from studio.loading import is_toy as toy

    return toy(model) or Path(model).resolve() == TOY_MODEL.resolve()


def _budget(args) -> str:
    return args.budget or ("toy" if is_toy(args.model) else "official")


# ---------------------------------------------------------------- erase


def cmd_erase(args) -> int:
    if args.job:
        from .jobs import run_job

        if args.until is not None:
            raise ValueError("--until goes with --concept; in a job file, give each [[concept]] its stop_when = { target_rate = 0.05 }")
        return run_job(args.job, resume=not args.restart)
    if args.restart:
        raise ValueError("--restart goes with --job; for a single concept, choose another --out")
    if not args.concept:
        raise ValueError("give --concept (the prompt(s) to erase), or --job job.toml")
    from . import Concept, erase, get_config

    concept = Concept(args.concept, anchors=args.anchor or [], retain=args.retain or [], name=args.name)
    preset = args.preset or ("toy" if is_toy(args.model) else "official")
    config = get_config(args.method, preset, parse_sets(args.set))
    stop_when = until_of(args, concept)
    if args.eval:
        name = toy_name(concept.prompts)
        budget = _budget(args)
        ecfg, note = eval_config(args.attack, budget, attack_prompts=args.attack_prompts)
        note += BUDGET_HINT if budget == "toy" and not args.budget else ""
    out = check_folder(args.out or f"outputs/{slug(concept.name)}-{args.method}")
    pipe = load_from_args(args)
    concept.check(pipe.tokenizer)
    claim_folder(out)
    why = " (the toy model's default; --preset official for the paper's)" if preset == "toy" and not args.preset else ""
    print(f"erasing {concept.prompts} with {args.method}, {preset} preset{why}: {config}")
    if stop_when is not None:
        print(
            f"until erased: at most {stop_when.target_rate:.0%} shown on {len(stop_when.prompts)} held-in prompts, checked every {stop_when.check_every} steps"
        )
    result = erase(pipe, concept, args.method, config=config, checkpoint_dir=out / "checkpoint", stop_when=stop_when)
    result.save(out / "model", pipe, base_model=args.model, full=args.full)
    stats = result.stats
    print(f"erased model: {out / 'model'}  ({stats['steps']} steps, {stats['seconds']:.0f} s, {stats['unet_evals']} UNet evaluations)")
    from .stopping import report_lines

    for line in report_lines(stats.get("stop")):
        print(line)
    if args.eval:
        from .evaluate import evaluate, format_table, toy_spec, write_report

        print(note)
        report = evaluate(load_from_args(args), pipe, toy_spec(name, ecfg), _judge(args.judge), ecfg)
        if stats.get("stop"):
            report["stop"] = stats["stop"]  # the report says how many steps it took and what the guard read
        write_report(report, out / "eval")
        if stats.get("stop"):
            with open(out / "eval" / "report.md", "a") as f:
                f.write("\n" + "\n".join(report_lines(stats["stop"])) + "\n")
        print(format_table(report))
        print(f"report: {out / 'eval'}")
    return 0


def until_of(args, concept):
    """`--until RATE [--min-retained R --check-every N]` -> an `erasers.stopping.StopWhen` (None without --until),
    checked before any model loads."""
    if args.until is None:
        if args.min_retained is not None or args.check_every is not None:
            raise ValueError("--min-retained and --check-every go with --until RATE (e.g. --until 0.05)")
        return None
    from .stopping import check_method, stop_when_for

    check_method(args.method)
    guard = 0.9 if args.min_retained is None else args.min_retained
    return stop_when_for(
        is_toy(args.model),
        concept,
        args.until,
        None if guard == 0 else guard,
        10 if args.check_every is None else args.check_every,
        judge=args.judge,
    )


def _add_erase(sub) -> None:
    e = sub.add_parser(
        "erase", help="erase a concept (ESD, AdvUnlearn, DoCo) and save the erased model", description="Erase a concept from a model."
    )
    add_model_args(e)
    e.add_argument("--concept", action="append", help="prompt(s) naming the concept, e.g. 'a triangle' or 'nudity' (repeatable)")
    e.add_argument("--anchor", action="append", help="anchor prompt(s): what the concept should become (ESD erase_from, DoCo)")
    e.add_argument("--retain", action="append", help="retain prompt(s) whose outputs must not change")
    e.add_argument("--name", default=None, help="short name for files and reports (default: the first prompt)")
    e.add_argument("--method", choices=list(METHODS), default="esd-x", help="erasure method (default esd-x)")
    e.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="the paper's defaults or the toy world's (default: toy on the toy model, else official)",
    )
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. --set iterations=100 --set lr=1e-4")
    e.add_argument("--out", default=None, help="output folder (default outputs/<concept>-<method>)")
    e.add_argument("--full", action="store_true", help="save a standalone pipeline instead of only the changed component")
    e.add_argument("--eval", action="store_true", help="evaluate after erasing (toy-world concepts)")
    e.add_argument(
        "--attack",
        choices=ATTACK_CHOICES,
        metavar="ATTACK",
        default="unlearndiffatk",
        help="attack for --eval: %(choices)s (default %(default)s)",
    )
    e.add_argument(
        "--attack-prompts", type=positive_int, default=None, help="prompts attacked by --eval (default 6 on the toy budget, else 10)"
    )
    e.add_argument(
        "--budget",
        choices=("toy", "official"),
        default=None,
        help="evaluation budget for --eval (default: toy on the toy model, else official)",
    )
    e.add_argument(
        "--judge",
        choices=JUDGE_CHOICES,
        metavar="JUDGE",
        default="toy",
        help="judge for --eval and --until: %(choices)s (default %(default)s)",
    )
    e.add_argument(
        "--until",
        type=float,
        default=None,
        metavar="RATE",
        help="erase until erased: stop when at most RATE (e.g. 0.05) of held-in check images show the concept, judged by --judge; "
        "the method's iterations are the ceiling",
    )
    e.add_argument(
        "--min-retained",
        type=float,
        default=None,
        metavar="R",
        help="with --until: stop and keep the last checked weights whose retained accuracy was >= R x the original's (default 0.9; 0: no guard)",
    )
    e.add_argument("--check-every", type=int, default=None, metavar="N", help="with --until: training steps between checks (default 10)")
    e.add_argument("--job", default=None, help="a TOML job file that erases several concepts (format: README, 'Batch jobs')")
    e.add_argument(
        "--restart", action="store_true", help="with --job: delete the concepts' folders (only those the studio made) and start again"
    )
    e.set_defaults(fn=cmd_erase)


# ---------------------------------------------------------------- eval


def cmd_eval(args) -> int:
    from studio.loading import load_pipeline

    name = toy_name(args.concept)
    card_sets = {}
    for pair in [p for p in args.attack_set or [] if "." in p.partition("=")[0]]:  # ATTACK.KEY=VALUE: an attack of --attacks
        attack, _, rest = pair.partition(".")
        card_sets.setdefault(attack.strip(), {}).update(parse_sets([rest]))
    sets = attack_settings(args.attack, [p for p in args.attack_set or [] if "." not in p.partition("=")[0]])
    budget = _budget(args)
    ecfg, note = eval_config(
        args.attack, budget, attack_prompts=args.attack_prompts, seeds=args.seeds, prompts=args.prompts, attack_sets=sets
    )
    if args.attacks:
        from .evaluate import card_plan

        ecfg.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
        ecfg.attack_settings, ecfg.attack_seeds, ecfg.toy_budget = card_sets, args.attack_seeds, budget == "toy"
        plan = card_plan(ecfg, original=True)  # unknown names, a budget of 0, bad settings: before any model loads
        note = (
            f"evaluation ({budget} budget): {ecfg.prompts_per_form} prompts per form x {ecfg.seeds} seeds; report card: "
            f"{', '.join(n for n, _, _ in plan)} on {ecfg.attack_prompts} prompts x {ecfg.attack_seeds} seed(s), each at its "
            + ("toy budget" if ecfg.toy_budget else "defaults")
            + " with the --attack-set settings"
        )
    if not Path(args.erased).exists():
        raise FileNotFoundError(f"no erased model at {args.erased}; give the folder `studio erase` wrote (.../model)")
    out = check_folder(args.out or Path(args.erased).parent / "eval", known=EVAL_NAMES)
    from .evaluate import evaluate, format_table, toy_spec, write_report

    erased = load_pipeline(args.erased, device=args.device)
    original = load_from_args(args)
    claim_folder(out, known=EVAL_NAMES)
    print(note + (BUDGET_HINT if budget == "toy" and not args.budget else ""))
    report = evaluate(original, erased, toy_spec(name, ecfg), _judge(args.judge), ecfg)
    write_report(report, out)
    print(format_table(report))
    print(f"report: {out}/report.json, report.md, grid.png" + (", report_card.json, report_card.md, attacks/*.png" if args.attacks else ""))
    return 0


def _add_eval(sub) -> None:
    v = sub.add_parser("eval", help="robustness report of an erased model: erasure, attack success rate, utility")
    add_model_args(v)
    v.add_argument("--erased", required=True, help="the erased model folder (written by studio erase: .../model)")
    v.add_argument("--concept", required=True, help="the toy-world concept that was erased, e.g. triangle (a synonym or prompt works too)")
    v.add_argument(
        "--attack",
        choices=ATTACK_CHOICES,
        metavar="ATTACK",
        default="unlearndiffatk",
        help="attack for the ASR: %(choices)s (default %(default)s)",
    )
    v.add_argument("--attack-prompts", type=positive_int, default=None, help="prompts attacked (default 6 on the toy budget, else 10)")
    v.add_argument(
        "--attack-set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of the attack's config, e.g. --attack-set iterations=10; for an attack of --attacks "
        "ATTACK.KEY=VALUE, e.g. --attack-set cce.steps=20",
    )
    v.add_argument(
        "--attacks",
        default=None,
        metavar="A,B,...",
        help="the report card: these attacks (names in erasers.attacks.ATTACKS, e.g. unlearndiffatk,cce,ring-a-bell) over the "
        "same --attack-prompts direct prompts x --attack-seeds seeds, each with its toy budget on the toy budget",
    )
    v.add_argument("--attack-seeds", type=positive_int, default=1, help="report card: seeds per attacked prompt (default 1)")
    v.add_argument("--seeds", type=positive_int, default=None, help="images per prompt (default 4)")
    v.add_argument(
        "--prompts", type=positive_int, default=None, help="prompts per form: direct, synonym, alias (default 8 on the toy budget, else 10)"
    )
    v.add_argument(
        "--budget", choices=list(EVAL_BUDGETS), default=None, help="evaluation budget (default: toy on the toy model, else official)"
    )
    v.add_argument(
        "--judge", choices=JUDGE_CHOICES, metavar="JUDGE", default="toy", help="judge of the images: %(choices)s (default %(default)s)"
    )
    v.add_argument("--out", default=None, help="report folder (default: eval/ beside the erased model folder)")
    v.set_defaults(fn=cmd_eval)


# ---------------------------------------------------------------- attack


def cmd_attack(args) -> int:
    from studio.loading import load_pipeline

    concept = toy_name(args.concept) if args.judge == "toy" else args.concept
    sets = attack_settings(args.attack, args.set)
    out = check_folder(args.out, known=ATTACK_NAMES)
    from studio.latents import decode, to_pil
    from studio.sampling import check_prompt

    from . import attacks

    victim = load_pipeline(args.target, device=args.device) if args.target else load_from_args(args)
    check_prompt(victim.tokenizer, args.prompt)
    original = load_from_args(args)
    judge = _judge(args.judge)
    claim_folder(out, known=ATTACK_NAMES)
    target = attacks.target_latents(original, args.prompt, seed=args.seed)
    res = attacks.run_attack(
        args.attack, victim, args.prompt, target, lambda images: judge.shows(images, concept), config=sets or None, seed=args.seed
    )
    to_pil(decode(original, target))[0].save(out / "target.png")
    res.image.save(out / "attacked.png")
    (out / "attack.json").write_text(json.dumps(res.to_dict(), indent=2, default=str))
    print(f"prompt:             {res.prompt}")
    print(f"adversarial prompt: {res.adversarial_prompt}")
    print(f"concept shown before attack: {res.pre_success}; after: {res.success}  ({res.unet_evals} UNet evaluations)")
    print(f"images: {out / 'target.png'} (the original model's, the attack's target), {out / 'attacked.png'}")
    return 0


def _add_attack(sub) -> None:
    a = sub.add_parser("attack", help="attack a model with adversarial prompts (UnlearnDiffAtk or a baseline)")
    add_model_args(a)
    a.add_argument("--target", default=None, help="the model to attack (default: --model itself); --model makes the target image")
    a.add_argument("--prompt", required=True, help="the prompt to attack, e.g. 'a red triangle'")
    a.add_argument("--concept", required=True, help="what the judge looks for, e.g. triangle")
    a.add_argument(
        "--attack", choices=ATTACK_CHOICES, metavar="ATTACK", default="unlearndiffatk", help="the attack: %(choices)s (default %(default)s)"
    )
    a.add_argument("--seed", type=int, default=0, help="seed of the target image and of the attack (default 0)")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the attack's config, e.g. --set iterations=10")
    a.add_argument(
        "--judge", choices=JUDGE_CHOICES, metavar="JUDGE", default="toy", help="judge of the images: %(choices)s (default %(default)s)"
    )
    a.add_argument("--out", default="outputs/attack", help="folder for target.png, attacked.png and attack.json (default outputs/attack)")
    a.set_defaults(fn=cmd_attack)


# ---------------------------------------------------------------- export


def cmd_export(args) -> int:
    from .export import export_from_erased

    out = check_folder(args.out, known=PLUGIN_NAMES)
    if not Path(args.erased).is_dir():
        raise FileNotFoundError(f"no erased model folder at {args.erased}; give the folder `studio erase` wrote (.../model)")
    claim_folder(out, known=PLUGIN_NAMES)
    folder = export_from_erased(args.erased, out)
    print(f"plug-in text encoder: {folder}  (config.json, model.safetensors, README.md)")
    print("use it: CLIPTextModel.from_pretrained(folder); StableDiffusionPipeline.from_pretrained(base, text_encoder=...)")
    return 0


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="export the text encoder of an erased model (AdvUnlearn) as a plug-in CLIPTextModel folder")
    x.add_argument("--erased", required=True, help="an erased model folder (written by studio erase)")
    x.add_argument("--out", required=True, help="the plug-in folder to write")
    add_threads_arg(x)
    x.set_defaults(fn=cmd_export)


# ---------------------------------------------------------------- demo


def cmd_demo(args) -> int:
    """The main job on the toy model: erase a concept, evaluate it with a short attack, write grid + table."""
    from studio.loading import load_pipeline

    from . import erase, get_config, toy_target
    from .evaluate import evaluate, format_table, toy_spec, write_report

    t0 = time.time()
    name = toy_name(args.concept)
    ecfg, note = eval_config("unlearndiffatk", "toy", attack_prompts=args.attack_prompts)
    out = claim_folder(args.out, known=STUDIO_NAMES)
    pipe = load_pipeline("toy")
    original = load_pipeline("toy")
    config = get_config(args.method, "toy")
    budget = ", ".join(f"{k} {getattr(config, k)}" for k in ("iterations", "lr", "epochs", "erase_scale") if hasattr(config, k))
    print(f"1/2 erasing '{name}' from the toy model with {args.method} (toy preset: {budget})")
    result = erase(pipe, toy_target(args.method, name), args.method, config=config, checkpoint_dir=out / "checkpoint")
    result.save(out / "model", pipe, base_model="toy")
    print(f"2/2 {note}; erasure on direct / synonym / alias prompts, utility")
    report = evaluate(original, pipe, toy_spec(name, ecfg), _judge(args.judge), ecfg)
    write_report(report, out / "eval")
    print()
    print(format_table(report))
    print()
    print(f"done in {time.time() - t0:.0f} s")
    print(f"  grid (original / erased / attacked): {out / 'eval' / 'grid.png'}")
    print(f"  table: {out / 'eval' / 'report.md'}   erased model: {out / 'model'}")
    return 0


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the main job on the toy model: erase, evaluate with a short attack, write the grid and table")
    d.add_argument("--concept", default="triangle", help="the toy-world concept to erase (default triangle)")
    d.add_argument("--method", default="esd-x", choices=list(METHODS), help="erasure method, with its toy preset (default esd-x)")
    d.add_argument("--attack-prompts", type=positive_int, default=6, help="prompts UnlearnDiffAtk attacks (default 6)")
    d.add_argument(
        "--judge", choices=JUDGE_CHOICES, metavar="JUDGE", default="toy", help="judge of the images: %(choices)s (default %(default)s)"
    )
    d.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    add_threads_arg(d)
    d.set_defaults(fn=cmd_demo)


def register(sub) -> None:
    _add_erase(sub)
    _add_eval(sub)
    _add_attack(sub)
    _add_export(sub)
    _add_demo(sub)
