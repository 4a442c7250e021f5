"""`timeback-nb relay`: the service that holds the Timeback credentials for a shared deployment.

Kernels post the Timeback SDK's adapter bodies (heartbeat, submit) with their own hub token;
the relay decides who the student is from that token, checks the window, commits the Caliper
event to its own outbox before answering and delivers it with the secret only it holds
(design §10). Install with `pip install "timeback-nb[relay]"`. Kernel-side modules never
import this package.
"""

from .service import DEFAULT_BASE_PATH, Relay, RelayOptions

__all__ = ["DEFAULT_BASE_PATH", "Relay", "RelayOptions", "main"]


def main(argv: list[str] | None = None) -> int:
    from .cli import main as run

    return run(argv)
