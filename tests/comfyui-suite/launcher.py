"""Stands in for ComfyUI's main.py so ComfyUI's own execution tests start `comfyrs serve`.

scripts/comfyui-suite.sh stages a folder in which this file is `main.py`; the tests run
`python main.py <flags>` from there, and this maps the flags they use onto `comfyrs serve`.

Start-up: the tests wait 5 x 4 s for the port, then run regardless. `comfyrs serve` listens only
once the embedded ComfyUI has imported its ~900 node classes and the custom nodes, which on a
2-core machine takes 15-20 s idle and over 50 s beside a cargo build. So by default this process listens
on the port the tests asked for at once and relays every connection, byte for byte, to comfyrs on
a private loopback port, holding each until comfyrs answers: the tests see the server's behaviour
unchanged, only without the start-up race. The tests stop the server with SIGKILL on this pid;
comfyrs is started with PR_SET_PDEATHSIG so it dies with it. COMFYRS_SUITE_DIRECT=1 instead
replaces this process with comfyrs on the tests' port (exec), as ComfyUI's main.py would be.
Once one start has written comfyrs's record cache (docs/architecture.md, "The record cache"),
later starts listen within a second and import ComfyUI in the background, so the direct mode has
no start-up race either; the relay stays the default for the first, cold start.

Environment (set by scripts/comfyui-suite.sh):
  COMFYRS_BIN          the comfyrs binary to run
  COMFYUI_PATH         the real ComfyUI checkout (Python nodes come from there)
  COMFYRS_SUITE_STATE  a folder under which each start gets a fresh state dir

Flags that comfyrs has no equivalent for are accepted and reported on stderr, so a new flag in the
suite shows up in its log instead of failing the start.
"""

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile

import yaml


def parse(argv):
    # The flags of ComfyUI's comfy/cli_args.py that tests/execution passes, with the same arities.
    p = argparse.ArgumentParser(prog="main.py (comfyrs launcher)", add_help=False)
    p.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--output-directory")
    p.add_argument("--input-directory")
    p.add_argument("--temp-directory")
    p.add_argument("--extra-model-paths-config", nargs="+", action="append", default=[])
    p.add_argument("--cpu", action="store_true")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-classic", action="store_true")
    cache.add_argument("--cache-lru", type=int, default=0)
    cache.add_argument("--cache-none", action="store_true")
    cache.add_argument("--cache-ram", nargs="*", type=float)
    p.add_argument("--preview-method")
    return p.parse_known_args(argv)


def custom_node_dirs(yaml_path):
    """The `custom_nodes` entries of an extra_model_paths.yaml, resolved as ComfyUI resolves them
    (utils/extra_config.py: relative to base_path, else to the yaml's own folder). comfyrs reads
    the yaml's model folders itself but takes custom node folders from --custom-nodes."""
    with open(yaml_path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    dirs = []
    for conf in config.values():
        if not conf:
            continue
        base = conf.get("base_path")
        if base:
            base = os.path.expandvars(os.path.expanduser(base))
            if not os.path.isabs(base):
                base = os.path.join(yaml_dir, base)
        for entry in str(conf.get("custom_nodes", "")).split("\n"):
            if entry:
                dirs.append(os.path.normpath(os.path.join(base or yaml_dir, entry)))
    return dirs


def main():
    args, unknown = parse(sys.argv[1:])
    exe = os.environ.get("COMFYRS_BIN")
    if not exe:
        sys.exit("launcher: set COMFYRS_BIN to the comfyrs binary (scripts/comfyui-suite.sh does)")
    if unknown:
        print(f"launcher: ignoring main.py flags comfyrs has no equivalent for: {unknown}", file=sys.stderr)

    # ComfyUI keeps its queue in memory; comfyrs keeps it on disk and resumes it at the next start.
    # The tests restart the server (SIGKILL, then new flags) between classes, so each start gets
    # its own state dir, or the next server would rerun the prompts the last one was killed in.
    root = os.environ.get("COMFYRS_SUITE_STATE") or None
    if root:
        os.makedirs(root, exist_ok=True)
    state = tempfile.mkdtemp(prefix=f"serve-{args.port}-", dir=root)

    direct = os.environ.get("COMFYRS_SUITE_DIRECT") == "1"
    if direct:
        listen, port = args.listen, args.port
    else:
        listen, port = "127.0.0.1", free_port()
    cmd = [exe, "serve", "--listen", listen, "--port", str(port), "--state-dir", state,
           # The testing nodes are Python: start ComfyUI with the server, so /object_info lists
           # them from the first request (as ComfyUI's own start-up does).
           "--python", "always"]
    if args.output_directory:
        cmd += ["--output-dir", args.output_directory]
    if args.input_directory:
        cmd += ["--input-dir", args.input_directory]
    if args.temp_directory:
        cmd += ["--temp-dir", args.temp_directory]
    if args.cpu:
        cmd += ["--device", "cpu"]

    yamls = [y for group in args.extra_model_paths_config for y in group]
    if yamls:
        # comfyrs takes one extra_model_paths.yaml; the suite passes exactly one.
        cmd += ["--extra-model-paths", yamls[0]]
        if len(yamls) > 1:
            print(f"launcher: comfyrs reads one extra model paths file; ignoring {yamls[1:]}", file=sys.stderr)
    for y in yamls:
        for d in custom_node_dirs(y):
            cmd += ["--custom-nodes", d]

    # Cache modes. comfyrs's caches are bounded by bytes (--host-memory), not by entry count, and
    # have no "keep only the last prompt" mode: --cache-classic and --cache-lru N both map to its
    # lru (which keeps at least everything the last prompt produced while memory allows).
    if args.cache_none:
        cmd += ["--cache", "none"]
    elif args.cache_ram is not None:
        cmd += ["--cache", "ram-pressure"]
    elif args.cache_classic or args.cache_lru:
        cmd += ["--cache", "lru"]
    # --preview-method: comfyrs sends no latent previews (no equivalent); the flag is accepted
    # and ignored.

    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    print("launcher:", "exec" if direct else f"relaying {args.listen}:{args.port} to", " ".join(cmd),
          file=sys.stderr, flush=True)
    if direct:
        # exec keeps this pid: the script stops a server a failed test left behind by this file.
        with open(os.path.join(state, "serve.pid"), "w") as f:
            f.write(str(os.getpid()))
        os.execv(exe, cmd)
    with open(os.path.join(state, "launcher.pid"), "w") as f:
        f.write(str(os.getpid()))
    child = subprocess.Popen(cmd, preexec_fn=die_with_parent)
    with open(os.path.join(state, "serve.pid"), "w") as f:
        f.write(str(child.pid))
    try:
        asyncio.run(relay(args.listen, args.port, port, child))
    finally:
        if child.poll() is None:
            child.kill()
    sys.exit(child.returncode or 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """In the child before exec: SIGKILL it when this launcher dies (prctl PR_SET_PDEATHSIG = 1),
    so the tests' p.kill() on the launcher stops comfyrs too."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


async def relay(listen, port, inner, child):
    async def pipe(reader, writer):
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    # asyncio keeps only weak references to the connection tasks; hold them until they end.
    live = set()

    async def handle(creader, cwriter):
        task = asyncio.current_task()
        live.add(task)
        try:
            await relay_one(creader, cwriter)
        finally:
            live.discard(task)

    async def relay_one(creader, cwriter):
        while True:
            try:
                ureader, uwriter = await asyncio.open_connection("127.0.0.1", inner)
                break
            except OSError:
                if child.poll() is not None:
                    cwriter.close()
                    return
                await asyncio.sleep(0.2)
        await asyncio.gather(pipe(creader, uwriter), pipe(ureader, cwriter))
        for w in (uwriter, cwriter):
            w.close()

    server = await asyncio.start_server(handle, listen, port)
    async with server:
        while child.poll() is None:
            await asyncio.sleep(0.5)


if __name__ == "__main__":
    main()
