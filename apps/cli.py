"""`studio app`: start the Gradio app (registered into the `studio` CLI)."""


def cmd_app(args) -> int:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from studio.cli import DTYPES

    from .studio_app import build_app, launch_kwargs

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    demo = build_app(args.outputs, args.model, device=args.device, dtype=dtype, concurrency=args.concurrency)
    host = args.host
    print(
        f"Erasure Studio: http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{args.port}  (outputs: {args.outputs}; Ctrl+C stops it)"
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach this machine can use the app and its models")
    demo.launch(**launch_kwargs(host, args.port))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "app",
        help="start the web app (erase, attack, edit, generate) on http://127.0.0.1:7860",
        description="Start the Erasure Studio web app. It binds 127.0.0.1 and makes no network calls.",
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
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    p.add_argument("--concurrency", type=int, default=1, help="jobs that run at once (default 1; more only with memory to spare)")
    p.set_defaults(fn=cmd_app)
