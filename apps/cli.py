"""`studio app`: start the Gradio app (registered into the `studio` CLI)."""

import os


def go_offline() -> None:
    """HF_HUB_OFFLINE=1 for this process: a hub id is then read from the local cache only. Set before
    diffusers and huggingface_hub are imported (they read it once); patched in where they already are."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    for name in ("huggingface_hub.constants", "diffusers.utils.constants"):
        if name in sys.modules:
            sys.modules[name].HF_HUB_OFFLINE = True


def cmd_app(args) -> int:
    if args.offline:
        go_offline()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from studio.cli import DTYPES

    from .shared import is_loopback
    from .studio_app import build_app, launch_kwargs

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    host = args.host
    demo = build_app(
        args.outputs, args.model, device=args.device, dtype=dtype, concurrency=args.concurrency, host=host, allow_roots=args.allow_root
    )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"Erasure Studio: http://{shown}:{args.port}  (outputs: {args.outputs}; Ctrl+C stops it)")
    if not is_loopback(host):
        roots = ", ".join([args.outputs, "the Hugging Face cache", *args.allow_root])
        print(f"warning: listening on {host}: anyone who can reach this machine can use the app; it loads models only from {roots}")
    demo.launch(**launch_kwargs(host, args.port))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "app",
        help="start the web app (erase, attack, edit, generate) on http://127.0.0.1:7860",
        description="Start the Erasure Studio web app. It binds 127.0.0.1 and sends nothing anywhere; the one network call it can make "
        "is loading a hub id typed into the model field that is not in the local Hugging Face cache (none with --offline or "
        "HF_HUB_OFFLINE=1). It never loads pickle files.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--outputs",
        default="outputs",
        help="folder for saved erased models and exported encoders; models found here are listed (default outputs)",
    )
    p.add_argument(
        "--model", default="toy", help="the model selected at start: 'toy' (default), a hub id, a diffusers folder or a .safetensors file"
    )
    p.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="with --host other than loopback, a folder whose models the page may load besides the outputs folder and the "
        "Hugging Face cache (repeatable)",
    )
    p.add_argument("--offline", action="store_true", help="never reach the Hugging Face hub: hub ids load from the local cache only")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    p.add_argument("--concurrency", type=int, default=1, help="jobs that run at once (default 1; more only with memory to spare)")
    p.set_defaults(fn=cmd_app)
