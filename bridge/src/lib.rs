//! The embedded Python ComfyUI. Not built yet: see issue "Embedded Python ComfyUI".
