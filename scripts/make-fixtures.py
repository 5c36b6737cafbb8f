#!/usr/bin/env python3
"""Writes the media test fixtures: tiny random-weight GGUF files that
llama.cpp's own loaders accept, so the tests run the real code paths.

  models/fixtures/mmproj-vision-fixture.gguf
      A LLaVA-style ("mlp" projector) CLIP vision encoder: 32x32 pixels,
      8x8 patches (16 image tokens), 2 transformer blocks of width 64, and a
      two-layer MLP projector whose output width is 576, SmolLM2-135M's
      embedding width, so llama.cpp's mtmd pairs it with that model.

  models/fixtures/mmproj-audio-fixture.gguf
      A Qwen2-Audio-style ("qwen2a") Whisper encoder: 128 mel bins, 2
      transformer blocks of width 64, and a linear projector to 576.

  models/fixtures/picture.png
      A 40x40 RGB PNG (a colour gradient with a diagonal stripe), for jobs
      laid out as the C++ wrk writes them.

  models/fixtures/tts/OuteTTS-0.2-fixture.gguf
  models/fixtures/tts/OuteTTS-0.3-fixture.gguf
      OuteTTS-style text-to-codes models: llama architecture, 2 blocks of
      width 64, and a SentencePiece vocabulary holding what the OuteTTS
      prompt needs (<|im_start|>, <|text_start|>, <|text_sep|> or
      <|space|>, <|audio_start|>, <|code_start|>, <|code_end|>, the
      duration tokens <|t_0.00|>..<|t_0.70|>) and one token <|N|> per
      audio code 0..4095. The 0.3 file adds OuteTTS 0.3's <|space|> and
      punctuation tokens, which is how readers tell the versions apart.

  models/fixtures/tts/WavTokenizer-fixture.gguf
      A WavTokenizer decoder (llama.cpp's "wavtokenizer-dec"): a 4096-entry
      codebook of width 32, the posnet (resnet, resnet, attention, resnet,
      resnet, norm) and 2 ConvNeXt blocks of width 64, and an output of
      1282 = n_fft 1280 + 2 values per code (magnitudes and phases).
      They live in their own folder so that no mmproj-*.gguf sits beside them.

Weights are drawn from a fixed seed: the files are the same on every run
(the test suite relies on the same image giving the same answer, not on
the bytes). Run it through scripts/fixtures.sh, which runs it with the
tests' Python environment (scripts/pyenv.sh), where PyPI's `gguf` is.
"""

import os
import struct
import sys
import zlib

import numpy as np
import gguf

SEED = 20261127
TEXT_EMBD = 576  # SmolLM2-135M's n_embd: the projector's output width


def weights(rng: np.random.Generator):
    """A maker of random f32 tensors, scaled 1/sqrt(fan-in) unless told."""

    def w(*shape: int, scale: float = 0.0) -> np.ndarray:
        # numpy shapes are the reverse of ggml's ne: (out, in) for a matmul.
        s = scale or 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape) * s).astype(np.float32)

    return w


def add_blocks(out, w, prefix: str, n_layer: int, n_embd: int, n_ff: int, key_bias: bool) -> None:
    """The encoder's transformer blocks, as clip.cpp names them."""
    for il in range(n_layer):
        p = f"{prefix}.blk.{il}"
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            out.add_tensor(f"{p}.{t}.weight", w(n_embd, n_embd))
            if key_bias or t != "attn_k":
                out.add_tensor(f"{p}.{t}.bias", w(n_embd, scale=0.02))
        for t in ("ln1", "ln2"):
            out.add_tensor(f"{p}.{t}.weight", np.ones(n_embd, dtype=np.float32))
            out.add_tensor(f"{p}.{t}.bias", np.zeros(n_embd, dtype=np.float32))
        out.add_tensor(f"{p}.ffn_up.weight", w(n_ff, n_embd))
        out.add_tensor(f"{p}.ffn_up.bias", w(n_ff, scale=0.02))
        out.add_tensor(f"{p}.ffn_down.weight", w(n_embd, n_ff))
        out.add_tensor(f"{p}.ffn_down.bias", w(n_embd, scale=0.02))


def write(out) -> None:
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()


def vision_projector(path: str) -> None:
    rng = np.random.default_rng(SEED)
    n_embd, n_ff, n_head, n_layer = 64, 128, 4, 2
    image, patch = 32, 8
    n_pos = (image // patch) ** 2
    hidden = 256

    w = weights(rng)

    out = gguf.GGUFWriter(path, "clip")
    out.add_string("general.name", "nrvna vision projector fixture")
    out.add_string("general.description", "random weights, for tests only")
    out.add_string("clip.projector_type", "mlp")
    out.add_bool("clip.has_vision_encoder", True)
    out.add_bool("clip.has_audio_encoder", False)
    out.add_bool("clip.use_gelu", True)
    out.add_uint32("clip.vision.image_size", image)
    out.add_uint32("clip.vision.patch_size", patch)
    out.add_uint32("clip.vision.embedding_length", n_embd)
    out.add_uint32("clip.vision.feed_forward_length", n_ff)
    out.add_uint32("clip.vision.projection_dim", TEXT_EMBD)
    out.add_uint32("clip.vision.block_count", n_layer)
    out.add_uint32("clip.vision.attention.head_count", n_head)
    out.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    out.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    out.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    # Patch embedding: a conv2d kernel, ggml ne [patch, patch, 3, n_embd].
    out.add_tensor("v.patch_embd.weight", w(n_embd, 3, patch, patch, scale=0.2).astype(np.float16))
    out.add_tensor("v.patch_embd.bias", w(n_embd, scale=0.1))
    out.add_tensor("v.position_embd.weight", w(n_pos, n_embd, scale=0.1))
    out.add_tensor("v.pre_ln.weight", np.ones(n_embd, dtype=np.float32))
    out.add_tensor("v.pre_ln.bias", np.zeros(n_embd, dtype=np.float32))
    add_blocks(out, w, "v", n_layer, n_embd, n_ff, key_bias=True)
    # The projector into the text model's embedding space. The scale keeps
    # the image embeddings near the size of SmolLM2's token embeddings.
    out.add_tensor("mm.0.weight", w(hidden, n_embd))
    out.add_tensor("mm.0.bias", w(hidden, scale=0.02))
    out.add_tensor("mm.2.weight", w(TEXT_EMBD, hidden, scale=0.02))
    out.add_tensor("mm.2.bias", w(TEXT_EMBD, scale=0.01))

    write(out)


def audio_projector(path: str) -> None:
    rng = np.random.default_rng(SEED + 1)
    n_embd, n_ff, n_head, n_layer, n_mel = 64, 128, 4, 2, 128
    n_pos = 1500  # 30 s of 10 ms frames, halved by the second convolution

    w = weights(rng)

    out = gguf.GGUFWriter(path, "clip")
    out.add_string("general.name", "nrvna audio projector fixture")
    out.add_string("general.description", "random weights, for tests only")
    out.add_string("clip.projector_type", "qwen2a")
    out.add_bool("clip.has_vision_encoder", False)
    out.add_bool("clip.has_audio_encoder", True)
    out.add_uint32("clip.audio.num_mel_bins", n_mel)
    out.add_uint32("clip.audio.embedding_length", n_embd)
    out.add_uint32("clip.audio.feed_forward_length", n_ff)
    out.add_uint32("clip.audio.projection_dim", TEXT_EMBD)
    out.add_uint32("clip.audio.block_count", n_layer)
    out.add_uint32("clip.audio.attention.head_count", n_head)
    out.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-5)

    # Two 1-D convolutions over the mel frames, ggml ne [3, in, out].
    out.add_tensor("a.conv1d.1.weight", w(n_embd, n_mel, 3, scale=0.05).astype(np.float16))
    # Biases broadcast over time: ggml ne [1, n_embd].
    out.add_tensor("a.conv1d.1.bias", w(n_embd, 1, scale=0.02))
    out.add_tensor("a.conv1d.2.weight", w(n_embd, n_embd, 3, scale=0.05).astype(np.float16))
    out.add_tensor("a.conv1d.2.bias", w(n_embd, 1, scale=0.02))
    out.add_tensor("a.position_embd.weight", w(n_pos, n_embd, scale=0.05))
    # Whisper's key projection has no bias.
    add_blocks(out, w, "a", n_layer, n_embd, n_ff, key_bias=False)
    out.add_tensor("a.post_ln.weight", np.ones(n_embd, dtype=np.float32))
    out.add_tensor("a.post_ln.bias", np.zeros(n_embd, dtype=np.float32))
    # Large enough that SmolLM2 answers something after the audio rather
    # than ending at once (with 0.02 its greedy first token was end-of-turn).
    out.add_tensor("mm.a.fc.weight", w(TEXT_EMBD, n_embd, scale=0.1))
    out.add_tensor("mm.a.fc.bias", w(TEXT_EMBD, scale=0.01))

    write(out)


def picture(path: str) -> None:
    w = h = 40
    rows = b"".join(
        b"\0" + bytes(v for x in range(w) for v in ((x * 6) % 256, (y * 6) % 256, 255 if abs(x - y) < 4 else 40))
        for y in range(h)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


N_CODES = 4096  # WavTokenizer's codebook: audio codes <|0|>..<|4095|>


def tts_model(path: str, version: str) -> None:
    """An OuteTTS-style llama model with a SentencePiece vocabulary."""
    rng = np.random.default_rng(SEED + 2)
    n_embd, n_ff, n_head, n_layer = 64, 128, 4, 2

    # token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    # Letters, alone and after a word boundary, so that words tokenise
    # into a few pieces rather than bytes.
    for i, c in enumerate("abcdefghijklmnopqrstuvwxyz"):
        for piece in (c, "\u2581" + c):
            tokens.append(piece)
            scores.append(-1.0 - i / 100)
            types.append(1)
    tokens.append("\u2581")
    scores.append(-2.0)
    types.append(1)
    specials = ["<|im_start|>", "<|im_end|>", "<|text_start|>", "<|text_end|>", "<|text_sep|>",
                "<|audio_start|>", "<|audio_end|>", "<|code_start|>", "<|code_end|>"]
    if version == "0.3":
        specials += ["<|space|>", "<|period|>", "<|comma|>", "<|question_mark|>", "<|exclamation_mark|>"]
    # Durations up to 0.70 s (the longest word of the default voice takes 0.68).
    specials += [f"<|t_{i / 100:.2f}|>" for i in range(71)]
    specials += [f"<|{i}|>" for i in range(N_CODES)]
    for t in specials:
        tokens.append(t)
        scores.append(0.0)
        types.append(4)
    n_vocab = len(tokens)

    w = weights(rng)
    out = gguf.GGUFWriter(path, "llama")
    out.add_string("general.name", f"nrvna OuteTTS {version} fixture")
    out.add_string("general.description", "random weights, for tests only")
    out.add_context_length(8192)
    out.add_embedding_length(n_embd)
    out.add_block_count(n_layer)
    out.add_feed_forward_length(n_ff)
    out.add_head_count(n_head)
    out.add_head_count_kv(n_head)
    out.add_rope_dimension_count(n_embd // n_head)
    out.add_layer_norm_rms_eps(1e-5)
    out.add_vocab_size(n_vocab)
    out.add_tokenizer_model("llama")
    out.add_tokenizer_pre("default")
    out.add_token_list(tokens)
    out.add_token_scores(scores)
    out.add_token_types(types)
    out.add_bos_token_id(1)
    out.add_eos_token_id(2)
    out.add_unk_token_id(0)
    out.add_add_bos_token(False)
    # Pieces are fed one word at a time: no implicit leading space.
    out.add_add_space_prefix(False)
    if version == "0.3":
        out.add_chat_template("outetts-0.3")

    # The output layer is tied to the token embeddings (no output.weight).
    out.add_tensor("token_embd.weight", w(n_vocab, n_embd, scale=1.0).astype(np.float16))
    out.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for il in range(n_layer):
        p = f"blk.{il}"
        out.add_tensor(f"{p}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            out.add_tensor(f"{p}.{t}.weight", w(n_embd, n_embd).astype(np.float16))
        out.add_tensor(f"{p}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        out.add_tensor(f"{p}.ffn_gate.weight", w(n_ff, n_embd).astype(np.float16))
        out.add_tensor(f"{p}.ffn_up.weight", w(n_ff, n_embd).astype(np.float16))
        out.add_tensor(f"{p}.ffn_down.weight", w(n_embd, n_ff).astype(np.float16))
    write(out)


def tts_model_v2(path: str) -> None:
    tts_model(path, "0.2")


def tts_model_v3(path: str) -> None:
    tts_model(path, "0.3")


def vocoder(path: str) -> None:
    """A WavTokenizer decoder as llama.cpp's wavtokenizer-dec loads it."""
    rng = np.random.default_rng(SEED + 3)
    n_feat, n_embd, n_ff, n_out = 32, 64, 128, 1282
    n_posnet, n_convnext = 6, 2

    w = weights(rng)

    def f16(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float16)

    def col(n: int, scale: float = 0.02) -> np.ndarray:
        # A per-channel bias as ggml ne [1, n].
        return w(n, 1, scale=scale)

    out = gguf.GGUFWriter(path, "wavtokenizer-dec")
    out.add_string("general.name", "nrvna WavTokenizer decoder fixture")
    out.add_string("general.description", "random weights, for tests only")
    out.add_vocab_size(N_CODES)
    out.add_features_length(n_feat)
    out.add_embedding_length(n_out)
    out.add_feed_forward_length(n_ff)
    out.add_block_count(max(n_posnet, n_convnext))
    out.add_context_length(8192)
    out.add_layer_norm_eps(1e-6)
    out.add_group_norm_eps(1e-6)
    out.add_group_norm_groups(32)
    out.add_posnet_embedding_length(n_embd)
    out.add_posnet_block_count(n_posnet)
    out.add_convnext_embedding_length(n_embd)
    out.add_convnext_block_count(n_convnext)
    out.add_tokenizer_model("none")
    out.add_causal_attention(False)

    out.add_tensor("token_embd.weight", f16(w(N_CODES, n_feat, scale=1.0)))
    out.add_tensor("conv1d.weight", f16(w(n_embd, n_feat, 7)))
    out.add_tensor("conv1d.bias", col(n_embd))
    ones, zeros = np.ones((n_embd, 1), dtype=np.float32), np.zeros((n_embd, 1), dtype=np.float32)
    for il in range(n_posnet):
        p = f"posnet.{il}"
        if il in (0, 1, 3, 4):
            for n in ("norm1", "norm2"):
                out.add_tensor(f"{p}.{n}.weight", ones)
                out.add_tensor(f"{p}.{n}.bias", zeros)
            for c in ("conv1", "conv2"):
                out.add_tensor(f"{p}.{c}.weight", f16(w(n_embd, n_embd, 3, scale=0.05)))
                out.add_tensor(f"{p}.{c}.bias", col(n_embd))
        elif il == 2:
            out.add_tensor(f"{p}.attn_norm.weight", ones)
            out.add_tensor(f"{p}.attn_norm.bias", zeros)
            for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
                out.add_tensor(f"{p}.{t}.weight", f16(w(n_embd, n_embd, 1)))
                out.add_tensor(f"{p}.{t}.bias", col(n_embd))
        else:
            out.add_tensor(f"{p}.attn_norm.weight", ones)
            out.add_tensor(f"{p}.attn_norm.bias", zeros)
    out.add_tensor("token_embd_norm.weight", np.ones(n_embd, dtype=np.float32))
    out.add_tensor("token_embd_norm.bias", np.zeros(n_embd, dtype=np.float32))
    for il in range(n_convnext):
        p = f"convnext.{il}"
        out.add_tensor(f"{p}.dw.weight", f16(w(n_embd, 1, 7, scale=0.2)))
        out.add_tensor(f"{p}.dw.bias", col(n_embd))
        out.add_tensor(f"{p}.norm.weight", np.ones(n_embd, dtype=np.float32))
        out.add_tensor(f"{p}.norm.bias", np.zeros(n_embd, dtype=np.float32))
        out.add_tensor(f"{p}.pw1.weight", f16(w(n_ff, n_embd)))
        out.add_tensor(f"{p}.pw1.bias", w(n_ff, scale=0.02))
        out.add_tensor(f"{p}.pw2.weight", f16(w(n_embd, n_ff)))
        out.add_tensor(f"{p}.pw2.bias", w(n_embd, scale=0.02))
        out.add_tensor(f"{p}.gamma.weight", np.full(n_embd, 0.5, dtype=np.float32))
    out.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    out.add_tensor("output_norm.bias", np.zeros(n_embd, dtype=np.float32))
    # Magnitudes come out as exp(x): keep x small so the spectrum stays sane.
    out.add_tensor("output.weight", f16(w(n_out, n_embd, scale=0.05)))
    out.add_tensor("output.bias", w(n_out, scale=0.01))
    write(out)


def main() -> int:
    dest = sys.argv[1] if len(sys.argv) > 1 else "models/fixtures"
    os.makedirs(os.path.join(dest, "tts"), exist_ok=True)
    for name, make in [
        ("mmproj-vision-fixture.gguf", vision_projector),
        ("mmproj-audio-fixture.gguf", audio_projector),
        ("picture.png", picture),
        ("tts/OuteTTS-0.2-fixture.gguf", tts_model_v2),
        ("tts/OuteTTS-0.3-fixture.gguf", tts_model_v3),
        ("tts/WavTokenizer-fixture.gguf", vocoder),
    ]:
        final = os.path.join(dest, name)
        tmp = final + ".part"
        make(tmp)
        os.replace(tmp, final)
        print(f"{final}: {os.path.getsize(final)} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
