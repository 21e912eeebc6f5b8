"""A real llama.cpp server for the engine lane: the binary built by .ci/llama-server, a tiny random-weight llama
model written here with the `gguf` package of the same llama.cpp tree, and the server run on loopback.

Run as a script, it serves the tiny model until interrupted, e.g. for bench/gateway_overhead.py:

    .venv/bin/python tests/engine/llama_server.py --port 8081   # then --upstream-url http://127.0.0.1:8081/v1
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "llama-server"
# Small enough that a prompt of a few hundred words overflows it (tested), large enough for a chat turn.
CONTEXT_TOKENS = 256
# Loading the tiny model takes well under a second; the budget covers a busy 2-core CI machine.
_STARTUP_SECONDS = 60
_STOP_SECONDS = 20
# Role markers around each message, rendered by llama.cpp's Jinja engine like any model's template.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def llama_server_directory() -> Path:
    """Where .ci/llama-server keeps the binary, the tree's gguf-py and a vocabulary (built or not)."""
    return Path(subprocess.run([str(BUILD_SCRIPT), "--dir"], capture_output=True, text=True, check=True).stdout.strip())


def write_tiny_llama(
    path: Path, build: Path, seed: int = 0, embedding: int = 64, layers: int = 2, context_tokens: int = CONTEXT_TOKENS
) -> None:
    """Writes a llama model with random weights (by default ~4 MB: n_embd 64, 2 layers, 4 heads) and the tokenizer
    of the vocabulary in `build` (a llama.cpp-server directory): deterministic for a given seed, gibberish in every
    answer. A wider or deeper one makes prompt evaluation cost what a benchmark can measure."""
    gguf_py = str(build / "gguf-py")  # the gguf package of the same llama.cpp as the server
    if gguf_py not in sys.path:
        sys.path.insert(0, gguf_py)
    import gguf
    import numpy

    heads, feed_forward = 4, 2 * embedding
    [vocab_file] = build.glob("ggml-vocab-*.gguf")
    vocab = gguf.GGUFReader(vocab_file)
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("model-stack tiny llama (random weights)")
    writer.add_context_length(context_tokens)
    writer.add_embedding_length(embedding)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(embedding // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    for name, field in vocab.fields.items():
        if name.startswith("tokenizer."):
            value_type, *element_type = field.types
            writer.add_key_value(name, field.contents(), value_type, element_type[-1] if element_type else None)
    writer.add_chat_template(_CHAT_TEMPLATE)

    vocab_size = len(vocab.fields["tokenizer.ggml.tokens"].data)
    random = numpy.random.default_rng(seed)

    def weights(rows: int, columns: int) -> numpy.ndarray:
        return (random.standard_normal((rows, columns)) * 0.02).astype(numpy.float16)

    def norm() -> numpy.ndarray:
        return numpy.ones(embedding, dtype=numpy.float32)

    def tensor_name(kind: gguf.MODEL_TENSOR, layer: int | None = None) -> str:
        return gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"

    tensor = gguf.MODEL_TENSOR
    # Without an output tensor llama.cpp ties the output projection to the token embeddings.
    writer.add_tensor(tensor_name(tensor.TOKEN_EMBD), weights(vocab_size, embedding))
    writer.add_tensor(tensor_name(tensor.OUTPUT_NORM), norm())
    for layer in range(layers):
        writer.add_tensor(tensor_name(tensor.ATTN_NORM, layer), norm())
        for projection in (tensor.ATTN_Q, tensor.ATTN_K, tensor.ATTN_V, tensor.ATTN_OUT):
            writer.add_tensor(tensor_name(projection, layer), weights(embedding, embedding))
        writer.add_tensor(tensor_name(tensor.FFN_NORM, layer), norm())
        writer.add_tensor(tensor_name(tensor.FFN_GATE, layer), weights(feed_forward, embedding))
        writer.add_tensor(tensor_name(tensor.FFN_UP, layer), weights(feed_forward, embedding))
        writer.add_tensor(tensor_name(tensor.FFN_DOWN, layer), weights(embedding, feed_forward))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_server_command(
    directory: Path, model: Path, alias: str, port: int, slots: int = 1, context_tokens: int = CONTEXT_TOKENS,
    unified_kv: bool = False,
) -> list[str]:
    """The server as the engine lane runs it: loopback only, no web UI or /slots, one slot (unless more are asked
    for, each with `context_tokens`) on one thread (the model is tiny), and short answers unless a request asks
    for more. `unified_kv`: one KV cache shared by the slots, as llama.cpp runs by default (`-np auto`, which the
    stack's llama.cpp engine keeps); an explicit `-np` turns it off otherwise."""
    return [
        str(directory / "llama-server"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--model", str(model),
        "--alias", alias,
        "--no-ui",  # --no-webui in older releases, deprecated in this one
        "--no-slots",
        # Without a unified KV cache llama.cpp splits -c between the slots; with it, they share it.
        "-c", str(context_tokens * slots),
        "-n", "16",
        "-np", str(slots),
        *(("--kv-unified",) if unified_kv else ()),
        "--threads", "1",
    ]


@contextmanager
def running(command: list[str], ready_url: str, log: Path, environment: dict[str, str] | None = None) -> Iterator[None]:
    """Runs `command` until the block ends, once `ready_url` answers 200; stops it by its PID. Its output goes to
    `log`, which a failure to start quotes."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_until_ready(process, ready_url, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_ready(process: subprocess.Popen, url: str, log: Path) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        Retrying(
            retry=retry_if_result(lambda answered: not answered), stop=stop_after_delay(_STARTUP_SECONDS),
            wait=wait_fixed(0.1),
        )(ready)
    except RetryError:
        raise RuntimeError(f"{url} did not answer 200 within {_STARTUP_SECONDS}s:\n{log.read_text()[-4000:]}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description="Serves the engine lane's tiny model with llama-server.")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--alias", default="tiny-llama", help="the model id the server lists")
    arguments = parser.parse_args()
    build = llama_server_directory()
    with tempfile.TemporaryDirectory() as directory:
        model = Path(directory) / "tiny-llama.gguf"
        write_tiny_llama(model, build)
        url = f"http://127.0.0.1:{arguments.port}"
        command = llama_server_command(build, model, arguments.alias, arguments.port)
        with running(command, f"{url}/health", Path(directory) / "llama-server.log"):
            print(f"serving {arguments.alias} at {url}/v1 until interrupted", flush=True)
            # Either signal ends the wait through `running`, which stops the server (a shell's background job
            # ignores SIGINT unless the handler is set again).
            for stop in (signal.SIGINT, signal.SIGTERM):
                signal.signal(stop, signal.default_int_handler)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
