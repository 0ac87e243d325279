"""Product recognition at inference time: detector -> crops -> embedder -> gallery search -> receipt.

Modules: `embedder` (checkpoint -> batched L2-normalised embeddings + fingerprint), `detector` (boxes for an
RGB image), `gallery` (build/add/remove/threshold a GalleryIndex on disk), `pipeline` (PP-ShiTu style
recognition with open-set rejection and NMS), `checkout` (receipt + basket metrics), `live` (image<->video
matching on the Taobao live-stream layout)."""
