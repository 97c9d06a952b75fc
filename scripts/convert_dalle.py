"""Convert OpenAI's DALL-E dVAE encoder (`encoder.pkl`) into the `.safetensors` file `DalleTokenizer` loads.

The official release, https://cdn.openai.com/dall-e/encoder.pkl, is a *pickled module*, not a state dict: reading it
needs the `dall_e` package (`pip install DALL-E`) and `torch.load(weights_only=False)`, which runs whatever code the
pickle names. This script is the only place in the project that does so. Run it only on the file downloaded from
OpenAI's URL above (download it yourself; nothing here touches the network):

    python scripts/convert_dalle.py encoder.pkl dalle_encoder.safetensors

then build the tokenizer with `create_tokenizer("dalle", weights="dalle_encoder.safetensors")`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that a checkout works without installing
from model.tokenizers import DalleTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pkl", type=Path, help="the official encoder.pkl (trusted file only: it is unpickled)")
    parser.add_argument("out", type=Path, help="where to write the state dict (.safetensors)")
    args = parser.parse_args()

    try:
        import dall_e  # noqa: F401  (the pickle refers to dall_e.encoder.Encoder)
    except ImportError as err:
        raise SystemExit("unpickling encoder.pkl needs the `dall_e` package: pip install DALL-E") from err
    print(f"sha256 {hashlib.sha256(args.pkl.read_bytes()).hexdigest()}  {args.pkl}")
    encoder = torch.load(args.pkl, map_location="cpu", weights_only=False)  # unsafe by design, see the docstring
    state = {k: v.detach().float().contiguous() for k, v in encoder.state_dict().items()}
    if state["blocks.output.conv.w"].shape[0] != 8192:
        raise SystemExit(f"unexpected vocabulary {state['blocks.output.conv.w'].shape[0]}: not the official encoder?")
    save_file(state, str(args.out))
    DalleTokenizer(weights=args.out)  # strict load: the keys and shapes match the tokenizer's
    print(f"wrote {len(state)} tensors ({sum(v.numel() for v in state.values()) / 1e6:.1f}M values) to {args.out}")


if __name__ == "__main__":
    main()
