"""Nodes the bridge tests use to probe the node protocol (V1 style, as in ComfyUI 2024)."""
import hashlib
import time

import comfy.utils
import comfy.model_management


class TestRaise:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"samples": ("LATENT",), "message": ("STRING", {"default": "boom"})}}
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "comfyrs/test"

    def run(self, samples, message):
        raise ValueError(message)


class TestLatentDigest:
    """Output node: sha256 of the latent tensor's bytes, shape and dtype, as UI text."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"samples": ("LATENT",)}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    def run(self, samples):
        t = samples["samples"].contiguous()
        digest = hashlib.sha256(t.numpy().tobytes()).hexdigest()
        return {"ui": {"digest": [digest], "shape": [list(t.shape)], "dtype": [str(t.dtype)]}}


class TestTypes:
    """Reports the Python types it received and returns native-convertible values."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"i": ("INT", {"default": 1, "min": -10, "max": 2**64}),
                             "f": ("FLOAT", {"default": 1.0}),
                             "s": ("STRING", {"default": "x"}),
                             "b": ("BOOLEAN", {"default": True})}}
    RETURN_TYPES = ("STRING", "INT", "FLOAT", "BOOLEAN")
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    def run(self, i, f, s, b):
        kinds = ",".join(type(v).__name__ for v in (i, f, s, b))
        return {"ui": {"text": [kinds]}, "result": (kinds, i + 1, f * 2, not b)}


class TestHidden:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO",
                                            "unique_id": "UNIQUE_ID", "dynprompt": "DYNPROMPT",
                                            "auth": "AUTH_TOKEN_COMFY_ORG", "key": "API_KEY_COMFY_ORG"}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    def run(self, prompt=None, extra_pnginfo=None, unique_id=None, dynprompt=None, auth=None, key=None):
        # ComfyUI before DYNPROMPT existed passes None: fall back to the prompt's nodes.
        dyn_nodes = sorted(dynprompt.all_node_ids()) if dynprompt is not None else sorted((prompt or {}).keys())
        return {"ui": {"unique_id": [unique_id], "prompt_nodes": sorted((prompt or {}).keys()),
                       "extra": [extra_pnginfo], "dyn_nodes": dyn_nodes, "auth": [auth], "key": [key]}}


_SIGNALS = set()


class TestRendezvous:
    """Async: signals `name`, then waits (up to 3 s) for `partner` to signal. Two of them both
    report met=True only if they were in flight at the same time."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"name": ("STRING", {"default": "a"}), "partner": ("STRING", {"default": "b"})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    async def run(self, name, partner):
        import asyncio
        _SIGNALS.add(name)
        for _ in range(300):
            if partner in _SIGNALS:
                return {"ui": {"met": [True]}, "result": (name,)}
            await asyncio.sleep(0.01)
        return {"ui": {"met": [False]}, "result": (name,)}


class TestChangedById:
    """IS_CHANGED that reads the node's own id (ComfyUI passes hidden inputs to it)."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"value": ("INT", {"default": 1})}, "hidden": {"unique_id": "UNIQUE_ID"}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "comfyrs/test"

    @classmethod
    def IS_CHANGED(s, value, unique_id=None):
        return "seen by {}".format(unique_id)

    def run(self, value, unique_id=None):
        return (value,)


class TestChanged:
    """IS_CHANGED returns NaN when `always` is set: re-runs every prompt."""
    counter = 0

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"always": ("BOOLEAN", {"default": True})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    @classmethod
    def IS_CHANGED(s, always):
        return float("nan") if always else "same"

    def run(self, always):
        TestChanged.counter += 1
        return {"ui": {"count": [TestChanged.counter]}, "result": (TestChanged.counter,)}


class TestChangedRaises:
    """IS_CHANGED raises: the node counts as changed (as in ComfyUI) and the failure is warned."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"value": ("INT", {"default": 1})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    @classmethod
    def IS_CHANGED(s, value):
        raise RuntimeError("IS_CHANGED fails on purpose")

    def run(self, value):
        return {"ui": {"value": [value]}, "result": (value,)}


class TestBadSchema:
    """INPUT_TYPES raises: the class is skipped at start, with the reason reported."""
    @classmethod
    def INPUT_TYPES(s):
        raise KeyError("schema fails on purpose")
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "comfyrs/test"

    def run(self):
        return (0,)


class TestValidate:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"value": ("INT", {"default": 0, "min": -100, "max": 100})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    @classmethod
    def VALIDATE_INPUTS(s, value):
        if value == 13:
            raise ValueError("13 cannot be checked")
        return True if value >= 0 else "must be non-negative"

    def run(self, value):
        return (value,)


class TestAsyncValidate:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"value": ("INT", {"default": 0, "min": -100, "max": 100})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    @classmethod
    async def VALIDATE_INPUTS(s, value):
        return True if value >= 0 else "must be non-negative, asynchronously"

    def run(self, value):
        return (value,)


class TestLazy:
    """Needs only the input its switch selects (check_lazy_status)."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"use_a": ("BOOLEAN", {"default": True}),
                             "a": ("*", {"lazy": True}),
                             "b": ("*", {"lazy": True})}}
    RETURN_TYPES = ("*",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    def check_lazy_status(self, use_a, a=None, b=None):
        if use_a and a is None:
            return ["a"]
        if not use_a and b is None:
            return ["b"]
        return []

    # No defaults: ComfyUI passes the lazy input it did not evaluate as None.
    def run(self, use_a, a, b):
        v = a if use_a else b
        return {"ui": {"value": [v], "a_none": [a is None], "b_none": [b is None]}, "result": (v,)}


class TestConst:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"value": ("INT", {"default": 0, "min": -1000, "max": 1000})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "comfyrs/test"

    def run(self, value):
        return (value,)


class TestListOut:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"n": ("INT", {"default": 3, "min": 0, "max": 100})}}
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"
    CATEGORY = "comfyrs/test"

    def run(self, n):
        return (list(range(n)),)


class TestListIn:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"values": ("INT", {"forceInput": True})}}
    RETURN_TYPES = ("INT",)
    INPUT_IS_LIST = True
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    def run(self, values):
        return {"ui": {"sum": [sum(values)], "len": [len(values)]}, "result": (sum(values),)}


class TestProgress:
    """Reports progress through ComfyUI's ProgressBar; sleeps `seconds` per step (interrupt test)."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"steps": ("INT", {"default": 3, "min": 1, "max": 10000}),
                             "seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    def run(self, steps, seconds):
        pbar = comfy.utils.ProgressBar(steps)
        for i in range(steps):
            if seconds:
                time.sleep(seconds)
            pbar.update_absolute(i + 1, steps)
        return {"ui": {"steps": [steps]}, "result": (steps,)}


class TestExit:
    """Calls sys.exit(): a BaseException that must not take the host down."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    def run(self):
        raise SystemExit(3)


try:
    from comfy_execution.graph_utils import ExecutionBlocker
except ImportError:  # ComfyUI before execution blockers: a class of the same name and shape
    class ExecutionBlocker:
        def __init__(self, message):
            self.message = message


class TestBlocker:
    """Passes the latent on, or an ExecutionBlocker (with the message, when not empty)."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"samples": ("LATENT",), "block": ("BOOLEAN", {"default": True}),
                             "message": ("STRING", {"default": ""})}}
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "comfyrs/test"

    def run(self, samples, block, message):
        if block:
            return (ExecutionBlocker(message or None),)
        return (samples,)


class TestSDXLCLIP:
    """A random-weight SDXL CLIP: ComfyUI's own SDXL text encoders (clip_l and clip_g at their
    real widths), every parameter filled from `seed` with values float16 holds exactly."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "run"
    CATEGORY = "comfyrs/test"

    def run(self, seed):
        import torch
        import comfy.sd
        import comfy.sdxl_clip

        class Target:
            params = {}
            clip = comfy.sdxl_clip.SDXLClipModel
            tokenizer = comfy.sdxl_clip.SDXLTokenizer

        with torch.no_grad():  # as ComfyUI's executor runs nodes (this may be called directly)
            clip = comfy.sd.CLIP(Target())
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in clip.cond_stage_model.state_dict(keep_vars=True).items():
                if not p.is_floating_point():
                    continue
                leaf = name.rsplit(".", 1)[-1]
                if leaf == "logit_scale":
                    v = torch.full(p.shape, 4.6)
                elif "norm" in name:
                    v = torch.full(p.shape, 1.0 if leaf == "weight" else 0.0)
                else:
                    # Uniform with standard deviation 1/sqrt(fan_in) (0.01 for biases).
                    std = 0.01 if p.dim() < 2 else p.shape[-1] ** -0.5
                    v = (torch.rand(p.shape, generator=g) * 2 - 1) * (std * 3 ** 0.5)
                p.copy_(v.half())
        return (clip,)


class TestCondDigest:
    """Output node: sha256 of a CONDITIONING's first tensor and pooled output (float32 bytes),
    and the first tensor's mean absolute value."""
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"conditioning": ("CONDITIONING",)}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "comfyrs/test"

    def run(self, conditioning):
        import torch
        cond, extra = conditioning[0][0], conditioning[0][1]
        h = hashlib.sha256(cond.to(torch.float32).contiguous().numpy().tobytes())
        pooled = extra.get("pooled_output")
        if pooled is not None:
            h.update(pooled.to(torch.float32).contiguous().numpy().tobytes())
        return {"ui": {"digest": [h.hexdigest()], "mean_abs": [float(cond.float().abs().mean())]}}


NODE_CLASS_MAPPINGS = {c.__name__: c for c in (
    TestRaise, TestLatentDigest, TestTypes, TestHidden, TestChanged, TestChangedById, TestRendezvous, TestChangedRaises,
    TestBadSchema, TestValidate, TestAsyncValidate, TestLazy, TestConst, TestListOut, TestListIn, TestProgress,
    TestExit, TestBlocker, TestSDXLCLIP, TestCondDigest)}
NODE_DISPLAY_NAME_MAPPINGS = {"TestLatentDigest": "Latent digest (comfyrs test)"}
