"""Drives nrvna-api's audio and vision with the official `openai` package,
one scenario per subcommand (run by crates/nrvna-api/tests/media.rs, which
starts nrvnad on the fixtures and nrvna-api). Environment: NRVNA_API_BASE
(http://HOST:PORT/v1), NRVNA_API_KEY, NRVNA_MODEL, NRVNA_WS (the
workspace, to compare answers with the jobs' files), NRVNA_PICTURE (a PNG,
for `vision`). Exits non-zero with a message on the first failed check."""

import base64
import io
import json
import math
import os
import struct
import sys
import wave

import openai

# The connection, `client` and `check` are the chat scenarios' own.
from openai_client import MODEL, WS, check, client

def job_path(job_id, name):
    return os.path.join(WS, "output", job_id, name)


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def done_jobs(job_type):
    """The finished jobs of a type, oldest first (ids sort by time)."""
    out = []
    for j in sorted(os.listdir(os.path.join(WS, "output"))):
        t = job_path(j, "type.txt")
        if os.path.exists(t) and read(t).strip() == job_type:
            out.append(j)
    return out


def vision():
    png = read(os.environ["NRVNA_PICTURE"], "rb")
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in the picture?"},
                    {"type": "image_url", "image_url": {"url": uri, "detail": "low"}},
                ],
            }
        ],
        max_tokens=8,
        temperature=0,
    )
    text = r.choices[0].message.content
    check(isinstance(text, str) and text, f"empty answer: {r}")
    job_id = r.id.removeprefix("chatcmpl-")
    check(read(job_path(job_id, "type.txt")).strip() == "vision", "the job is not a vision job")
    check(read(job_path(job_id, "images/image_000000.png"), "rb") == png, "the job's image is not the one sent")
    check(read(job_path(job_id, "result.txt")) == text, "the answer is not the job's result.txt")
    meta = json.loads(read(job_path(job_id, "meta.json")))
    check(meta.get("mode") == "vision", f"meta.json mode {meta.get('mode')}")
    check(r.usage.completion_tokens == meta["generated_tokens"], f"usage {r.usage}")

    # An image alone, streamed: the task is spelled out, the deltas add up.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}],
        max_tokens=6,
        temperature=0,
        stream=True,
    )
    parts, sid = [], None
    for chunk in stream:
        sid = chunk.id
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
    job_id = sid.removeprefix("chatcmpl-")
    check("".join(parts) == read(job_path(job_id, "result.txt")), "streamed deltas differ from result.txt")
    check(read(job_path(job_id, "prompt.txt")) == "Describe the image.", "no task for an image alone")

    # A file uploaded with purpose vision, named by its id.
    f = client.files.create(file=("picture.png", png), purpose="vision")
    check(f.purpose == "vision" and f.bytes == len(png), f"upload {f}")
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "text", "text": "And this?"},
                                               {"type": "image_url", "image_url": {"url": f.id}}]}],
        max_tokens=4,
    )
    job_id = r.id.removeprefix("chatcmpl-")
    check(read(job_path(job_id, "images/image_000000.png"), "rb") == png, "the uploaded image is not the job's")
    check([x.id for x in client.files.list(purpose="vision")] == [f.id], "files.list(purpose=vision)")
    check(client.files.delete(f.id).deleted, "files.delete")
    print(f"vision: {text!r}")


def tone_wav(secs=1.0, hz=220.0, rate=16000):
    """A 16 kHz mono 16-bit PCM WAV of a tone."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        n = int(secs * rate)
        w.writeframes(
            b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / rate))) for i in range(n))
        )
    return buf.getvalue()


def stt():
    audio = tone_wav()
    r = client.audio.transcriptions.create(
        model=MODEL, file=("tone.wav", audio, "audio/wav"), language="en", prompt="nrvna"
    )
    check(isinstance(r.text, str), f"transcription {r}")
    job_id = done_jobs("stt")[-1]
    check(read(job_path(job_id, "audio/audio_000000.wav"), "rb") == audio, "the job's audio is not the upload")
    check(read(job_path(job_id, "transcript.txt")) == r.text, "the text is not the job's transcript.txt")
    task = read(job_path(job_id, "prompt.txt"))
    check("language en" in task and task.endswith("nrvna"), f"prompt.txt {task!r}")
    params = json.loads(read(job_path(job_id, "params.json")))
    check(params.get("priority") == "high", f"params.json {params}")

    # response_format text: the transcript as plain text, with no task given.
    t = client.audio.transcriptions.create(model=MODEL, file=("tone.wav", audio), response_format="text")
    job_id = done_jobs("stt")[-1]
    check(isinstance(t, str) and t == read(job_path(job_id, "transcript.txt")), f"text transcription {t!r}")
    check(read(job_path(job_id, "prompt.txt")) == "", "a job without language or prompt has a task")

    try:
        client.audio.transcriptions.create(model=MODEL, file=("tone.wav", audio), response_format="srt")
        raise AssertionError("srt was accepted")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "response_format" and "json or text" in e.body["message"], str(e.body))
    print(f"stt: {r.text!r}")


def tts():
    r = client.audio.speech.create(model=MODEL, voice="alloy", input="Hello world", response_format="wav")
    wav = r.content
    check(wav[:4] == b"RIFF" and wav[8:12] == b"WAVE", f"not a WAV: {wav[:16]!r}")
    with wave.open(io.BytesIO(wav)) as w:
        check((w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000), "not 24 kHz mono 16-bit")
        frames = w.getnframes()
        check(frames > 6000, f"{frames} samples")
    job_id = done_jobs("tts")[-1]
    check(read(job_path(job_id, "audio.wav"), "rb") == wav, "the answer is not the job's audio.wav")
    check(read(job_path(job_id, "prompt.txt")) == "Hello world", "prompt.txt is not the input")

    # No response_format (OpenAI's default is mp3): WAV, the one format served; speed 1 is fine.
    d = client.audio.speech.create(model=MODEL, voice="nova", input="Hi", speed=1.0)
    check(d.content[:4] == b"RIFF", "the default format is not WAV")
    for kw, param in [({"response_format": "mp3"}, "response_format"), ({"speed": 1.5}, "speed")]:
        try:
            client.audio.speech.create(model=MODEL, voice="alloy", input="Hi", **kw)
            raise AssertionError(f"{kw} was accepted")
        except openai.BadRequestError as e:
            check(e.body.get("param") == param, str(e.body))
    print(f"tts: {frames} samples")


if __name__ == "__main__":
    {"vision": vision, "stt": stt, "tts": tts}[sys.argv[1]]()
