"""The reference side of `comfyrs bench loop` and `comfyrs bench merge`: the same prompts in
plain ComfyUI (COMFYUI_PATH) with the Python WIDEN node pack, one executor for all of them, as a
ComfyUI server runs them.

Arguments: PACK_DIR MODELS_DIR OUTPUT_DIR. Reads a JSON list of {"prompt": ..., "outputs": [node
ids to execute]} on stdin and prints one JSON line per prompt: its total seconds, seconds from its
start to the sampler's first step and to the saved image (a node "sampler" and a node "save"), each
node's seconds, and the saved image's path. Progress goes to stderr.
"""

import asyncio
import json
import os
import sys
import time


def main():
    pack, models, output = sys.argv[1:4]
    prompts = json.load(sys.stdin)
    comfy_dir = os.environ["COMFYUI_PATH"]
    sys.argv = [sys.argv[0]]
    sys.path.insert(0, comfy_dir)
    os.chdir(comfy_dir)
    import torch
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # ComfyUI's --cpu; without it, it asks for a CUDA device

    import folder_paths

    for kind in ("checkpoints", "loras", "diffusion_models"):
        folder_paths.add_model_folder_path(kind, os.path.join(models, kind), is_default=True)
    folder_paths.set_output_directory(output)

    import comfy.utils
    import execution
    import nodes
    import server

    class Listener:
        """Stands in for the PromptServer: records when the messages a client waits for arrive."""

        def __init__(self):
            self.client_id = None
            self.last_node_id = None
            self.last_prompt_id = None
            self.reset(time.perf_counter())

        def reset(self, start):
            self.start = start
            self.first_step = None
            self.image = None
            self.image_path = None
            self.running = None
            self.node_start = {}
            self.node_seconds = {}

        def send_sync(self, event, data, sid=None):
            now = time.perf_counter()
            if event == "executing":
                node = data.get("node") if isinstance(data, dict) else None
                if self.running is not None and self.running in self.node_start:
                    self.node_seconds[self.running] = now - self.node_start[self.running]
                self.running = node
                if node is not None:
                    self.node_start[node] = now
            elif event == "executed" and data.get("node") == "save":
                self.image = now - self.start
                images = (data.get("output") or {}).get("images") or []
                if images:
                    i = images[0]
                    self.image_path = os.path.join(output, i.get("subfolder", ""), i["filename"])

        def send(self, *args, **kwargs):
            pass

        def queue_updated(self):
            pass

    listener = Listener()
    server.PromptServer.instance = listener

    def hook(value, total, preview=None, prompt_id=None, node_id=None, *args, **kwargs):
        node = node_id if node_id is not None else listener.running
        if node == "sampler" and value >= 1 and listener.first_step is None:
            listener.first_step = time.perf_counter() - listener.start

    comfy.utils.set_progress_bar_global_hook(hook)
    asyncio.run(nodes.load_custom_node(pack))
    missing = [c for c in ("WIDENEntry", "WIDENExit") if c not in nodes.NODE_CLASS_MAPPINGS]
    if missing:
        sys.exit(f"the WIDEN node pack in {pack} did not load: {missing} missing (its error is above)")

    # As ComfyUI's own server makes it with its default settings (no RAM-pressure eviction).
    cache_args = {"lru": 0, "ram": 0, "ram_inactive": 0}
    executor = execution.PromptExecutor(listener, cache_type=execution.CacheType.CLASSIC, cache_args=cache_args)
    for n, item in enumerate(prompts):
        prompt = item["prompt"]
        listener.reset(time.perf_counter())
        executor.execute(prompt, f"reference-{n}", {"client_id": "bench"}, item["outputs"])
        total = time.perf_counter() - listener.start
        if listener.running in listener.node_start:
            listener.node_seconds[listener.running] = time.perf_counter() - listener.node_start[listener.running]
        if not executor.success:
            msgs = [m for m in executor.status_messages if m[0] == "execution_error"]
            sys.exit(f"prompt {n} failed in ComfyUI: {json.dumps(msgs)[:2000]}")
        print(
            json.dumps(
                {
                    "total": total,
                    "first_step": listener.first_step,
                    "image": listener.image,
                    "nodes": listener.node_seconds,
                    "image_path": listener.image_path,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
