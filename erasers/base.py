"""The shape every erasure method shares.

    concept = Concept(["a triangle"])                     # target prompt(s), optional anchors / retain prompts
    result = esd.erase(pipe, concept, ESDConfig())        # any method: erase(pipe, concept, config, ...)
    result.apply(pipe)                                     # the erased weights, into a pipeline
    result.save("outputs/triangle-esd-x", base_model="toy")  # a folder that load_pipeline() reads back

A method's `erase` trains in place on `pipe` (the trained module ends up erased) and returns an
`ErasureResult` that holds only the parameters it changed. Every method runs its steps through
`TrainLoop`, which gives them the same progress bar, callback, cancellation and atomic checkpoints:
a run killed at any point and started again with the same `checkpoint_dir` resumes from the last
checkpoint and ends with the same weights as an uninterrupted run (randomness is drawn per step from
`(seed, step)`, so nothing depends on how many steps ran in this process). It checkpoints every
`every` steps and at least every `checkpoint_seconds` of wall time, and on SIGINT / SIGTERM (Ctrl-C,
`kill`) it saves a checkpoint at the step boundary and raises `Interrupted`, whose message says how
to resume. It reports through `callback` in the one progress shape of `studio.progress`:
`{"stage": "esd-x", "step": 12, "total": 200, "loss": 0.031, ...}`.

With a stop rule (`stop=StopRule(...)`, from an eraser's `stop_when=`; see `erasers.stopping`) the loop checks
the model every `check_every` steps, before the first step and after the last, stops early when the concept is
gone, or stops and restores the last weights that met the utility guard when utility falls; the rule's state
and the last good weights live in the checkpoint folder, so a killed run resumes with them.

`ErasureResult.save(folder)` never deletes what it did not write: it replaces a folder only when it
is empty or carries the studio's marker (`studio.paths.MARKER`) or `erasure.json`.
"""

import json
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from studio.checkpoint import ParamDict, atomic_save_tensors, load_checkpoint, save_checkpoint
from studio.loading import ERASURE_FILE
from studio.paths import MARKER, TOY_MODEL
from studio.progress import event
from studio.sampling import Cancelled, check_prompt, is_cancelled


class Interrupted(Cancelled):
    """A run stopped by SIGINT / SIGTERM after saving its checkpoint; the message says how to resume."""


@dataclass
class Concept:
    """What to erase. `prompts` name the concept (e.g. ["nudity"] or ["a triangle"]); one is drawn per step."""

    prompts: list
    anchors: list = field(default_factory=list)  # what the concept should become (ESD's erase_from, DoCo's anchor)
    retain: list = field(default_factory=list)  # prompts whose outputs must not change (AdvUnlearn, evaluation)
    name: str | None = None  # short name for files and reports; default: the first prompt

    def __post_init__(self):
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        self.prompts = [p.strip() for p in self.prompts if p and p.strip()]
        if not self.prompts:
            raise ValueError("the concept to erase is empty: give at least one non-empty prompt, e.g. Concept(['a triangle'])")
        self.anchors = [self.anchors] if isinstance(self.anchors, str) else list(self.anchors)
        self.retain = [self.retain] if isinstance(self.retain, str) else list(self.retain)
        self.name = self.name or self.prompts[0]

    def check(self, tokenizer) -> None:
        for p in self.prompts + self.anchors + self.retain:
            check_prompt(tokenizer, p)


def merge_concepts(concept) -> Concept:
    """One Concept from one or several: prompts in order, each with its own guide (anchors), retain joined
    (less any prompt that one of the concepts erases). UCE and RECE solve for all of them at once; ESD and
    AdvUnlearn draw their prompts from the joined set (the shared prompt set of several concepts)."""
    if isinstance(concept, Concept):
        return concept
    concepts = list(concept)
    if not concepts or not all(isinstance(c, Concept) for c in concepts):
        raise ValueError("give a Concept or a list of Concepts to erase")
    if len(concepts) == 1:
        return concepts[0]
    prompts, anchors = [], []
    for c in concepts:
        prompts += c.prompts
        if not c.anchors:
            anchors += [None] * len(c.prompts)  # None: the config's guide
        elif len(c.anchors) == 1:
            anchors += c.anchors * len(c.prompts)
        elif len(c.anchors) == len(c.prompts):
            anchors += c.anchors
        else:
            raise ValueError(f"concept {c.name!r} has {len(c.anchors)} anchors for {len(c.prompts)} prompts; give one, or one per prompt")
    if all(a is None for a in anchors):
        anchors = []
    erased = {p.lower() for p in prompts}  # one concept's retain set may name another that is erased too
    retain = list(dict.fromkeys(r for c in concepts for r in c.retain if r.lower() not in erased))
    return Concept(prompts, anchors=anchors, retain=retain, name="+".join(c.name for c in concepts))


@dataclass
class ErasureResult:
    method: str
    concept: Concept
    config: dict
    component: str  # "unet" or "text_encoder": the module that changed
    weights: dict  # name -> tensor, only the parameters the method trained
    stats: dict = field(default_factory=dict)  # steps, seconds, unet_evals, final loss ...

    def apply(self, pipe):
        """Load the erased weights into `pipe` (in place) and return it."""
        module = getattr(pipe, self.component)
        params = dict(module.named_parameters())
        missing = [k for k in self.weights if k not in params]
        if missing:
            raise KeyError(f"the pipeline's {self.component} has no parameters {missing[:3]}; is it the same architecture?")
        with torch.no_grad():
            for k, v in self.weights.items():
                params[k].copy_(v.to(params[k].device, params[k].dtype))
        return pipe

    def save(self, folder, pipe, base_model: str = "toy", full: bool = False) -> Path:
        """Write an erased model folder that `load_pipeline(folder)` reads as a complete pipeline.

        By default only the changed component is written (e.g. `unet/`), beside `erasure.json` that names
        the base model; `full=True` writes a standalone diffusers pipeline instead (plus `erasure.json`).
        `pipe` must hold the erased weights (call `apply` first if it does not). An existing `folder`
        is replaced only when the studio wrote it (see `replaceable`); anything else raises ValueError
        before a file is written.
        """
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        for path in (folder, tmp):
            if not replaceable(path):
                raise ValueError(
                    f"{path} exists and holds files the studio did not write; nothing was changed. "
                    "Save to a new or empty folder, or move those files away first."
                )
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / MARKER).write_text("written by Erasure Studio (an erased model); saving again may replace this folder\n")
        if full:
            pipe.save_pretrained(tmp, safe_serialization=True)
        else:
            getattr(pipe, self.component).save_pretrained(tmp / self.component, safe_serialization=True)
        (tmp / ERASURE_FILE).write_text(json.dumps(self.info(base_model, full), indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder

    def info(self, base_model="toy", full: bool = False) -> dict:
        """What `erasure.json` holds: the base model, the components written, method, concept, config, stats."""
        base = str(base_model)
        return {
            "format": "erasure-studio/1",
            "base_model": "toy" if base in ("toy", str(TOY_MODEL), TOY_MODEL.name) else base,
            "components": [] if full else [self.component],
            "method": self.method,
            "concept": asdict(self.concept),
            "config": self.config,
            "stats": self.stats,
        }


def replaceable(folder) -> bool:
    """True when `folder` may be deleted and written again: it does not exist, is an empty folder, or
    the studio wrote it (it holds `studio.paths.MARKER` or `erasure.json`)."""
    folder = Path(folder)
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    return not any(folder.iterdir()) or (folder / MARKER).is_file() or (folder / ERASURE_FILE).is_file()


def trainable_named(module: torch.nn.Module, names: list) -> dict:
    params = dict(module.named_parameters())
    return {n: params[n] for n in names}


def freeze_all_but(module: torch.nn.Module, names: list) -> None:
    keep = set(names)
    for n, p in module.named_parameters():
        p.requires_grad_(n in keep)


class TrainLoop:
    """Progress, callback, cancellation, atomic checkpoints and exact resume for an erasure's steps.

        loop = TrainLoop("ESD (xattn)", total=200, params=trained, optimizers={"opt": opt}, checkpoint_dir=d, every=50, stage="esd-x")
        for step, rng, gen in loop:            # rng: numpy Generator, gen: torch Generator, both from (seed, step)
            loss = ...
            loop.log(loss=loss.item())
        loop.finish()

    With a `checkpoint_dir` it saves every `every` steps, at the last step, whenever
    `checkpoint_seconds` of wall time passed since the last save (one process only: data-parallel
    runs save by steps, so that all processes agree), on cancel, and on SIGINT / SIGTERM, after
    which it raises `Interrupted`. The signal handlers are installed only in the main thread, while
    the loop runs, and the previous handlers come back afterwards; a second signal stops at once.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        params: dict,
        optimizers: dict,
        *,
        seed: int = 0,
        checkpoint_dir=None,
        every: int = 50,
        checkpoint_seconds: float | None = 60.0,
        callback=None,
        cancel=None,
        progress: bool = True,
        extra_modules: dict | None = None,
        meta: dict | None = None,
        device="cpu",
        stage: str | None = None,
        stop=None,
    ):
        self.desc, self.total, self.seed = desc, total, seed
        self.stage = stage or desc  # the progress events' stage: the method's name
        self.modules = {"trained": ParamDict(params), **(extra_modules or {})}
        self.optimizers = optimizers
        self.path = Path(checkpoint_dir) / "checkpoint.safetensors" if checkpoint_dir else None
        self.every, self.checkpoint_seconds = every, checkpoint_seconds
        self.callback, self.cancel, self.progress = callback, cancel, progress
        self.meta = dict(meta or {})
        self.stop = stop  # an erasers.stopping.StopRule, or None
        self.good = None  # with a stop rule: the trained tensors of the last check that met the utility guard
        if stop is not None:
            self.meta["stop_when"] = stop.when.settings()
        self.device = device
        self.rank, self.world_size = _distributed()
        self.trained = list(params.values())
        self.step = 0
        self.stats: dict = {"unet_evals": 0, "losses": []}
        self.started = self.last_save = time.time()
        self.elapsed_before = 0.0
        self.resumed_from = 0
        self.signal_received = None  # the name of the signal that asked the loop to stop
        if stop is not None:
            self.stats["stop"] = stop.state
        if self.path is not None and self.path.is_file():
            self._resume()
        self._info: dict = {}

    def _resume(self) -> None:
        meta, _ = load_checkpoint(self.path, self.modules, self.optimizers)
        if meta.get("config") != self.meta.get("config"):
            raise ValueError(
                f"{self.path} was written by a run with other settings; delete it or use another checkpoint_dir. "
                f"checkpoint: {meta.get('config')}, now: {self.meta.get('config')}"
            )
        if meta.get("stop_when") != self.meta.get("stop_when"):
            raise ValueError(
                f"{self.path} was written by a run with another stop rule; delete it or use another checkpoint_dir. "
                f"checkpoint: {meta.get('stop_when')}, now: {self.meta.get('stop_when')}"
            )
        self.step = self.resumed_from = meta["step"]
        self.stats = meta.get("stats", self.stats)
        self.elapsed_before = meta.get("seconds", 0.0)
        if self.stop is not None:
            self._resume_stop()

    # ---------------------------------------------------------------- the stop rule

    def _stop_file(self, name: str) -> Path:
        return self.path.parent / name

    def _resume_stop(self) -> None:
        """The rule's state from the checkpoint; the last good weights and the original's retain images from their files."""
        from safetensors import safe_open

        self.stop.state = self.stats["stop"]
        good = self._stop_file("stop_good.safetensors")
        if good.is_file():
            with safe_open(str(good), framework="pt") as f:
                if int((f.metadata() or {}).get("step", -1)) == self.stop.state.get("good_step"):
                    self.good = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        reference = self._stop_file("stop_reference.safetensors")
        if reference.is_file():
            with safe_open(str(reference), framework="pt") as f:
                self.stop.reference = f.get_tensor("images").numpy()

    def _keep_good(self, step: int) -> None:
        self.good = {k: v.detach().clone() for k, v in self.modules["trained"].state_dict().items()}
        self.stop.state["good_step"] = step
        if self.path is not None and self.rank == 0:
            atomic_save_tensors(self._stop_file("stop_good.safetensors"), self.good, metadata={"step": str(step)})

    def _restore_good(self) -> None:
        if self.good is None:
            raise RuntimeError(
                f"the utility guard failed at step {self.step} but the weights of step {self.stop.state.get('good_step')} are not there "
                f"(was {self._stop_file('stop_good.safetensors') if self.path else 'the good copy'} removed?); delete the checkpoint folder and run again"
            )
        self.modules["trained"].load_state_dict(self.good)

    def _check(self, step: int) -> bool:
        """Run the stop rule's check at `step`; True when training should stop (weights already restored if so)."""
        had_reference = self.stop.reference is not None
        record = self.stop.check(step)
        self.count_unet(record["unet_evals"])
        if not had_reference and self.stop.reference is not None and self.path is not None and self.rank == 0:
            atomic_save_tensors(self._stop_file("stop_reference.safetensors"), {"images": torch.from_numpy(self.stop.reference)})
        good_step = self.stop.state["good_step"]
        if not record["guard_ok"]:
            self._restore_good()
            stopped = {"reason": "utility", "step": step, "kept_step": good_step}
        else:
            self._keep_good(step)
            stopped = None
            if record["erased"]:
                stopped = {"reason": "erased", "step": step, "kept_step": step}
            elif step >= self.total:
                stopped = {"reason": "budget", "step": step, "kept_step": step}
        self.stop.state["stopped"] = stopped
        self.stats["stop"] = self.stop.state
        if self.callback is not None:
            extras = {k: record[k] for k in ("rate", "shown", "n", "retained", "retained_ratio", "erased", "guard_ok") if k in record}
            if stopped:
                extras["stopped"] = stopped["reason"]
            self.callback(event(f"{self.stage} check", step, self.total, **{f"check_{k}": v for k, v in extras.items()}))
        if step > 0 or stopped:
            self.save()  # the rule's state and the good weights agree on disk after every check
        return stopped is not None

    def __iter__(self):
        bar = tqdm(
            range(self.step, self.total), initial=self.step, total=self.total, desc=self.desc, disable=not self.progress, leave=False
        )
        previous = self._install_handlers()
        try:
            if self.stop is not None and self.stop.state["stopped"]:  # a resumed run that had already stopped
                return
            if self.stop is not None and not self.stop.state["checks"] and self._check(self.step):
                return
            for step in bar:
                self._stop_if_asked(step)
                self.step = step
                # each data-parallel process draws its own samples; one process draws exactly as before
                key = [self.seed, step] if self.world_size == 1 else [self.seed, step, self.rank]
                rng = np.random.default_rng(key)
                gen = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + step + 7_919 * self.rank)
                random.seed(self.seed * 1_000_003 + step + 7_919 * self.rank)
                self._info = {}
                yield step, rng, gen
                self.step = step + 1
                if self._after_step(step, bar):
                    break
            if self.signal_received is not None:  # a signal during the last step: the run is saved whole, stop anyway
                self._stop_if_asked(self.total)
        finally:
            self._restore_handlers(previous)
            bar.close()

    def _after_step(self, step: int, bar) -> bool:
        if "loss" in self._info:
            self.stats["losses"].append(round(float(self._info["loss"]), 6))
            if not np.isfinite(self._info["loss"]):
                raise FloatingPointError(
                    f"{self.desc}: the loss became {self._info['loss']} at step {step}; lower the learning rate. The last checkpoint (if any) is intact."
                )
            bar.set_postfix(loss=f"{self._info['loss']:.4g}", refresh=False)
        if self.callback is not None:
            self.callback(event(self.stage, step + 1, self.total, **self._info))
        if self.stop is not None and self.stop.due(self.step, self.total):
            return self._check(self.step)  # saves the checkpoint itself
        if self.path is None:
            return False
        by_time = self.world_size == 1 and self.checkpoint_seconds is not None and time.time() - self.last_save >= self.checkpoint_seconds
        if self.step % self.every == 0 or self.step == self.total or by_time:
            self.save()
        return False

    def _stop_if_asked(self, step: int) -> None:
        if self.signal_received is not None:
            self.save()
            raise Interrupted(
                f"{self.desc} stopped by {self.signal_received} at step {step} of {self.total}; the checkpoint {self.path} "
                "holds it: run the same command again (the same output folder or checkpoint_dir) to resume from there"
            )
        if is_cancelled(self.cancel):
            self.save()
            raise Cancelled(f"{self.desc} cancelled at step {step} of {self.total}; the checkpoint resumes it")

    def _install_handlers(self) -> dict:
        """SIGINT / SIGTERM ask the loop to stop at the next step boundary (with a checkpoint to save)."""
        if self.path is None or threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            if self.signal_received is not None:  # a second signal: stop now, as Python would
                self._restore_handlers(previous)
                raise KeyboardInterrupt
            self.signal_received = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # not available here
                pass
        return previous

    @staticmethod
    def _restore_handlers(previous: dict) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
        previous.clear()

    def reduce_gradients(self, params=None) -> None:
        """Average the trained parameters' gradients (or those of `params`) over data-parallel processes
        (no-op in one process).

        Call between `backward()` and `optimizer.step()`. With `accelerate launch --num_processes N`
        every process samples its own x_t, so one step sees N samples, and all processes keep
        identical weights."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for p in self.trained if params is None else params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.world_size

    def log(self, **info) -> None:
        self._info.update(info)

    def count_unet(self, n: int) -> None:
        self.stats["unet_evals"] += n

    def seconds(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def save(self) -> None:
        if self.path is None:
            return
        self.last_save = time.time()
        if self.rank == 0:
            meta = {**self.meta, "step": self.step, "stats": self.stats, "seconds": self.seconds()}
            save_checkpoint(self.path, self.modules, self.optimizers, meta=meta)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def finish(self) -> dict:
        losses = self.stats["losses"]
        out = {
            "steps": self.step,
            "resumed_from": self.resumed_from,
            "seconds": round(self.seconds(), 2),
            "unet_evals": self.stats["unet_evals"],  # with a stop rule: training and checks (stop.unet_evals) together
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
        }
        if self.stop is not None:
            out["budget"] = self.total
            out["stop"] = self.stop.summary()
        return out


def _distributed() -> tuple[int, int]:
    """(rank, world size): from accelerate when launched with `accelerate launch`, else (0, 1)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState

    # initialises the process group: nccl on GPUs; gloo on a machine without them (accelerate needs cpu=True
    # to take that path, as `accelerate launch --multi_gpu` on a CPU-only machine starts the processes)
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes


def config_dict(config) -> dict:
    d = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
