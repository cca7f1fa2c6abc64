#!/usr/bin/env python
"""Serve a web page to look at a model: upload word images (or pick examples, or crop a word from a photo), see what
the model reads, how sure it is and what it saw, with the decoding options and the model card's facts beside it.

    python scripts/app.py --saved_model demo_output/runs/crnn-synth/best_accuracy
    python scripts/app.py --saved_model user/repo --port 7861

--saved_model is a model folder, a Hub id, or an exported .onnx (fp32 or int8, with its sidecar; read by
onnxruntime, as scripts/test.py scores it). The page is served on 127.0.0.1 (this machine only) unless --host says
otherwise, on Gradio's port (GRADIO_SERVER_PORT, else 7860) unless --port says otherwise; no public share link
unless --share. Needs the app extra: pip install "text_recognition[app]".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from text_recognition.app import launch, load_app_model
from text_recognition.app.page import require_gradio
from text_recognition.cli import run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", required=True, help="model folder, Hub id, or exported .onnx")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, help="port (default: Gradio's, GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    args = parser.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be within 1-65535, got {args.port}.")
    app_model = load_app_model(args.saved_model, "cuda" if torch.cuda.is_available() else "cpu")
    try:
        require_gradio()
    except ImportError as error:
        raise ValueError(str(error)) from None
    launch(app_model, host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
