# A custom node pack that fails to import, on purpose: the bridge must report and skip it.
raise ImportError("comfyrs test: this pack is broken on purpose")
