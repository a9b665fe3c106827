"""A TorchServe's ``config.properties``: its ports, and the file rendered for one server from the
project's base config (this server's ports, model store and auth; the rest as the base says)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def free(cls) -> "Ports":
        """Five distinct free loopback ports (held open together so none repeats)."""
        sockets = []
        try:
            for _ in range(5):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                sockets.append(s)
            return cls(*(s.getsockname()[1] for s in sockets))
        finally:
            for s in sockets:
                s.close()

    @classmethod
    def from_config(cls, path: str | Path) -> "Ports":
        props = read_properties(path)
        port = lambda key: int(props[key].rsplit(":", 1)[1])  # noqa: E731
        return cls(
            port("inference_address"),
            port("management_address"),
            port("metrics_address"),
            int(props.get("grpc_inference_port", 7070)),
            int(props.get("grpc_management_port", 7071)),
        )


def read_properties(path: str | Path) -> dict[str, str]:
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def render_config(base: str | Path, model_store: Path, ports: Ports, token_auth: bool, overrides: Mapping[str, object] = ()) -> str:
    """The base config with this server's ports, model store and auth; ``overrides`` win."""
    props = read_properties(base)
    props.update(
        inference_address=f"http://127.0.0.1:{ports.inference}",
        management_address=f"http://127.0.0.1:{ports.management}",
        metrics_address=f"http://127.0.0.1:{ports.metrics}",
        grpc_inference_address="127.0.0.1",
        grpc_management_address="127.0.0.1",
        grpc_inference_port=str(ports.grpc_inference),
        grpc_management_port=str(ports.grpc_management),
        model_store=str(model_store),
        # registration by URL is limited to archives inside this server's model store
        allowed_urls=f"file://{model_store}/.*",
        disable_token_authorization=str(not token_auth).lower(),
    )
    props.update({k: str(v) for k, v in dict(overrides).items()})
    return "".join(f"{k}={v}\n" for k, v in props.items())
