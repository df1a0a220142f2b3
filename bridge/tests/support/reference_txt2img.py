"""The reference for the bridge's txt2img test: the same ComfyUI node functions called directly
in a plain Python process (no comfyrs), same seed. Prints the latent's sha256.

usage: python reference_txt2img.py COMFYUI_DIR MODELS_DIR CKPT_NAME SEED
"""
import hashlib
import json
import os
import sys

comfy_dir, models_dir, ckpt, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, comfy_dir)
sys.stdout = sys.stderr
import torch  # noqa: E402
import comfy.options  # noqa: E402,F401
import comfy.cli_args  # noqa: E402
comfy.cli_args.args.cpu = True
import folder_paths  # noqa: E402
folder_paths.add_model_folder_path("checkpoints", os.path.join(models_dir, "checkpoints"))
import nodes  # noqa: E402

with torch.inference_mode():
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3]
    pos = nodes.CLIPTextEncode().encode(clip, "a red fox in the snow")[0]
    neg = nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    out = nodes.KSampler().sample(model, seed, 2, 7.5, "euler", "normal", pos, neg, latent, denoise=1.0)[0]
    t = out["samples"].contiguous()
    digest = hashlib.sha256(t.numpy().tobytes()).hexdigest()
sys.__stdout__.write(json.dumps({"digest": digest, "shape": list(t.shape), "dtype": str(t.dtype),
                                 "model": type(model.model.model_config).__name__}) + "\n")
