"""``ledger sim``: run the API simulator in the foreground to rehearse against."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Callable, Optional

import click

from .server import FILE_ENCODINGS, POLICY_TRIGGER, SimConfig, SimServer, protocol_names


@click.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one).")
@click.option("--api-key", default=None, metavar="KEY",
              help="Accept only this key (answer 401 to others). Default: accept any key.")
@click.option("--gen-seconds", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="How long a generation takes.")
@click.option("--fail-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction of tasks that end failed.")
@click.option("--balance", default=100_000, show_default=True, type=click.IntRange(min=0),
              help="Starting balance in cents.")
@click.option("--fault-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability that a request meets a random fault (502, drop, 429, truncation…).")
@click.option("--url-ttl", default=2 * 86400.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a video URL stays valid.")
@click.option("--video-bytes", default=None, type=click.IntRange(min=1), metavar="N",
              help="Serve N pseudo-random bytes as every video instead of the sample MP4.")
@click.option("--file-rate", default=None, type=click.FloatRange(min=0, min_open=True), metavar="MBPS",
              help="Serve videos at most this fast (MB/s), like a real link.")
@click.option("--file-encoding", default=None, type=click.Choice(FILE_ENCODINGS),
              help="Serve videos compressed with this Content-Encoding, as a misconfigured host does.")
@click.option("--protocol", default="sora_hk", show_default=True, type=click.Choice(protocol_names()),
              help="The API to speak: a provider's name (sora_hk: api.sora.hk v1; openai: the /v1/videos format; …).")
@click.option("--content-host", default=None, metavar="HOST",
              help="openai: answer /videos/{id}/content with a redirect to a signed URL on HOST (e.g. localhost).")
@click.option("--poll-after-ms", default=None, type=click.IntRange(min=1), metavar="MS",
              help="openai: send an openai-poll-after-ms header with every status answer.")
def sim(host: str, port: int, api_key: Optional[str], gen_seconds: float, fail_rate: float, balance: int,
        fault_rate: float, url_ttl: float, video_bytes: Optional[int], file_rate: Optional[float],
        file_encoding: Optional[str], protocol: str, content_host: Optional[str], poll_after_ms: Optional[int]) -> None:
    """Run a local simulator of the video API until Ctrl+C.

    Put "[policy-reject]" in a prompt to get a content-policy rejection.
    """
    config = SimConfig(api_key=api_key, gen_seconds=gen_seconds, fail_rate=fail_rate, balance=balance,
                       fault_rate=fault_rate, url_ttl=url_ttl, video_bytes=video_bytes, file_rate=file_rate,
                       file_encoding=file_encoding, protocol=protocol, content_host=content_host,
                       poll_after_ms=poll_after_ms)
    # Ctrl+C and SIGTERM only ask for a stop, from the first moment of the command on: one that
    # arrives while the port is being bound still ends in the same clean stop, never "Aborted!".
    stopping = threading.Event()
    restore = _stop_on_signals(stopping)
    server = SimServer(config, host=host, port=port)
    try:
        try:
            server.start()
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        click.echo(f"Sora simulator listening on {server.base_url}")
        key_hint = "the key given with --api-key" if api_key else "any value"
        spoken = " It speaks the /v1/videos protocol." if protocol == "openai" else \
            f" It speaks the {protocol} protocol." if protocol != "sora_hk" else ""
        click.echo(f"{spoken.strip()} Point ledger at it: ".lstrip()
                   + server.protocol.key_hint.format(url=server.base_url, key=key_hint))
        click.echo(f'A prompt containing "{POLICY_TRIGGER}" is rejected by the content policy. Ctrl+C stops.')
        # Scripts (make demo) read the address from a pipe or file: it must not wait in a buffer.
        sys.stdout.flush()
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
        restore()
    click.echo("Sora simulator stopped.")


def _stop_on_signals(stopping: threading.Event) -> Callable[[], None]:
    """Make SIGINT and SIGTERM set ``stopping``; return a function restoring the old handlers."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda *_: stopping.set())
        except ValueError:  # not the main thread (e.g. an embedding test runner): Ctrl+C still works
            break

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
