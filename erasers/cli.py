"""`studio erase`, `studio eval`, `studio attack` and `studio demo` (registered into the `studio` CLI)."""

import json
import time
from pathlib import Path


def _parse_sets(pairs) -> dict:
    """--set key=value (repeatable) -> dict with JSON-parsed values where they parse."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def _concept_name(prompts: list) -> str:
    """The toy-world concept a prompt names, if any (for judging); else the first prompt."""
    from studio.toyworld.grammar import CONCEPTS

    for p in prompts:
        for word in p.replace(",", " ").split():
            if word in CONCEPTS:
                return word
    return prompts[0]


def cmd_erase(args) -> int:
    from studio.cli import load_from_args, slug

    from . import Concept, erase, get_config
    from .evaluate import EvalConfig, evaluate, format_table, toy_spec, write_report

    if args.job:
        from .jobs import run_job

        return run_job(args.job, resume=not args.restart)
    if not args.concept:
        raise ValueError("give --concept (the prompt(s) to erase), or --job job.toml")
    concept = Concept(args.concept, anchors=args.anchor or [], retain=args.retain or [], name=args.name)
    config = get_config(args.method, args.preset, _parse_sets(args.set))
    out = Path(args.out or f"outputs/{slug(concept.name)}-{args.method}")
    pipe = load_from_args(args)
    concept.check(pipe.tokenizer)
    print(f"erasing {concept.prompts} with {args.method} ({args.preset} preset): {config}")
    result = erase(pipe, concept, args.method, config=config, checkpoint_dir=out / "checkpoint")
    result.save(out / "model", pipe, base_model=args.model, full=args.full)
    print(f"erased model: {out / 'model'}  ({result.stats['steps']} steps, {result.stats['seconds']:.0f} s, {result.stats['unet_evals']} UNet evaluations)")
    if args.eval:
        original = load_from_args(args)
        ecfg = EvalConfig(attack=args.attack, attack_prompts=args.attack_prompts)
        report = evaluate(original, pipe, toy_spec(_concept_name(concept.prompts), ecfg), _judge(args), ecfg)
        write_report(report, out / "eval")
        print(format_table(report))
        print(f"report: {out / 'eval'}")
    return 0


def _judge(args):
    from studio.judges import get_judge

    return get_judge(getattr(args, "judge", "toy"))


def cmd_eval(args) -> int:
    from studio.cli import load_from_args
    from studio.loading import load_pipeline

    from .evaluate import EvalConfig, evaluate, format_table, toy_spec, write_report

    erased = load_pipeline(args.erased, device=args.device)
    original = load_from_args(args)
    ecfg = EvalConfig(
        attack=args.attack,
        attack_prompts=args.attack_prompts,
        seeds=args.seeds,
        prompts_per_form=args.prompts,
        attack_overrides=_parse_sets(args.attack_set),
    )
    report = evaluate(original, erased, toy_spec(args.concept, ecfg), _judge(args), ecfg)
    out = Path(args.out or Path(args.erased).parent / "eval")
    write_report(report, out)
    print(format_table(report))
    print(f"report: {out}/report.json, report.md, grid.png")
    return 0


def cmd_attack(args) -> int:
    from studio.cli import load_from_args
    from studio.loading import load_pipeline

    from . import attacks

    victim = load_pipeline(args.target, device=args.device) if args.target else load_from_args(args)
    original = load_from_args(args)
    judge = _judge(args)
    target = attacks.target_latents(original, args.prompt, seed=args.seed)
    res = attacks.run_attack(
        args.attack,
        victim,
        args.prompt,
        target,
        lambda images: judge.shows(images, args.concept),
        config=_parse_sets(args.set) or None,
        seed=args.seed,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.image.save(out / "attacked.png")
    print(f"prompt:             {res.prompt}")
    print(f"adversarial prompt: {res.adversarial_prompt}")
    print(f"concept shown before attack: {res.pre_success}; after: {res.success}  ({res.unet_evals} UNet evaluations)")
    print(f"image: {out / 'attacked.png'}")
    return 0


def cmd_demo(args) -> int:
    """The main job on the toy model: erase a concept, evaluate it with a short attack, write grid + table."""
    from studio.loading import load_pipeline

    from . import erase, get_config, toy_target
    from .evaluate import EvalConfig, evaluate, format_table, toy_spec, write_report

    t0 = time.time()
    out = Path(args.out)
    name = args.concept
    pipe = load_pipeline("toy")
    original = load_pipeline("toy")
    config = get_config(args.method, "toy")
    print(f"1/2 erasing '{name}' from the toy model with {args.method} (toy preset: {config.iterations} steps, lr {config.lr})")
    result = erase(pipe, toy_target(args.method, name), args.method, config=config, checkpoint_dir=out / "checkpoint")
    result.save(out / "model", pipe, base_model="toy")
    print(f"2/2 evaluating: erasure on direct / synonym / alias prompts, UnlearnDiffAtk on {args.attack_prompts} prompts, utility")
    ecfg = EvalConfig(seeds=4, prompts_per_form=8, attack_prompts=args.attack_prompts, attack_overrides=DEMO_ATTACK)
    report = evaluate(original, pipe, toy_spec(name, ecfg), _judge(args), ecfg)
    write_report(report, out / "eval")
    print()
    print(format_table(report))
    print()
    print(f"done in {time.time() - t0:.0f} s")
    print(f"  grid (original / erased / attacked): {out / 'eval' / 'grid.png'}")
    print(f"  table: {out / 'eval' / 'report.md'}   erased model: {out / 'model'}")
    return 0


DEMO_ATTACK = {"timesteps": (110, 310, 510, 710, 910), "iterations": 20}  # a short UnlearnDiffAtk for the demo


def cmd_export(args) -> int:
    from .export import export_from_erased

    folder = export_from_erased(args.erased, args.out)
    print(f"plug-in text encoder: {folder}  (config.json, model.safetensors, README.md)")
    print("use it: CLIPTextModel.from_pretrained(folder); StableDiffusionPipeline.from_pretrained(base, text_encoder=...)")
    return 0


def _model_args(p):
    from studio.cli import _add_model_args

    _add_model_args(p)


def register(sub) -> None:
    from . import METHODS

    e = sub.add_parser("erase", help="erase a concept (ESD, AdvUnlearn, DoCo) and save the erased model", description="Erase a concept from a model.")
    _model_args(e)
    e.add_argument("--concept", action="append", help="prompt(s) naming the concept, e.g. 'a triangle' or 'nudity' (repeatable)")
    e.add_argument("--anchor", action="append", help="anchor prompt(s): what the concept should become (ESD erase_from, DoCo)")
    e.add_argument("--retain", action="append", help="retain prompt(s) whose outputs must not change")
    e.add_argument("--name", default=None, help="short name for files and reports")
    e.add_argument("--method", choices=list(METHODS), default="esd-x")
    e.add_argument("--preset", choices=["official", "toy"], default="official", help="the paper's defaults or the toy world's preset")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. --set iterations=100 --set lr=1e-4")
    e.add_argument("--out", default=None, help="output folder (default outputs/<concept>-<method>)")
    e.add_argument("--full", action="store_true", help="save a standalone pipeline instead of only the changed component")
    e.add_argument("--eval", action="store_true", help="evaluate after erasing (toy-world concepts)")
    e.add_argument("--attack", default="unlearndiffatk", help="attack for --eval (none, random, unlearndiffatk)")
    e.add_argument("--attack-prompts", type=int, default=10)
    e.add_argument("--judge", default="toy")
    e.add_argument("--job", default=None, help="a TOML job file that erases several concepts (see README)")
    e.add_argument("--restart", action="store_true", help="with --job: ignore finished runs and checkpoints")
    e.set_defaults(fn=cmd_erase)

    v = sub.add_parser("eval", help="robustness report of an erased model: erasure, attack success rate, utility")
    _model_args(v)
    v.add_argument("--erased", required=True, help="the erased model folder")
    v.add_argument("--concept", required=True, help="the toy-world concept that was erased, e.g. triangle")
    v.add_argument("--attack", default="unlearndiffatk")
    v.add_argument("--attack-prompts", type=int, default=10)
    v.add_argument("--attack-set", action="append", metavar="KEY=VALUE", help="override an attack config field")
    v.add_argument("--seeds", type=int, default=4)
    v.add_argument("--prompts", type=int, default=10, help="prompts per form (direct, synonym, alias)")
    v.add_argument("--judge", default="toy")
    v.add_argument("--out", default=None)
    v.set_defaults(fn=cmd_eval)

    a = sub.add_parser("attack", help="attack a model with adversarial prompts (UnlearnDiffAtk or a baseline)")
    _model_args(a)
    a.add_argument("--target", default=None, help="the model to attack (default: --model itself); --model makes the target image")
    a.add_argument("--prompt", required=True)
    a.add_argument("--concept", required=True, help="what the judge looks for, e.g. triangle")
    a.add_argument("--attack", default="unlearndiffatk")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--set", action="append", metavar="KEY=VALUE")
    a.add_argument("--judge", default="toy")
    a.add_argument("--out", default="outputs/attack")
    a.set_defaults(fn=cmd_attack)

    x = sub.add_parser("export", help="export the text encoder of an erased model (AdvUnlearn) as a plug-in CLIPTextModel folder")
    x.add_argument("--erased", required=True, help="an erased model folder (written by studio erase)")
    x.add_argument("--out", required=True, help="the plug-in folder to write")
    x.set_defaults(fn=cmd_export)

    d = sub.add_parser("demo", help="the main job on the toy model: erase, evaluate with a short attack, write the grid and table")
    d.add_argument("--concept", default="triangle")
    d.add_argument("--method", default="esd-x", choices=list(METHODS))
    d.add_argument("--attack-prompts", type=int, default=6)
    d.add_argument("--judge", default="toy")
    d.add_argument("--out", default="outputs/demo")
    d.set_defaults(fn=cmd_demo)
